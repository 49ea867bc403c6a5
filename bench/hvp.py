"""Generated Hessian–vector products (`softgrad codegen LOSS --kernel hvp`) against torch and JAX.

For each catalog entry (softmax, log-softmax and sigmoid as L = Σ dy·y; the losses cross-entropy with soft
targets, the one-hot form, KL divergence, binary cross-entropy, log-sum-exp), and layer normalisation (written as
a spec, L = Σ dy·y) at 4096 rows of 1000 classes,
float64, one thread: the generated C and NumPy hvp kernels, torch's double backward (grad of grad·v,
create_graph=True), torch.func.hvp (forward-over-reverse via jvp of grad) and jax.jvp(jax.grad(f)) under
jax.jit. Medians of interleaved rounds; ratio = generated C / peer (< 1 is faster). The table goes into
bench/results.md ("hvp" section).

    python bench/hvp.py [--quick]      # --quick: small shapes, few rounds, nothing written
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("XLA_FLAGS", "--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1")

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

import softgrad
from softgrad.codegen.build import import_path, load_c
from softgrad.codegen.emit import emit
from softgrad.derive import derive_spec, parse_spec
from softgrad.derive.hessian import hessian

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
from sections import replace_section  # noqa: E402


def losses() -> dict[str, tuple[Callable[..., Any], Callable[..., Any]]]:
    """Catalog entry → (its loss summed over rows in torch, in jax.numpy); an entry with an array output y is
    taken as L = Σ dy·y (what `--order 2` derives for it), dy a second input drawn normal."""
    import jax
    import jax.numpy as jnp
    import torch

    return {
        "softmax": (lambda x, dy: (dy * torch.softmax(x, -1)).sum(), lambda x, dy: jnp.sum(dy * jax.nn.softmax(x, -1))),
        "log-softmax": (lambda x, dy: (dy * torch.log_softmax(x, -1)).sum(),
                        lambda x, dy: jnp.sum(dy * jax.nn.log_softmax(x, -1))),
        "sigmoid": (lambda x, dy: (dy * torch.sigmoid(x)).sum(), lambda x, dy: jnp.sum(dy * jax.nn.sigmoid(x))),
        "cross-entropy": (lambda x, t: -(t * torch.log_softmax(x, -1)).sum(),
                          lambda x, t: -jnp.sum(t * jax.nn.log_softmax(x, -1))),
        "cross-entropy-onehot": (lambda x, t: -(t * torch.log_softmax(x, -1)).sum(),
                                 lambda x, t: -jnp.sum(t * jax.nn.log_softmax(x, -1))),
        "kl-divergence": (lambda z, q: (q * (torch.log(q) - torch.log_softmax(z, -1))).sum(),
                          lambda z, q: jnp.sum(q * (jnp.log(q) - jax.nn.log_softmax(z, -1)))),
        "binary-cross-entropy": (lambda x, t: torch.nn.functional.binary_cross_entropy_with_logits(
            x, t, reduction="sum"), lambda x, t: jnp.sum(jax.nn.softplus(x) - t * x)),
        "logsumexp": (lambda x: torch.logsumexp(x, -1).sum(), lambda x: jnp.sum(jax.nn.logsumexp(x, -1))),
        "layer norm": (lambda x, dy: (dy * torch.nn.functional.layer_norm(x, x.shape[-1:], eps=1e-5)).sum(),
                       lambda x, dy: jnp.sum(dy * (x - x.mean(-1, keepdims=True))
                                         / jnp.sqrt(x.var(-1, keepdims=True) + 1e-5))),
    }


#: Entries that are not in the catalog: their specs.
SPECS = {"layer norm": "m = sum(x[k], k) / n\nv = sum((x[k] - m)^2, k) / n\ny[i] = (x[i] - m) / sqrt(v + 0.00001)"}


def derived(name: str) -> Any:
    """The first-order derivation of a catalog entry or of one of SPECS."""
    if name in SPECS:
        return derive_spec(parse_spec(SPECS[name], name=name.replace(" ", "-")))
    return softgrad.derive(name)


def medians(functions: dict[str, Callable[[], Any]], rounds: int) -> dict[str, float]:
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    options = parser.parse_args()
    import jax
    import jax.numpy as jnp
    import torch

    jax.config.update("jax_enable_x64", True)
    torch.set_num_threads(1)
    rounds = 3 if options.quick else 11
    rows, n = (128, 50) if options.quick else (4096, 1000)
    rng = np.random.default_rng(0)
    table = []
    with tempfile.TemporaryDirectory() as temporary:
        for name, (torch_loss, jax_loss) in losses().items():
            second = hessian(derived(name))
            c_folder = Path(temporary) / f"{name}-c"
            c_folder.mkdir()
            c_kernels = load_c(emit(second, "c", ["hvp"]), c_folder)
            ((file_name, text),) = emit(second, "numpy", ["hvp"]).items()
            (Path(temporary) / file_name).write_text(text, encoding="utf-8")
            numpy_module = import_path(Path(temporary) / file_name)
            kernel = next(k for k in dir(c_kernels) if k.endswith("hvp"))
            numpy_kernel = getattr(numpy_module, next(k for k in dir(numpy_module) if k.endswith("hvp")))
            x = rng.normal(size=(rows, n))
            targets = rng.random((rows, n))
            targets /= targets.sum(axis=1, keepdims=True)
            if derived(name).spec.output.is_vector:  # L = Σ dy·y: the second input is dy
                targets = rng.normal(size=(rows, n))
            v = rng.normal(size=(rows, n))
            inputs = [x] if name == "logsumexp" else [x, targets]
            tensors = [torch.from_numpy(a) for a in inputs]
            tv = torch.from_numpy(v)

            def double_backward() -> Any:
                leaf = tensors[0].detach().requires_grad_(True)
                (gradient,) = torch.autograd.grad(torch_loss(leaf, *tensors[1:]), leaf, create_graph=True)
                return torch.autograd.grad(gradient, leaf, tv)[0]

            def func_hvp() -> Any:
                return torch.func.jvp(torch.func.grad(lambda u: torch_loss(u, *tensors[1:])), (tensors[0],), (tv,))[1]

            held = [jnp.asarray(a) for a in inputs]
            jax_hvp = jax.jit(lambda u, w, *rest: jax.jvp(jax.grad(lambda y: jax_loss(y, *rest)), (u,), (w,))[1])
            jv = jnp.asarray(v)
            times = medians({
                "c": lambda: getattr(c_kernels, kernel)(*inputs, v),
                "numpy": lambda: numpy_kernel(*inputs, v),
                "double backward": double_backward,
                "torch.func": func_hvp,
                "jax": lambda: jax.block_until_ready(jax_hvp(held[0], jv, *held[1:])),
            }, rounds)
            reference = double_backward().numpy()
            error = float(np.max(np.abs(numpy_kernel(*inputs, v) - reference)) / np.max(np.abs(reference)))
            table.append((name, times, error))
    lines = ["## Hessian–vector products: generated against torch and JAX (one thread, float64)", "",
             f"`python bench/hvp.py` ({rows} rows × {n} classes; medians of {rounds} interleaved rounds; ratio = "
             "generated C / peer, < 1 is faster; error = generated NumPy against torch's double backward, relative).",
             "", "| entry | C ms | NumPy ms | torch double backward ms | torch.func jvp∘grad ms "
             "| JAX jvp∘grad (jit) ms | C / double backward | C / torch.func | C / JAX | error |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, t, error in table:
        lines.append(f"| {name} | {t['c']:.2f} | {t['numpy']:.2f} | {t['double backward']:.2f} | {t['torch.func']:.2f} "
                     f"| {t['jax']:.2f} | {t['c'] / t['double backward']:.2f} | {t['c'] / t['torch.func']:.2f} | "
                     f"{t['c'] / t['jax']:.2f} | {error:.1e} |")
    document = "\n".join(lines) + "\n"
    print(document)
    if not options.quick:
        replace_section(ROOT / "results.md", "hvp", document)


if __name__ == "__main__":
    main()
