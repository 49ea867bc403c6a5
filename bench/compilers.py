"""Generated C against the compilers a user would pick instead: torch eager, torch.compile (Inductor, CPU)
and jax.jit (XLA CPU), on functions outside the catalog (issue: performance for every spec).

Each function is run as its users run it, on one thread, forward and backward together:
- a loss (L per row and its gradient): the generated `loss_and_grad` kernel; torch computes L, then
  `L.backward(ones)`; JAX jits `jax.vjp` of L with ones;
- a layer (y = f(x), then dx = Jᵀg): the generated `forward`, then `vjp`; torch `y = f(x)`, then
  `y.backward(g)`; JAX jits `jax.vjp` of f applied to g.
torch and JAX allocate their outputs (that is how they are called); the C kernels write into buffers
allocated once, as a C caller does. Interleaved rounds (C, eager, compile, jit, C, …), medians.

    python bench/compilers.py [--quick] [--only NAME]   # --quick: one small shape, 3 rounds, nothing written

Needs torch (pip install torch==2.13.0), jax and a C compiler; writes the "compilers" section of
bench/results.md with the targets (C ≤ 1.0× torch.compile and ≤ 0.5× torch eager, every function, both
dtypes, both shapes) met or not.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

# one thread for XLA too, before JAX is imported (the other peers are set below)
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                           + " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np

import softgrad
from softgrad.codegen.build import RECOMMENDED_FLAGS, compile_shared
from softgrad.codegen.emit import emit
from softgrad.codegen.lower.rows import lower

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
from sections import replace_section  # noqa: E402

SOFTMAX = "p[i] = exp(z[i]) / sum(exp(z[k]), k)\n"
#: focal loss's γ where the spec takes it as a parameter g (not an integer: every peer calls a pow)
GAMMA = 2.5
PARAMETERS = {"g": GAMMA}


def _corpus(torch, jnp, jax):
    """name → (spec, 'loss' or 'layer', torch function, JAX function); each function takes the input (and
    the targets of a loss) and returns L per row or y."""
    functional = torch.nn.functional

    def focal_torch(z, t):
        return -(t * (1 - torch.softmax(z, -1)) ** 2 * torch.log_softmax(z, -1)).sum(-1)

    def focal_jax(z, t):
        return -(t * (1 - jax.nn.softmax(z, -1)) ** 2 * jax.nn.log_softmax(z, -1)).sum(-1)

    def focal_gamma_torch(z, t):
        return -(t * (1 - torch.softmax(z, -1)) ** GAMMA * torch.log_softmax(z, -1)).sum(-1)

    def focal_gamma_jax(z, t):
        return -(t * (1 - jax.nn.softmax(z, -1)) ** GAMMA * jax.nn.log_softmax(z, -1)).sum(-1)

    def smoothing_torch(z, t):
        return -((0.9 * t + 0.1 / z.shape[-1]) * torch.log_softmax(z, -1)).sum(-1)

    def smoothing_jax(z, t):
        return -((0.9 * t + 0.1 / z.shape[-1]) * jax.nn.log_softmax(z, -1)).sum(-1)

    def layer_norm_jax(x):
        mean = x.mean(-1, keepdims=True)
        return (x - mean) / jnp.sqrt(((x - mean) ** 2).mean(-1, keepdims=True) + 1e-5)

    def entropy_torch(z):
        return -(torch.softmax(z, -1) * torch.log_softmax(z, -1)).sum(-1)

    def entropy_jax(z):
        return -(jax.nn.softmax(z, -1) * jax.nn.log_softmax(z, -1)).sum(-1)

    return {
        "focal loss (γ = 2)": (SOFTMAX + "L = -sum(t[k]*(1-p[k])^2*log(p[k]), k)", "loss", focal_torch, focal_jax),
        f"focal loss (γ = {GAMMA}, a parameter)": (SOFTMAX + "L = -sum(t[k]*(1-p[k])^g*log(p[k]), k)", "loss",
                                                   focal_gamma_torch, focal_gamma_jax),
        "label smoothing (0.1)": (SOFTMAX + "L = -sum((0.9*t[k] + 0.1/n)*log(p[k]), k)", "loss",
                                  smoothing_torch, smoothing_jax),
        "softmax entropy": (SOFTMAX + "H = -sum(p[k]*log(p[k]), k)", "loss", entropy_torch, entropy_jax),
        "BCE with logits": ("L = sum(softplus(x[k]) - t[k]*x[k], k)", "loss",
                            lambda x, t: functional.binary_cross_entropy_with_logits(x, t, reduction="none").sum(-1),
                            lambda x, t: (jax.nn.softplus(x) - t * x).sum(-1)),
        "layer norm": ("m = sum(x[k], k)/n\nv = sum((x[k] - m)^2, k)/n\ny[i] = (x[i] - m)/sqrt(v + 0.00001)", "layer",
                       lambda x: functional.layer_norm(x, x.shape[-1:], eps=1e-5), layer_norm_jax),
        "RMSNorm": ("y[i] = x[i]/sqrt(sum(x[k]^2, k)/n + 0.00001)", "layer",
                    lambda x: functional.rms_norm(x, x.shape[-1:], eps=1e-5),
                    lambda x: x / jnp.sqrt((x * x).mean(-1, keepdims=True) + 1e-5)),
        "spherical softmax": ("y[i] = x[i]^2 / sum(x[k]^2, k)", "layer",
                              lambda x: x * x / (x * x).sum(-1, keepdim=True),
                              lambda x: x * x / (x * x).sum(-1, keepdims=True)),
        "GELU (tanh)": ("y[i] = 0.5*x[i]*(1 + tanh(0.7978845608*(x[i] + 0.044715*x[i]^3)))", "layer",
                        lambda x: functional.gelu(x, approximate="tanh"),
                        lambda x: jax.nn.gelu(x, approximate=True)),
        "Mish": ("y[i] = x[i]*tanh(log(1 + exp(x[i])))", "layer", functional.mish,
                 lambda x: x * jnp.tanh(jax.nn.softplus(x))),
    }


def build(spec: str, dtype: str, folder: Path, rows: int, n: int, arrays: dict):
    """The generated kernels of a spec as one no-argument call over preallocated buffers (forward + vjp for
    a layer, loss_and_grad for a loss), and the outputs it fills."""
    derivation = softgrad.derive(spec)
    kinds = ["loss_and_grad"] if not derivation.spec.output.is_vector else ["forward", "vjp"]
    files = emit(derivation, "c", kinds, dtype=dtype, module="bench_kernels")
    for file_name, text in files.items():
        (folder / file_name).write_text(text)
    library_path = folder / f"lib_{abs(hash((spec, dtype)))}.so"
    compile_shared(folder / "bench_kernels.c", library_path)
    library = ctypes.CDLL(str(library_path))
    header = files["bench_kernels.h"]
    calls, outputs = [], {}
    for kind in kinds:
        kernel = lower(derivation, kind)
        shapes = {o.name: (rows,) if o.shape == "scalar" else (rows, n) for o in kernel.outputs}
        function_name, prototype = re.search(rf"void (\w+_{kind})\((.*?)\);", header).groups()
        pointers = []
        for argument in prototype.split(", ")[:-2]:  # ..., size_t rows, size_t n
            name = argument.split()[-1]
            if "*" not in argument:  # a scalar parameter of the spec, passed by value
                pointers.append((ctypes.c_float if dtype == "float32" else ctypes.c_double)(PARAMETERS[name]))
                continue
            if name not in arrays:  # an output; a layer's vjp reads the upstream gradient g
                arrays[name] = outputs[name] = np.empty(shapes[name], dtype)
            pointers.append(arrays[name].ctypes.data_as(ctypes.c_void_p))
        function = getattr(library, function_name)
        function.restype = None
        calls.append((function, pointers))
    size = (ctypes.c_size_t(rows), ctypes.c_size_t(n))
    return (lambda: [function(*pointers, *size) for function, pointers in calls]), outputs


def measure(candidates: dict, rounds: int) -> dict:
    """Interleaved medians in milliseconds (after one warm-up call each, which also compiles)."""
    times = {name: [] for name in candidates}
    for action in candidates.values():
        action()
    for _ in range(rounds):
        for name, action in candidates.items():
            start = time.perf_counter()
            action()
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(values) for name, values in times.items()}


def peers(torch, jax, kind: str, torch_function, jax_function, inputs: dict, dtype: str):
    """torch eager, torch.compile and jax.jit, each doing forward and backward on fresh outputs."""
    first = "z" if "z" in inputs else "x"
    tensors = {name: torch.from_numpy(value) for name, value in inputs.items()}
    jax_arrays = {name: jax.device_put(value) for name, value in inputs.items()}
    rows = inputs[first].shape[0]
    upstream = tensors.get("g", torch.ones(rows, dtype=tensors[first].dtype))
    compiled = torch.compile(torch_function, dynamic=False)

    def run_torch(function):
        def call():
            leaf = tensors[first].detach().requires_grad_(True)
            value = function(leaf, tensors["t"]) if "t" in tensors else function(leaf)
            value.backward(upstream)
            return value, leaf.grad
        return call

    def both(primal, *rest):
        value, pull = jax.vjp(lambda v: jax_function(v, *rest), primal)
        cotangent = jax_arrays["g"] if kind == "layer" else jax.numpy.ones(primal.shape[0], primal.dtype)
        return value, pull(cotangent)[0]

    jitted = jax.jit(both)
    arguments = [jax_arrays[first]] + ([jax_arrays["t"]] if "t" in jax_arrays else [])
    return {"torch eager": run_torch(torch_function), "torch.compile": run_torch(compiled),
            "jax.jit": lambda: jax.block_until_ready(jitted(*arguments))}


def check_agreement(c_outputs: dict, torch_call, dtype: str, name: str) -> None:
    """The generated C computes what torch computes (else the timing compares different things)."""
    value, gradient = torch_call()
    tolerance = 1e-9 if dtype == "float64" else 2e-3
    ours = [v for k, v in c_outputs.items() if not k.startswith("d")] + [v for k, v in c_outputs.items()
                                                                           if k.startswith("d")]
    for mine, theirs in zip(ours, (value.detach().numpy(), gradient.numpy())):
        scale = max(1.0, float(np.abs(theirs).max()))
        error = float(np.abs(mine - theirs).max()) / scale
        if not error <= tolerance:
            raise SystemExit(f"{name} {dtype}: the generated C differs from torch by {error:.2e}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--only", help="only the functions whose name contains this (printed, nothing written)")
    arguments = parser.parse_args()
    import jax
    import jax.numpy as jnp
    import torch

    jax.config.update("jax_enable_x64", True)
    torch.set_num_threads(1)
    shapes = [(64, 2048)] if arguments.quick else [(1024, 8192), (64, 262144)]
    rounds = 3 if arguments.quick else 7
    corpus = {name: entry for name, entry in _corpus(torch, jnp, jax).items()
              if not arguments.only or arguments.only in name}
    table = []
    with tempfile.TemporaryDirectory() as folder:
        for name, (spec, kind, torch_function, jax_function) in corpus.items():
            for dtype in ("float32", "float64"):
                for rows, n in shapes:
                    rng = np.random.default_rng(0)
                    first = "z" if spec.startswith("p[i]") else "x"
                    inputs = {first: rng.normal(0, 2, (rows, n)).astype(dtype)}
                    if kind == "loss" and "t[k]" in spec:
                        targets = rng.uniform(size=(rows, n))
                        inputs["t"] = (targets / targets.sum(-1, keepdims=True)).astype(dtype)
                    if kind == "layer":
                        inputs["g"] = rng.normal(size=(rows, n)).astype(dtype)
                    c_call, outputs = build(spec, dtype, Path(folder), rows, n, dict(inputs))
                    candidates = {"C": c_call, **peers(torch, jax, kind, torch_function, jax_function, inputs, dtype)}
                    c_call()
                    check_agreement(outputs, candidates["torch eager"], dtype, name)
                    results = measure(candidates, rounds)
                    table.append({"function": name, "dtype": dtype, "shape": (rows, n), **results})
                    print(f"{name} {dtype} ({rows}, {n}): " + ", ".join(f"{k} {v:.2f} ms" for k, v in results.items())
                          + f"; C / compile {results['C'] / results['torch.compile']:.2f}, C / eager "
                          f"{results['C'] / results['torch eager']:.2f}", flush=True)
                    torch._dynamo.reset()  # a fresh cache per function: no recompilation limit is hit
    document = markdown(table, rounds, torch.__version__, jax.__version__)
    print(document)
    if not arguments.quick and not arguments.only:
        replace_section(ROOT / "results.md", "compilers", document)


def markdown(table: list[dict], rounds: int, torch_version: str, jax_version: str) -> str:
    compile_ratios = [r["C"] / r["torch.compile"] for r in table]
    eager_ratios = [r["C"] / r["torch eager"] for r in table]
    jit_ratios = [r["C"] / r["jax.jit"] for r in table]

    def verdict(wording: str, ratios: list[float], bound: float) -> str:
        met = sum(r <= bound for r in ratios)
        worst = max(range(len(ratios)), key=ratios.__getitem__)
        where = f"{table[worst]['function']} {table[worst]['dtype']} {table[worst]['shape']}"
        return (f"- {wording}: {'met' if met == len(ratios) else 'NOT met'} ({met} of {len(ratios)} cases; range "
                f"{min(ratios):.2f}–{max(ratios):.2f}, worst {max(ratios):.2f} at {where})")

    lines = ["# Functions outside the catalog: generated C against torch eager, torch.compile and jax.jit", "",
             f"Made by `python bench/compilers.py` on {platform.processor() or platform.machine()}, one thread "
             f"each; interleaved medians of {rounds} rounds. C compiled with `{' '.join(RECOMMENDED_FLAGS)}`; "
             f"torch {torch_version} (eager and `torch.compile`, Inductor CPU), jax {jax_version} (`jax.jit`, "
             "XLA CPU, x64 on). A loss: L per row and its gradient (C `loss_and_grad`; torch `L.backward(ones)`; "
             "JAX `jax.vjp`). A layer: y = f(x), then dx = Jᵀg (C `forward`, then `vjp`; torch `y.backward(g)`; "
             "JAX `jax.vjp`). Before timing, each C result is checked against torch's.", "",
             "## Targets (1 thread, every function, both dtypes, both shapes)", "",
             verdict("generated C ≤ 1.0× torch.compile", compile_ratios, 1.0),
             verdict("generated C ≤ 0.5× torch eager", eager_ratios, 0.5),
             f"- (for reference, C / jax.jit: range {min(jit_ratios):.2f}–{max(jit_ratios):.2f})", "",
             "| function | dtype | shape | C ms | torch eager ms | torch.compile ms | jax.jit ms | C / compile | "
             "C / eager | C / jit |", "|---|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['function']} | {r['dtype']} | {r['shape']} | {r['C']:.2f} | {r['torch eager']:.2f} | "
              f"{r['torch.compile']:.2f} | {r['jax.jit']:.2f} | {r['C'] / r['torch.compile']:.2f} | "
              f"{r['C'] / r['torch eager']:.2f} | {r['C'] / r['jax.jit']:.2f} |" for r in table]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
