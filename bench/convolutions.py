"""Generated convolutions against torch on the CPU, one thread (issue #34's index arithmetic).

The docs examples `conv2d.spec` (3×3 kernels, padding 1, a bias) and `causal-conv1d.spec` (depthwise, causal),
forward and all gradients, float64: the generated NumPy module, the generated C kernels and the generated torch
module (`--lang torch`: its autograd.Function, eager) against torch's conv2d / conv1d with autograd (forward and
backward timed together). One process, implementations interleaved round by round, medians; ratio = generated /
torch eager (< 1: faster). The table goes into bench/results.md ("convolutions" section).

    python bench/convolutions.py [--quick]      # --quick: small shapes, few rounds, nothing written
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from softgrad.codegen.build import import_path, load_c
from softgrad.codegen.emit import emit
from softgrad.derive import derive_spec, load_spec

ROOT = Path(__file__).resolve().parent
EXAMPLES = ROOT.parent / "docs" / "examples"
sys.path.insert(0, str(ROOT))
from sections import replace_section  # noqa: E402


def generated(name: str, folder: Path) -> tuple[object, object, object]:
    """(the generated C kernels, NumPy module, torch function) of a docs example, float64."""
    derivation = derive_spec(load_spec(str(EXAMPLES / f"{name}.spec")))
    (folder / f"{name}-c").mkdir()
    c_kernels = load_c(emit(derivation, "c", dtype="float64"), folder / f"{name}-c")
    modules = []
    for language in ("numpy", "torch"):
        ((file_name, text),) = emit(derivation, language).items()
        (folder / language).mkdir(exist_ok=True)
        (folder / language / file_name).write_text(text)
        modules.append(import_path(folder / language / file_name))
    torch_module = modules[1]
    return c_kernels, modules[0], getattr(torch_module, torch_module.__all__[2])


def with_autograd(function, inputs, dy):
    """function's output and the gradients of every input, through torch autograd (the generated Function's
    derived backward, or torch's own)."""
    leaves = [torch.from_numpy(a).requires_grad_() for a in inputs]
    out = function(*leaves)
    out.backward(torch.from_numpy(dy))
    return out, *(leaf.grad for leaf in leaves)


def torch_conv2d(W, x, bias):
    return torch.nn.functional.conv2d(x, W, bias, padding=1)


def torch_causal(w, x):
    padded = torch.nn.functional.pad(x, (w.shape[1] - 1, 0))
    return torch.nn.functional.conv1d(padded, w.flip(-1)[:, None, :], groups=w.shape[0])


def medians(functions: dict, rounds: int) -> dict[str, float]:
    """Median seconds of each function, interleaved round by round after a warm-up call each."""
    times: dict[str, list[float]] = {name: [] for name in functions}
    for function in functions.values():
        function()
    for _ in range(rounds):
        for name, function in functions.items():
            time.sleep(0.05)  # threads a runtime left spinning after its last call are asleep again
            start = time.perf_counter()
            function()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    quick = parser.parse_args().quick
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    rounds = 3 if quick else 7
    shapes2d = (2, 4, 4, 8, 8) if quick else (8, 16, 16, 32, 32)  # B, C in, O out, H, W
    shapes1d = (2, 8, 64, 4) if quick else (8, 64, 1024, 4)  # B, C, T, K
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        conv2d_c, conv2d_numpy, conv2d_torch = generated("conv2d", Path(folder))
        causal_c, causal_numpy, causal_torch = generated("causal-conv1d", Path(folder))
        B, C, channels_out, H, Wd = shapes2d
        W, x = rng.normal(size=(channels_out, C, 3, 3)), rng.normal(size=(B, C, H, Wd))
        bias, dy = rng.normal(size=channels_out), rng.normal(size=(B, channels_out, H, Wd))
        inputs = (W, x, bias)
        expected = [t.detach().numpy() for t in with_autograd(torch_conv2d, inputs, dy)]
        for got in ([conv2d_c.forward(*inputs), *conv2d_c.gradients(*inputs, dy)],  # the same numbers first
                    [conv2d_numpy.forward(*inputs), *conv2d_numpy.gradients(*inputs, dy)],
                    [t.detach().numpy() for t in with_autograd(conv2d_torch, inputs, dy)]):
            assert all(np.allclose(a, b, rtol=1e-10, atol=1e-10) for a, b in zip(got, expected))
        timings = {"torch": lambda: with_autograd(torch_conv2d, inputs, dy),
                   "C": lambda: (conv2d_c.forward(*inputs), conv2d_c.gradients(*inputs, dy)),
                   "NumPy": lambda: (conv2d_numpy.forward(*inputs), conv2d_numpy.gradients(*inputs, dy)),
                   "torch module": lambda: with_autograd(conv2d_torch, inputs, dy)}
        rows.append((f"conv2d 3×3, padding 1 (B {B}, C {C}, O {channels_out}, {H}×{Wd})", medians(timings, rounds)))
        B, C, T, K = shapes1d
        w, x, dy = rng.normal(size=(C, K)), rng.normal(size=(B, C, T)), rng.normal(size=(B, C, T))
        expected = [t.detach().numpy() for t in with_autograd(torch_causal, (w, x), dy)]
        for got in ([causal_c.forward(w, x), *causal_c.gradients(w, x, dy)],
                    [causal_numpy.forward(w, x), *causal_numpy.gradients(w, x, dy)],
                    [t.detach().numpy() for t in with_autograd(causal_torch, (w, x), dy)]):
            assert all(np.allclose(a, b, rtol=1e-10, atol=1e-10) for a, b in zip(got, expected))
        timings = {"torch": lambda: with_autograd(torch_causal, (w, x), dy),
                   "C": lambda: (causal_c.forward(w, x), causal_c.gradients(w, x, dy)),
                   "NumPy": lambda: (causal_numpy.forward(w, x), causal_numpy.gradients(w, x, dy)),
                   "torch module": lambda: with_autograd(causal_torch, (w, x), dy)}
        rows.append((f"causal depthwise conv1d (B {B}, C {C}, T {T}, K {K})", medians(timings, rounds)))
    lines = ["", "Forward and every gradient, float64, one thread; medians of interleaved rounds; ratio = generated / "
             "torch eager (conv2d / conv1d with autograd); torch module: the generated autograd.Function, eager.", "",
             "| convolution | torch ms | generated C ms | C / torch | generated NumPy ms | NumPy / torch "
             "| generated torch module ms | module / torch |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for name, seconds in rows:
        lines.append(f"| {name} | {seconds['torch'] * 1e3:.2f} | {seconds['C'] * 1e3:.2f} | "
                     f"{seconds['C'] / seconds['torch']:.2f}× | {seconds['NumPy'] * 1e3:.2f} | "
                     f"{seconds['NumPy'] / seconds['torch']:.2f}× | {seconds['torch module'] * 1e3:.2f} | "
                     f"{seconds['torch module'] / seconds['torch']:.2f}× |")
    print("\n".join(lines))
    if not quick:
        replace_section(ROOT / "results.md", "convolutions", "\n".join(lines))


if __name__ == "__main__":
    main()
