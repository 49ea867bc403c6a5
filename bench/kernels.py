"""Generated kernels against PyTorch CPU, idiomatic NumPy and a memory-bandwidth probe (issue: performance).

One process, interleaved (A B C … A B C …), medians of the rounds. For each shape and dtype it prints
median ms, GB/s of compulsory traffic, the fraction of the copy probe's bandwidth and the ratio to
PyTorch (our time / torch time; < 1 is faster), and writes the table to bench/results.md.

    python bench/kernels.py [--quick]        # --quick: one small shape, few rounds (a smoke run)

Needs torch (pip install torch==2.13.0: the CPU wheel on this machine) and a C compiler.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import softgrad
from softgrad.codegen.build import compiler, import_path
from softgrad.codegen.emit import emit

ROOT = Path(__file__).resolve().parent


def build(name: str, dtype: str, folder: Path):
    """The generated C library (raw ctypes, caller-provided buffers) and NumPy module of a catalog entry."""
    import subprocess

    derivation = softgrad.derive(name)
    files = emit(derivation, "c", dtype=dtype)
    for file_name, text in files.items():
        (folder / file_name).write_text(text)
    module = file_name.replace("_ctypes.py", "")
    library = folder / f"lib{module}_{dtype}.so"
    subprocess.run([compiler(), "-std=c99", "-O3", "-march=native", "-shared", "-fPIC",
                    str(folder / f"{module}.c"), "-o", str(library), "-lm"], check=True)
    (numpy_name, text), = emit(derivation, "numpy").items()
    (folder / numpy_name).write_text(text)
    return ctypes.CDLL(str(library)), import_path(folder / numpy_name), module


def pointer(array):
    return array.ctypes.data_as(ctypes.c_void_p)


def c_call(function, *arrays, rows, n):
    function.restype = None
    pointers = [pointer(a) for a in arrays]
    return lambda: function(*pointers, ctypes.c_size_t(rows), ctypes.c_size_t(n))


def measure(candidates: dict, rounds: int) -> dict:
    """Interleaved medians in milliseconds."""
    times = {name: [] for name in candidates}
    for action in candidates.values():
        action()  # warm-up: page in the buffers, load the code
    for _ in range(rounds):
        for name, action in candidates.items():
            start = time.perf_counter()
            action()
            times[name].append((time.perf_counter() - start) * 1e3)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    arguments = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    shapes = [(256, 1000)] if arguments.quick else [(4096, 1000), (512, 32000), (64, 262144)]
    rounds = 3 if arguments.quick else 9
    rows_out = []
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        for dtype in ("float64", "float32"):
            libraries = {name: build(name, dtype, folder) for name in ("softmax", "log-softmax", "cross-entropy")}
            for rows, n in shapes:
                rng = np.random.default_rng(0)
                x = rng.normal(0, 3, (rows, n)).astype(dtype)
                g = rng.normal(size=(rows, n)).astype(dtype)
                t = rng.uniform(size=(rows, n)).astype(dtype)
                t /= t.sum(-1, keepdims=True)
                y = np.empty_like(x)
                dx = np.empty_like(x)
                loss = np.empty(rows, dtype=dtype)
                copy_target = np.empty_like(x)
                size_bytes = x.nbytes
                (softmax_c, softmax_np, _), (logsoftmax_c, logsoftmax_np, _), (ce_c, ce_np, _) = libraries.values()
                softmax_c_forward = c_call(softmax_c.softmax_forward, x, y, rows=rows, n=n)
                softmax_c_forward()
                y_saved = y.copy()
                logsoftmax_saved = np.empty_like(x)
                c_call(logsoftmax_c.log_softmax_forward, x, logsoftmax_saved, rows=rows, n=n)()
                tx, tg, tt = torch.from_numpy(x), torch.from_numpy(g), torch.from_numpy(t)
                ty = torch.from_numpy(y_saved)
                tlog = torch.from_numpy(logsoftmax_saved)
                torch_dtype = tx.dtype

                def torch_ce():
                    logits = tx.clone().requires_grad_(True)
                    torch.nn.functional.cross_entropy(logits, tt, reduction="sum").backward()
                    return logits.grad

                def numpy_softmax(v):
                    e = np.exp(v - v.max(-1, keepdims=True))
                    return e / e.sum(-1, keepdims=True)

                operations = {
                    "softmax forward": (2, {
                        "C": softmax_c_forward,
                        "NumPy (generated)": lambda: softmax_np.softmax_forward(x, out=y),
                        "NumPy (idiomatic)": lambda: numpy_softmax(x),
                        "torch": lambda: torch.softmax(tx, -1),
                    }),
                    "softmax backward (y, g → dx)": (3, {
                        "C": c_call(softmax_c.softmax_vjp_from_output, y_saved, g, dx, rows=rows, n=n),
                        "NumPy (generated)": lambda: softmax_np.softmax_vjp_from_output(y_saved, g, out=dx),
                        "NumPy (idiomatic)": lambda: y_saved * (g - (g * y_saved).sum(-1, keepdims=True)),
                        "torch": lambda: torch._softmax_backward_data(tg, ty, -1, torch_dtype),
                    }),
                    "log-softmax forward + backward": (5, {
                        "C": lambda: (c_call(logsoftmax_c.log_softmax_forward, x, y, rows=rows, n=n)(),
                                      c_call(logsoftmax_c.log_softmax_vjp_from_output, y, g, dx, rows=rows, n=n)()),
                        "NumPy (generated)": lambda: logsoftmax_np.log_softmax_vjp_from_output(
                            logsoftmax_np.log_softmax_forward(x, out=y), g, out=dx),
                        "torch": lambda: torch._log_softmax_backward_data(tg, torch.log_softmax(tx, -1), -1, torch_dtype),
                    }),
                    "cross-entropy loss and gradient (fused)": (3, {
                        "C": c_call(ce_c.cross_entropy_loss_and_grad, x, t, loss, dx, rows=rows, n=n),
                        "NumPy (generated)": lambda: ce_np.cross_entropy_loss_and_grad(x, t, out=dx),
                        "torch": torch_ce,
                    }),
                }
                probe = measure({"copy": lambda: np.copyto(copy_target, x)}, rounds)["copy"]
                probe_bandwidth = 2 * size_bytes / (probe * 1e-3) / 1e9
                for operation, (passes, candidates) in operations.items():
                    results = measure(candidates, rounds)
                    for implementation, milliseconds in results.items():
                        bandwidth = passes * size_bytes / (milliseconds * 1e-3) / 1e9
                        rows_out.append((f"({rows}, {n})", dtype, operation, implementation, milliseconds, bandwidth,
                                         bandwidth / probe_bandwidth, milliseconds / results["torch"]))
                    print(f"{dtype} ({rows}, {n}) {operation}: " + ", ".join(
                        f"{k} {v:.2f} ms" for k, v in results.items()), flush=True)
    header = ("| shape | dtype | operation | implementation | median ms | GB/s | of copy bandwidth | ratio to torch |\n"
              "|---|---|---|---|---:|---:|---:|---:|")
    lines = [header] + [f"| {s} | {d} | {o} | {i} | {ms:.2f} | {gb:.1f} | {frac:.0%} | {ratio:.2f} |"
                        for s, d, o, i, ms, gb, frac, ratio in rows_out]
    table = "\n".join(lines)
    print(table)
    if not arguments.quick:
        (ROOT / "results.md").write_text(
            "# Kernel benchmark\n\nMade by `python bench/kernels.py` (1 thread; interleaved medians; "
            f"machine: {os.cpu_count()} cores). Ratio to torch = our time / torch time.\n\n" + table + "\n")


if __name__ == "__main__":
    sys.exit(main())
