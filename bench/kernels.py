"""Generated kernels against PyTorch CPU, NumPy and a memory-bandwidth probe (issue: performance).

One process, interleaved (A B C … A B C …), medians of the rounds. For each shape, dtype and thread count
it prints median ms, GB/s of compulsory traffic (each array the operation must read or write, once), the
fraction of the probe's bandwidth (the better of a copy and a triad of the same size, by torch on the
same threads) and the ratio to PyTorch (our time / torch time; < 1 is faster). Then the scaling rows
(VJP time against n at fixed rows, beside the naive Jacobian route) and the issue's targets, met or not.
Everything is written to bench/results.md.

    python bench/kernels.py [--quick]        # --quick: one small shape, few rounds (a smoke run)

Needs torch (pip install torch==2.13.0: the CPU wheel on this machine) and a C compiler with OpenMP.
The same comparison for functions outside the catalog, with torch.compile and jax.jit columns, is
bench/compilers.py; rows split over two threads, bench/long_rows.py.
NumPy runs on one thread, so its rows appear only in the 1-thread tables.
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import softgrad
from softgrad.codegen.build import RECOMMENDED_FLAGS, compile_shared, import_path
from softgrad.codegen.emit import emit

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
from sections import replace_section  # noqa: E402

BLOCK_BYTES = 256 * 1024
ENTRIES = ("softmax", "log-softmax", "cross-entropy")


# ---------------------------------------------------------------------------------------------- building
def build(name: str, dtype: str, folder: Path, openmp: bool):
    """The generated C library of a catalog entry (raw ctypes: the caller passes its own buffers)."""
    files = emit(softgrad.derive(name), "c", dtype=dtype, openmp=openmp)
    for file_name, text in files.items():
        (folder / file_name).write_text(text)
    module = next(f for f in files if f.endswith(".c"))[:-2]
    library = folder / f"lib{module}_{dtype}_{'omp' if openmp else 'serial'}.so"
    compile_shared(folder / f"{module}.c", library, openmp=openmp)
    return ctypes.CDLL(str(library))


def build_numpy(name: str, folder: Path):
    (file_name, text), = emit(softgrad.derive(name), "numpy").items()
    (folder / file_name).write_text(text)
    return import_path(folder / file_name)


def c_call(function, *arrays, rows: int, n: int):
    function.restype = None
    pointers = [a.ctypes.data_as(ctypes.c_void_p) for a in arrays]
    return lambda: function(*pointers, ctypes.c_size_t(rows), ctypes.c_size_t(n))


def openmp_threads(count: int) -> None:
    """Thread count of the OpenMP runtime our libraries use (the system libgomp, not torch's copy)."""
    name = ctypes.util.find_library("gomp") or "libgomp.so.1"
    ctypes.CDLL(name).omp_set_num_threads(count)


# -------------------------------------------------------------------------------- hand-written NumPy peers
def numpy_idiomatic(x, g, t):
    """What one writes without thinking about memory: every operation allocates a full-size array."""

    def softmax(v):
        e = np.exp(v - v.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    def log_softmax(v):
        shifted = v - v.max(-1, keepdims=True)
        return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))

    def log_softmax_forward_backward():
        y = log_softmax(x)
        return g - np.exp(y) * g.sum(-1, keepdims=True)

    def cross_entropy():
        p = softmax(x)
        loss = -(t * np.log(p)).sum(-1)
        return loss, p * t.sum(-1, keepdims=True) - t

    return {"softmax forward": lambda y, dx: softmax(x),
            "softmax backward (y, g → dx)": lambda y, dx: y * (g - (g * y).sum(-1, keepdims=True)),
            "log-softmax forward + backward": lambda y, dx: log_softmax_forward_backward(),
            "cross-entropy loss and gradient (fused)": lambda y, dx: cross_entropy()}


