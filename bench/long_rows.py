"""Two threads on long rows: the OpenMP build splits each row's reductions and output loop over the
threads (rows of 2^16 entries or more), where splitting rows between threads would leave one idle.

For the exp-bound kernels of the catalog, at (64, 262144) and (1, 2^20), float64 and float32: median time
of the OpenMP build on 1 thread and on 2 threads (interleaved rounds), and the speed-up. Target ≥ 1.6×.

    python bench/long_rows.py [--quick]     # writes the "long rows" section of bench/results.md
"""

from __future__ import annotations

import argparse
import ctypes
import ctypes.util
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import softgrad
from softgrad.codegen.build import RECOMMENDED_FLAGS, compile_shared
from softgrad.codegen.emit import emit

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
from sections import replace_section  # noqa: E402

#: (catalog entry, kernel, its arguments: inputs then outputs, each "row" (rows, n) or "loss" (rows,))
KERNELS = [("softmax", "forward", ["x", "y"]), ("log-softmax", "forward", ["x", "y"]),
           ("cross-entropy", "loss_and_grad", ["x", "t", "loss", "dx"]), ("logsumexp", "forward", ["x", "loss"])]


def threads(count: int) -> None:
    ctypes.CDLL(ctypes.util.find_library("gomp") or "libgomp.so.1").omp_set_num_threads(count)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    arguments = parser.parse_args()
    shapes = [(8, 1 << 16)] if arguments.quick else [(64, 262144), (1, 1 << 20)]
    rounds = 5 if arguments.quick else 15
    table = []
    with tempfile.TemporaryDirectory() as folder:
        for name, kind, argument_names in KERNELS:
            for dtype in ("float64", "float32"):
                files = emit(softgrad.derive(name), "c", [kind], dtype=dtype, openmp=True)
                for file_name, text in files.items():
                    (Path(folder) / file_name).write_text(text)
                library_path = Path(folder) / f"lib{files.module}_{dtype}.so"
                compile_shared(Path(folder) / f"{files.module}.c", library_path, openmp=True)
                library = ctypes.CDLL(str(library_path))
                function = next(getattr(library, f) for f in re_functions(files[f"{files.module}.h"], kind))
                function.restype = None
                for rows, n in shapes:
                    rng = np.random.default_rng(0)
                    arrays = {"x": rng.normal(0, 3, (rows, n)).astype(dtype),
                              "t": rng.dirichlet(np.ones(n), rows).astype(dtype)}
                    pointers = [(arrays.get(a) if a in arrays else np.empty((rows,) if a == "loss" else (rows, n),
                                                                            dtype)) for a in argument_names]
                    addresses = [a.ctypes.data_as(ctypes.c_void_p) for a in pointers]
                    size = (ctypes.c_size_t(rows), ctypes.c_size_t(n))

                    def call(function=function, addresses=addresses, size=size):
                        function(*addresses, *size)
                    times = {1: [], 2: []}
                    for count in (1, 2):
                        threads(count)
                        call()
                    for _ in range(rounds):
                        for count in (1, 2):
                            threads(count)
                            start = time.perf_counter()
                            call()
                            times[count].append((time.perf_counter() - start) * 1e3)
                    one, two = statistics.median(times[1]), statistics.median(times[2])
                    table.append({"kernel": f"{name} {kind}", "dtype": dtype, "shape": (rows, n), "one": one,
                                  "two": two})
                    print(f"{name} {kind} {dtype} ({rows}, {n}): 1 thread {one:.2f} ms, 2 threads {two:.2f} ms, "
                          f"{one / two:.2f}×", flush=True)
    speedups = [r["one"] / r["two"] for r in table]
    met = sum(s >= 1.6 for s in speedups)
    lines = ["# Long rows on two threads", "",
             f"Made by `python bench/long_rows.py` on {platform.processor() or platform.machine()}; the OpenMP "
             f"build (`{' '.join(RECOMMENDED_FLAGS)} -fopenmp`) on 1 and on 2 threads, interleaved medians of "
             f"{rounds} rounds. Rows of 2^16 entries or more are split over the threads.", "",
             f"- 2 threads ≥ 1.6× the 1-thread speed: {'met' if met == len(speedups) else 'NOT met'} ({met} of "
             f"{len(speedups)} cases; range {min(speedups):.2f}–{max(speedups):.2f})", "",
             "| kernel | dtype | shape | 1 thread ms | 2 threads ms | speed-up |", "|---|---|---|---:|---:|---:|"]
    lines += [f"| {r['kernel']} | {r['dtype']} | {r['shape']} | {r['one']:.2f} | {r['two']:.2f} | "
              f"{r['one'] / r['two']:.2f} |" for r in table]
    document = "\n".join(lines) + "\n"
    print(document)
    if not arguments.quick:
        replace_section(ROOT / "results.md", "long rows", document)


def re_functions(header: str, kind: str) -> list[str]:
    import re
    return re.findall(rf"void (\w+_{kind})\(", header)


if __name__ == "__main__":
    sys.exit(main())
