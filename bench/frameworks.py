"""Generated torch and JAX modules (`softgrad codegen --lang torch|jax`) against the frameworks' own autodiff.

For softmax, log-softmax and cross-entropy (4096 rows of 1000 classes), attention (n 512, d 64) and affine
layer norm (4096 × 1024), float32, one thread: forward and backward timed together (the output's backward
with a fixed upstream gradient), medians of interleaved rounds, ratio = generated / framework (< 1 is
faster). torch: eager and torch.compile (the generated module compiled with fullgraph=True, through its
custom ops); the bytes each keeps for the backward, counted with saved_tensors_hooks (distinct storages).
JAX: jax.jit of the gradient, the generated custom_vjp against jax.grad of the same formula in jax.numpy.
The table goes into bench/results.md ("frameworks" section).

    python bench/frameworks.py [--quick]      # --quick: small shapes, few rounds, nothing written
    python bench/frameworks.py --alone        # torch eager, generated, with C: each alone in a fresh process
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from softgrad.codegen.build import import_path
from softgrad.codegen.emit import emit
from softgrad.derive import derive_spec, load_spec

ROOT = Path(__file__).resolve().parent
EXAMPLES = ROOT.parent / "docs" / "examples"
sys.path.insert(0, str(ROOT))
from sections import replace_section  # noqa: E402


@dataclass
class Case:
    """One function: its spec, the name of the generated function, its inputs (those differentiated
    first) and the same function written in each framework."""

    name: str
    spec: str
    inputs: Callable[[np.random.Generator, bool], list[np.ndarray]]
    differentiated: int  # how many leading inputs get gradients
    torch_reference: Callable[..., Any]
    jax_reference: Callable[..., Any]


def _rows(quick: bool) -> tuple[int, int]:
    return (256, 100) if quick else (4096, 1000)


def _logits(rng: np.random.Generator, quick: bool) -> list[np.ndarray]:
    return [rng.normal(size=_rows(quick)).astype(np.float32)]


def _logits_and_targets(rng: np.random.Generator, quick: bool) -> list[np.ndarray]:
    targets = rng.random(_rows(quick)).astype(np.float32)
    return [rng.normal(size=_rows(quick)).astype(np.float32), targets / targets.sum(axis=1, keepdims=True)]


def _attention(rng: np.random.Generator, quick: bool) -> list[np.ndarray]:
    n = 64 if quick else 512
    return [rng.normal(size=(n, 64)).astype(np.float32) for _ in range(3)]


def _layer_norm(rng: np.random.Generator, quick: bool) -> list[np.ndarray]:
    rows, features = (256, 128) if quick else (4096, 1024)
    return [rng.normal(size=(rows, features)).astype(np.float32), rng.normal(size=features).astype(np.float32),
            rng.normal(size=features).astype(np.float32)]


def _cases() -> list[Case]:
    import jax
    import jax.numpy as jnp
    import torch

    def torch_attention(Q: Any, K: Any, V: Any) -> Any:
        return torch.softmax(Q @ K.T / Q.shape[1] ** 0.5, dim=1) @ V

    def jax_attention(Q: Any, K: Any, V: Any) -> Any:
        return jax.nn.softmax(Q @ K.T / jnp.sqrt(Q.shape[1]), axis=1) @ V

    def jax_layer_norm(x: Any, gamma: Any, beta: Any) -> Any:
        mean = x.mean(axis=1, keepdims=True)
        variance = ((x - mean) ** 2).mean(axis=1, keepdims=True)
        return gamma * (x - mean) / jnp.sqrt(variance + 1e-5) + beta

    return [
        Case("softmax", "softmax", _logits, 1, lambda x: torch.softmax(x, -1), lambda x: jax.nn.softmax(x, -1)),
        Case("log_softmax", "log-softmax", _logits, 1, lambda x: torch.log_softmax(x, -1),
             lambda x: jax.nn.log_softmax(x, -1)),
        Case("cross_entropy", "cross-entropy", _logits_and_targets, 1,
             lambda x, t: -(t * torch.log_softmax(x, -1)).sum(-1),
             lambda x, t: -(t * jax.nn.log_softmax(x, -1)).sum(-1)),
        Case("attention", str(EXAMPLES / "attention.spec"), _attention, 3, torch_attention, jax_attention),
        Case("layer_norm_affine", str(EXAMPLES / "layer-norm-affine.spec"), _layer_norm, 3,
             lambda x, gamma, beta: torch.nn.functional.layer_norm(x, (x.shape[1],), gamma, beta, 1e-5),
             jax_layer_norm),
    ]


def generated(case: Case, language: str, folder: Path, cpu: str = "torch") -> Any:
    """The generated function of `language` for a case (torch with cpu="c": calling the generated C kernels)."""
    files = emit(derive_spec(load_spec(case.spec)), language, cpu=cpu)
    place = folder / f"{language}-{cpu}"
    place.mkdir(exist_ok=True)
    for file_name, text in files.items():
        (place / file_name).write_text(text, encoding="utf-8")
    return getattr(import_path(place / f"{files.module}.py"), case.name)


def medians(functions: dict[str, Callable[[], Any]], rounds: int) -> dict[str, float]:
    """Median ms of each function, interleaved round by round after two warm-up calls (compilation)."""
    times: dict[str, list[float]] = {name: [] for name in functions}
    for function in functions.values():
        function()
        function()
    for _ in range(rounds):
        for name, function in functions.items():
            start = time.perf_counter()
            function()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) * 1e3 for name, values in times.items()}


def torch_step(function: Callable[..., Any], arrays: list[np.ndarray], differentiated: int) -> Callable[[], Any]:
    """Forward and backward of function at these inputs, with a fixed upstream gradient."""
    import torch

    tensors = [torch.from_numpy(a) for a in arrays]
    upstream = torch.from_numpy(np.random.default_rng(1).normal(size=np.shape(function(*tensors))).astype(np.float32))

    def step() -> Any:
        leaves = [t.detach().requires_grad_(k < differentiated) for k, t in enumerate(tensors)]
        function(*leaves).backward(upstream)
        return [leaf.grad for leaf in leaves[:differentiated]]

    return step


def saved_bytes(function: Callable[..., Any], arrays: list[np.ndarray], differentiated: int) -> int:
    """Bytes the forward keeps for the backward: the distinct storages autograd saves."""
    import torch

    storages: dict[int, int] = {}

    def pack(tensor: Any) -> Any:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    leaves = [torch.from_numpy(a).requires_grad_(k < differentiated) for k, a in enumerate(arrays)]
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        function(*leaves)
    return sum(storages.values())


def jax_step(function: Callable[..., Any], arrays: list[np.ndarray], differentiated: int) -> Callable[[], Any]:
    import jax
    import jax.numpy as jnp

    values = [jnp.asarray(a) for a in arrays]
    upstream = jnp.asarray(np.random.default_rng(1).normal(size=np.shape(function(*values))).astype(np.float32))
    gradient = jax.jit(jax.grad(lambda *xs: jnp.sum(upstream * function(*xs)), argnums=tuple(range(differentiated))))
    return lambda: jax.block_until_ready(gradient(*values))


IMPLEMENTATIONS_ALONE = ("torch eager", "generated", "with C")


def time_alone(name: str, implementation: str, quick: bool) -> float:
    """Median ms of one implementation's forward + backward of one case, the only thing this process runs: what
    ran before it in a round (the arrays it freed, the pages glibc kept or gave back) cannot move its time."""
    import torch

    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    for case in _cases():  # the inputs of the interleaved run: drawn case after case from one generator
        arrays = case.inputs(rng, quick)
        if case.name == name:
            break
    with tempfile.TemporaryDirectory() as temporary:
        function = (case.torch_reference if implementation == "torch eager" else
                    generated(case, "torch", Path(temporary), cpu="c" if implementation == "with C" else "torch"))
        return medians({implementation: torch_step(function, arrays, case.differentiated)},
                       3 if quick else 21)[implementation]


def alone_table(quick: bool) -> str:
    """Each case's torch eager, generated and with-C times, each measured alone in a fresh process."""
    lines = ["## The same, each implementation alone in a fresh process (torch eager, one thread, float32)", "",
             "`python bench/frameworks.py --alone`: medians of 21 rounds, no other function in the process, so that "
             "no allocation pattern of another carries over (layer norm's times above move up to 2× with what ran "
             "before them in a round).", "",
             "| function | torch eager ms | generated ms | ratio | with C ms | ratio |",
             "|---|---:|---:|---:|---:|---:|"]
    for case in _cases():
        times = {}
        for implementation in IMPLEMENTATIONS_ALONE:
            run = subprocess.run([sys.executable, __file__, "--time-alone", case.name, implementation,
                                  *(["--quick"] if quick else [])], capture_output=True, text=True, check=True)
            times[implementation] = float(run.stdout.split()[-1])
        eager = times["torch eager"]
        lines.append(f"| {case.name} | {eager:.2f} | {times['generated']:.2f} | {times['generated'] / eager:.2f} | "
                     f"{times['with C']:.2f} | {times['with C'] / eager:.2f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--alone", action="store_true", help="time torch eager, generated and with C each alone")
    parser.add_argument("--time-alone", nargs=2, metavar=("CASE", "IMPLEMENTATION"), help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.time_alone:
        print(f"{time_alone(*options.time_alone, options.quick):.4f}")
        return
    if options.alone:
        document = alone_table(options.quick)
        print(document)
        if not options.quick:
            replace_section(ROOT / "results.md", "frameworks alone", document)
        return
    import torch

    torch.set_num_threads(1)
    rounds = 3 if options.quick else 15
    rng = np.random.default_rng(0)
    rows = []
    with tempfile.TemporaryDirectory() as temporary:
        for case in _cases():
            arrays = case.inputs(rng, options.quick)
            mine = generated(case, "torch", Path(temporary))
            theirs = case.torch_reference
            with_c = generated(case, "torch", Path(temporary), cpu="c")
            times = medians({
                "eager": torch_step(mine, arrays, case.differentiated),
                "C": torch_step(with_c, arrays, case.differentiated),
                "torch eager": torch_step(theirs, arrays, case.differentiated),
                "compiled": torch_step(torch.compile(mine, fullgraph=True), arrays, case.differentiated),
                "torch compiled": torch_step(torch.compile(theirs), arrays, case.differentiated),
                "jax": jax_step(generated(case, "jax", Path(temporary)), arrays, case.differentiated),
                "jax.grad": jax_step(case.jax_reference, arrays, case.differentiated)}, rounds)
            memory = (saved_bytes(mine, arrays, case.differentiated), saved_bytes(theirs, arrays, case.differentiated),
                      saved_bytes(with_c, arrays, case.differentiated))
            shape = " × ".join(str(s) for s in arrays[0].shape)
            rows.append((case.name, shape, times, memory))
    lines = ["## Generated torch and JAX modules against the frameworks' autodiff (one thread, float32)", "",
             f"`python bench/frameworks.py` (OMP_NUM_THREADS=1, torch.set_num_threads(1), XLA on one thread; "
             f"medians of {rounds} interleaved rounds of forward + backward; ratio = generated / framework, "
             "< 1 is faster; saved = bytes kept for the backward, generated / torch autograd). \"with C\": the "
             "module generated with `--cpu c`, which calls the generated C kernels on the CPU (its forward keeps "
             "what the C backward reads: the arrays made by a sum, such as softmax's output or layer norm's mean "
             "and variance; the backward recomputes the entrywise ones).", "",
             "| function | shape | torch eager ms | generated ms | ratio | with C ms | ratio | torch.compile ms "
             "| generated compiled ms | ratio | jax.grad (jit) ms | generated custom_vjp ms | ratio "
             "| saved MB: generated / with C / autograd |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"]
    for name, shape, t, (mine_bytes, their_bytes, c_bytes) in rows:
        lines.append(f"| {name} | {shape} | {t['torch eager']:.2f} | {t['eager']:.2f} | "
                     f"{t['eager'] / t['torch eager']:.2f} | {t['C']:.2f} | {t['C'] / t['torch eager']:.2f} | "
                     f"{t['torch compiled']:.2f} | {t['compiled']:.2f} | "
                     f"{t['compiled'] / t['torch compiled']:.2f} | {t['jax.grad']:.2f} | {t['jax']:.2f} | "
                     f"{t['jax'] / t['jax.grad']:.2f} | {mine_bytes / 1e6:.1f} / {c_bytes / 1e6:.1f} / "
                     f"{their_bytes / 1e6:.1f} |")
    document = "\n".join(lines) + "\n"
    print(document)
    if not options.quick:
        replace_section(ROOT / "results.md", "frameworks", document)


if __name__ == "__main__":
    main()
