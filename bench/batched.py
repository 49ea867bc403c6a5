"""The batched softmax against the one-row softmax, in generated C (a benchmark, not a test).

    python bench/batched.py

`y[b, i] = exp(x[b, i]) / sum(exp(x[b, k]), k)` carries its batch index b in every array and sums over no b,
so softgrad derives it as one row with the row index implicit (as vmap lifts a per-example function) and
generates the one-row kernels. This measures both builds' forward and VJP on one thread, interleaved, best of
9, at (2048, 1024) in float64 and float32: the ratio is the one-pipeline issue's target (within 1.1×).
Writes the "batched" section of bench/results.md.
"""

import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from softgrad.codegen.build import load_c
from softgrad.codegen.emit import emit
from softgrad.derive import derive_spec, load_spec, parse_spec

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
from sections import replace_section  # noqa: E402

BATCHED = "y[b, i] = exp(x[b, i]) / sum(exp(x[b, k]), k)"
SHAPE = (2048, 1024)


def best(function, *arguments, repeats: int = 9) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function(*arguments)
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    rng = np.random.default_rng(0)
    lines = ["## Batched softmax against the one-row softmax (generated C, one thread, best of 9)", "",
             f"`{BATCHED}` is derived as one row (b is carried by every array and crossed by no sum); shape "
             f"{SHAPE}.", "", "| dtype | kernel | one-row ms | batched ms | batched / one-row |",
             "|---|---|---:|---:|---:|"]
    worst = 0.0
    with tempfile.TemporaryDirectory(prefix="softgrad-bench-") as folder:
        for dtype in ("float64", "float32"):
            builds = {}
            for label, spec in (("one-row", load_spec("softmax")), ("batched", parse_spec(BATCHED, name="batched"))):
                place = Path(folder) / f"{label}-{dtype}"
                place.mkdir()
                builds[label] = load_c(emit(derive_spec(spec), "c", ["forward", "vjp"], dtype), place)
            x = rng.normal(size=SHAPE).astype(dtype)
            g = rng.normal(size=SHAPE).astype(dtype)
            for kernel, arguments in (("forward", (x,)), ("vjp", (x, g))):
                one = getattr(builds["one-row"], f"softmax_{kernel}")
                batched = getattr(builds["batched"], f"batched_{kernel}")
                np.testing.assert_array_equal(one(*arguments), batched(*arguments))
                times = {"one-row": [], "batched": []}
                for _ in range(3):  # interleaved: the machine's speed drifts
                    times["one-row"].append(best(one, *arguments, repeats=3))
                    times["batched"].append(best(batched, *arguments, repeats=3))
                ones, batch = min(times["one-row"]), min(times["batched"])
                worst = max(worst, batch / ones)
                lines.append(f"| {dtype} | {kernel} | {ones * 1e3:.2f} | {batch * 1e3:.2f} | {batch / ones:.2f} |")
                print(lines[-1], flush=True)
    lines += ["", f"- within 1.1× of the one-row kernels: {'met' if worst <= 1.1 else 'NOT met'} (largest "
              f"{worst:.2f}×; the two builds' results are the same bits)"]
    document = "\n".join(lines) + "\n"
    print(document)
    replace_section(ROOT / "results.md", "batched", document)


if __name__ == "__main__":
    main()