def numpy_blocked(x, g, t):
    """The best NumPy we know how to write by hand: ~256 KiB blocks of rows, out= everywhere, and the same
    answers as the generated kernels (masked −inf logits included)."""
    rows, n = x.shape
    step = max(1, BLOCK_BYTES // (n * x.itemsize))
    blocks = [slice(start, min(start + step, rows)) for start in range(0, rows, step)]
    work = np.empty((min(step, rows), n), x.dtype)
    loss = np.empty(rows, x.dtype)

    def softmax(y, dx):
        for b in blocks:
            out = y[b]
            np.subtract(x[b], x[b].max(1, keepdims=True), out=out)
            np.exp(out, out=out)
            out *= 1 / out.sum(1, keepdims=True)

    def backward(y, dx):
        for b in blocks:
            w = work[: b.stop - b.start]
            np.multiply(g[b], y[b], out=w)
            np.subtract(g[b], w.sum(1, keepdims=True), out=dx[b])
            dx[b] *= y[b]

    def log_softmax_forward_backward(y, dx):
        for b in blocks:
            w = work[: b.stop - b.start]
            np.subtract(x[b], x[b].max(1, keepdims=True), out=y[b])
            np.exp(y[b], out=w)
            y[b] -= np.log(w.sum(1, keepdims=True))
        for b in blocks:
            np.exp(y[b], out=dx[b])
            dx[b] *= -g[b].sum(1, keepdims=True)
            dx[b] += g[b]

    def cross_entropy(y, dx):
        for b in blocks:
            w = work[: b.stop - b.start]
            maximum = x[b].max(1, keepdims=True)
            np.subtract(x[b], maximum, out=w)
            np.exp(w, out=dx[b])
            total = dx[b].sum(1, keepdims=True)
            weight = t[b].sum(1, keepdims=True)
            w *= t[b]
            np.copyto(w, 0, where=t[b] == 0)  # 0 · (−inf) = 0 for masked classes, as the generated kernels do
            loss[b] = (weight * np.log(total) - w.sum(1, keepdims=True))[:, 0]
            dx[b] *= weight / total
            dx[b] -= t[b]

    return {"softmax forward": softmax, "softmax backward (y, g → dx)": backward,
            "log-softmax forward + backward": log_softmax_forward_backward,
            "cross-entropy loss and gradient (fused)": cross_entropy}


# -------------------------------------------------------------------------------------------- measuring
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


TRAFFIC = {  # arrays of (rows, n) read or written, once each
    "softmax forward": 2,  # x → y
    "softmax backward (y, g → dx)": 3,
    "log-softmax forward + backward": 5,  # x → y, then y, g → dx
    "cross-entropy loss and gradient (fused)": 3,  # x, t → dx
}


def benchmark_shape(torch, libraries, numpy_modules, rows, n, dtype, threads, rounds):
    rng = np.random.default_rng(0)
    x = rng.normal(0, 3, (rows, n)).astype(dtype)
    g = rng.normal(size=(rows, n)).astype(dtype)
    t = rng.uniform(size=(rows, n)).astype(dtype)
    t /= t.sum(-1, keepdims=True)
    y, dx, saved, log_saved = (np.empty_like(x) for _ in range(4))
    loss = np.empty(rows, dtype=dtype)
    softmax_c, log_softmax_c, cross_entropy_c = (libraries[name] for name in ENTRIES)
    softmax_np, log_softmax_np, cross_entropy_np = (numpy_modules[name] for name in ENTRIES)
    c_call(softmax_c.softmax_forward, x, saved, rows=rows, n=n)()
    tx, tg, tt, ty_saved = (torch.from_numpy(a) for a in (x, g, t, saved))
    ty, tdx, tlog = (torch.from_numpy(a) for a in (y, dx, log_saved))
    torch_dtype = tx.dtype

    def torch_cross_entropy():
        logits = tx.detach().requires_grad_(True)
        torch.nn.functional.cross_entropy(logits, tt, reduction="sum").backward()
        return logits.grad

    def log_softmax_c_pair():
        c_call(log_softmax_c.log_softmax_forward, x, y, rows=rows, n=n)()
        c_call(log_softmax_c.log_softmax_vjp_from_output, y, g, dx, rows=rows, n=n)()

    def torch_log_softmax_pair():
        torch._log_softmax(tx, -1, False, out=tlog)
        torch._log_softmax_backward_data(tg, tlog, -1, torch_dtype, out=tdx)

    operations = {
        "softmax forward": {
            "C": c_call(softmax_c.softmax_forward, x, y, rows=rows, n=n),
            "NumPy (generated)": lambda: softmax_np.softmax_forward(x, out=y),
            "torch": lambda: torch._softmax(tx, -1, False, out=ty),
        },
        "softmax backward (y, g → dx)": {
            "C": c_call(softmax_c.softmax_vjp_from_output, saved, g, dx, rows=rows, n=n),
            "NumPy (generated)": lambda: softmax_np.softmax_vjp_from_output(saved, g, out=dx),
            "torch": lambda: torch._softmax_backward_data(tg, ty_saved, -1, torch_dtype, grad_input=tdx),
        },
        "log-softmax forward + backward": {
            "C": log_softmax_c_pair,
            "NumPy (generated)": lambda: log_softmax_np.log_softmax_vjp_from_output(
                log_softmax_np.log_softmax_forward(x, out=y), g, out=dx),
            "torch": torch_log_softmax_pair,
        },
        "cross-entropy loss and gradient (fused)": {
            "C": c_call(cross_entropy_c.cross_entropy_loss_and_grad, x, t, loss, dx, rows=rows, n=n),
            "NumPy (generated)": lambda: cross_entropy_np.cross_entropy_loss_and_grad(x, t, out=dx),
            "torch": torch_cross_entropy,
        },
    }
    if threads == 1:
        idiomatic, blocked = numpy_idiomatic(x, g, t), numpy_blocked(x, g, t)
        for operation, candidates in operations.items():
            candidates["NumPy (idiomatic)"] = (lambda f: lambda: f(saved, dx))(idiomatic[operation])
            candidates["NumPy (hand-written, row blocks)"] = (
                lambda f, o: lambda: f(y if o == "softmax forward" or "log-softmax" in o else saved, dx))(
                    blocked[operation], operation)
    else:
        for candidates in operations.values():
            del candidates["NumPy (generated)"]
    copy_target = torch.empty_like(tx)
    probes = measure({"copy": lambda: copy_target.copy_(tx),
                      "triad": lambda: torch.add(tg, tx, alpha=0.5, out=copy_target)}, rounds)
    probe = max(2 * x.nbytes / probes["copy"], 3 * x.nbytes / probes["triad"]) / 1e6  # GB/s
    table = []
    for operation, candidates in operations.items():
        results = measure(candidates, rounds)
        for implementation, milliseconds in results.items():
            bandwidth = TRAFFIC[operation] * x.nbytes / (milliseconds * 1e-3) / 1e9
            table.append({"shape": (rows, n), "dtype": dtype, "threads": threads, "operation": operation,
                          "implementation": implementation, "ms": milliseconds, "gbs": bandwidth,
                          "of_probe": bandwidth / probe, "to_torch": milliseconds / results["torch"]})
        print(f"{threads}T {dtype} ({rows}, {n}) {operation}: " + ", ".join(
            f"{k} {v:.2f} ms" for k, v in results.items()), flush=True)
    return table, probe


def scaling(torch, library, rows: int, sizes, rounds: int) -> list[dict]:
    """VJP time against n at fixed rows, beside the naive route (diag(y) − y yᵀ per row, then J g)."""
    table = []
    for n in sizes:
        rng = np.random.default_rng(n)
        x = rng.normal(size=(rows, n))
        y, g, dx = np.empty_like(x), rng.normal(size=(rows, n)), np.empty_like(x)
        c_call(library.softmax_forward, x, y, rows=rows, n=n)()

        def naive():
            for row in range(rows):
                jacobian = np.diag(y[row]) - np.outer(y[row], y[row])
                dx[row] = jacobian @ g[row]

        results = measure({"C vjp (O(n))": c_call(library.softmax_vjp_from_output, y, g, dx, rows=rows, n=n),
                           "naive Jacobian route (O(n²))": naive}, rounds)
        for implementation, milliseconds in results.items():
            table.append({"n": n, "implementation": implementation, "ms": milliseconds})
        print(f"scaling n = {n}: " + ", ".join(f"{k} {v:.3f} ms" for k, v in results.items()), flush=True)
    return table


# ------------------------------------------------------------------------------------------------ report
TARGETS = [  # (operation, implementation, what, bound, the wording)
    ("softmax backward (y, g → dx)", "C", "to_torch", 0.95, "softmax backward ≤ 0.95× torch"),
    ("softmax forward", "C", "to_torch", 1.05, "softmax forward ≤ 1.05× torch"),
    ("log-softmax forward + backward", "C", "to_torch", 1.0, "log-softmax forward + backward ≤ 1.0× torch"),
    ("cross-entropy loss and gradient (fused)", "C", "to_torch", 0.25, "fused cross-entropy ≤ 0.25× torch"),
]


def targets(table: list[dict], large_shapes, probes: dict) -> list[str]:
    lines = []
    one_thread = [r for r in table if r["threads"] == 1 and r["shape"] in large_shapes]
    for operation, implementation, key, bound, wording in TARGETS:
        values = [r[key] for r in one_thread if r["operation"] == operation and r["implementation"] == implementation]
        lines.append(_verdict(wording, values, bound, "≤"))
    generated, blocked, idiomatic = ({(r["shape"], r["dtype"], r["operation"]): r["ms"] for r in one_thread
                                      if r["implementation"] == name}
                                     for name in ("NumPy (generated)", "NumPy (hand-written, row blocks)",
                                                  "NumPy (idiomatic)"))
    lines.append(_verdict("generated NumPy ≤ 1.1× the hand-written row-blocked NumPy",
                          [generated[k] / blocked[k] for k in generated], 1.1, "≤"))
    lines.append(_verdict("generated NumPy ≥ 2× faster than idiomatic NumPy",
                          [idiomatic[k] / generated[k] for k in generated], 2.0, "≥"))
    speedups = []
    for row in table:
        if row["threads"] == 2 and row["implementation"] == "C" and row["shape"] in large_shapes:
            single = next(r for r in table if r["threads"] == 1 and r["implementation"] == "C" and all(
                r[k] == row[k] for k in ("shape", "dtype", "operation")))
            speedups.append(single["ms"] / row["ms"])
    if speedups:
        lines.append(_verdict("C with 2 threads ≥ 1.7× its 1-thread speed", speedups, 1.7, "≥"))
        ceiling = [probes[shape, dtype, 2] / probes[shape, dtype, 1] for (shape, dtype, threads) in probes
                   if threads == 1 and shape in large_shapes]
        lines.append(f"  (the bandwidth probe itself gains {min(ceiling):.2f}–{max(ceiling):.2f}× from a second "
                     "thread: the ceiling for the memory-bound operations)")
    return lines


def _verdict(wording: str, values: list[float], bound: float, sense: str) -> str:
    if not values:
        return f"- {wording}: not measured"
    worst = max(values) if sense == "≤" else min(values)
    met = sum(1 for v in values if (v <= bound if sense == "≤" else v >= bound))
    return (f"- {wording}: {'met' if met == len(values) else 'NOT met'} ({met} of {len(values)} cases within "
            f"the bound; range {min(values):.2f}–{max(values):.2f}, worst {worst:.2f})")


def markdown(table, probes, scaling_rows, target_lines, rounds) -> str:
    lines = ["# Kernel benchmark", "",
             f"Made by `python bench/kernels.py` on {platform.processor() or platform.machine()}, "
             f"{os.cpu_count()} cores; interleaved medians of {rounds} rounds. C compiled with "
             f"`{' '.join(RECOMMENDED_FLAGS)}` (`-fopenmp` for 2 threads); torch {probes['torch']}, "
             f"same thread count, `out=` buffers where torch has them. GB/s counts each array the operation must "
             "read or write once; the probe is the better of a copy and a triad of the same size. "
             "Ratio to torch = our time / torch time.", ""]
    lines += ["## Targets (1 thread unless said; the two large shapes, both dtypes)", "", *target_lines, ""]
    for threads in (1, 2):
        lines += [f"## {threads} thread{'s' if threads > 1 else ''}", "",
                  "| shape | dtype | operation | implementation | median ms | GB/s | of probe | ratio to torch |",
                  "|---|---|---|---|---:|---:|---:|---:|"]
        lines += [f"| {r['shape']} | {r['dtype']} | {r['operation']} | {r['implementation']} | {r['ms']:.2f} | "
                  f"{r['gbs']:.1f} | {r['of_probe']:.0%} | {r['to_torch']:.2f} |"
                  for r in table if r["threads"] == threads]
        lines += ["", "Probe bandwidth: " + ", ".join(
            f"{shape} {dtype} {value:.1f} GB/s" for (shape, dtype, t), value in probes["values"].items()
            if t == threads), ""]
    lines += ["## Scaling: softmax VJP against n (float64, 64 rows)", "",
              "| n | implementation | median ms | ms per 1000 entries of a row | time / time at the first n |",
              "|---:|---|---:|---:|---:|"]
    first = {r["implementation"]: r["ms"] for r in scaling_rows if r["n"] == scaling_rows[0]["n"]}
    lines += [f"| {r['n']} | {r['implementation']} | {r['ms']:.3f} | {r['ms'] / r['n'] * 1000:.4f} | "
              f"{r['ms'] / first[r['implementation']]:.1f} |" for r in scaling_rows]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    arguments = parser.parse_args()
    import torch

    shapes = [(256, 1000)] if arguments.quick else [(4096, 1000), (512, 32000), (64, 262144)]
    large = shapes if arguments.quick else shapes[1:]
    rounds = 3 if arguments.quick else 9
    table, probes = [], {"torch": torch.__version__, "values": {}}
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        numpy_modules = {name: build_numpy(name, folder) for name in ENTRIES}
        for threads in (1, 2):
            torch.set_num_threads(threads)
            openmp_threads(threads)
            for dtype in ("float64", "float32"):
                libraries = {name: build(name, dtype, folder, openmp=threads > 1) for name in ENTRIES}
                for rows, n in shapes:
                    rows_table, probe = benchmark_shape(torch, libraries, numpy_modules, rows, n, dtype, threads,
                                                        rounds)
                    table += rows_table
                    probes["values"][(rows, n), dtype, threads] = probe
        torch.set_num_threads(1)
        softmax_library = build("softmax", "float64", folder, openmp=False)
        sizes = (250, 500) if arguments.quick else (250, 500, 1000, 2000)
        scaling_rows = scaling(torch, softmax_library, 64, sizes, rounds)
    document = markdown(table, probes, scaling_rows, targets(table, large, probes["values"]), rounds)
    print(document)
    if not arguments.quick:
        replace_section(ROOT / "results.md", "kernels", document)


if __name__ == "__main__":
    sys.exit(main())
