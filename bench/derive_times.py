"""How long `softgrad derive` takes, end to end, per catalog entry (a benchmark, not a test).

Each entry is run as a fresh process (import, parse, derive, check, render), best of three, next to
the bare interpreter start-up measured in the same run. Targets: softmax < 2 s, every entry < 5 s; and
for the functions users bring (the performance issue's corpus, outside the catalog): every one < 2 s,
median < 1 s. Writes the "derive" section of bench/results.md.
"""

import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

from softgrad.derive.catalog import CATALOG

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
from sections import replace_section  # noqa: E402


def best_of(command: list[str], repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return min(times)


#: Functions outside the catalog that users bring (the corpus of the performance issue).
CORPUS = {
    "focal loss (γ = 2)": "p[i] = exp(z[i]) / sum(exp(z[k]), k)\nL = -sum(t[k]*(1-p[k])^2*log(p[k]), k)",
    "label smoothing": "p[i] = exp(z[i]) / sum(exp(z[k]), k)\nL = -sum((0.9*t[k] + 0.1*s)*log(p[k]), k)",
    "layer norm": "m = sum(x[k], k)/n\nv = sum((x[k] - m)^2, k)/n\ny[i] = (x[i] - m)/sqrt(v + 0.00001)",
    "RMSNorm": "y[i] = x[i]/sqrt(sum(x[k]^2, k)/n + 0.00001)",
    "spherical softmax": "y[i] = x[i]^2 / sum(x[k]^2, k)",
    "softmax entropy": "p[i] = exp(z[i]) / sum(exp(z[k]), k)\nH = -sum(p[k]*log(p[k]), k)",
    "BCE with logits": "L = sum(softplus(x[k]) - t[k]*x[k], k)",
    "GELU (tanh)": "y[i] = 0.5*x[i]*(1 + tanh(0.7978845608*(x[i] + 0.044715*x[i]^3)))",
    "Mish": "y[i] = x[i]*tanh(log(1 + exp(x[i])))",
}

#: Specs with several index ranges: the batched softmax and the docs examples (every step proved since the
#: one-pipeline issue). Reported as same-run ratios to `derive softmax` (target: within 3×).
SEVERAL_INDICES = {
    "batched softmax": "y[b, i] = exp(x[b, i]) / sum(exp(x[b, k]), k)",
    **{path.stem: path.read_text(encoding="utf-8")
       for path in sorted((ROOT.parent / "docs" / "examples").glob("*.spec"))},
}

#: Functions of real models (issue #34), as same-run ratios to a baseline: attention with batch and head indices
#: against the two-index attention example (target 1.5×: b and h are lifted, not enumerated), multi-head
#: attention with its four projections against `derive softmax` (target 5×).
ATTENTION = ("S[{p}i, j] = sum(Q[{p}i, e] * K[{p}j, e], e) / sqrt(size(e))\n"
             "P[{p}i, j] = exp(S[{p}i, j]) / sum(exp(S[{p}i, k]), k)\nO[{p}i, f] = sum(P[{p}i, j] * V[{p}j, f], j)")
MULTI_HEAD = """Q[b, h, i, e] = sum(X[b, i, d] * Wq[h, d, e], d)
K[b, h, j, e] = sum(X[b, j, d] * Wk[h, d, e], d)
V[b, h, j, f] = sum(X[b, j, d] * Wv[h, d, f], d)
S[b, h, i, j] = sum(Q[b, h, i, e] * K[b, h, j, e], e) / sqrt(size(e))
P[b, h, i, j] = exp(S[b, h, i, j]) / sum(exp(S[b, h, i, k]), k)
A[b, h, i, f] = sum(P[b, h, i, j] * V[b, h, j, f], j)
Y[b, i, c] = sum(A[b, h, i, f] * Wo[h, f, c], h, f)"""


def timed(command: list[str], repeats: int = 3) -> float | None:
    """best_of, or None where the command fails (derive stops at its time limit, 120 s)."""
    try:
        return best_of(command, repeats)
    except subprocess.CalledProcessError:
        return None


def paired(command: list[str], baseline: list[str], repeats: int = 5) -> tuple[float | None, float]:
    """Best times of a command and of its baseline, run in alternation: a ratio of the two is not skewed by
    the load of a shared machine drifting between one measurement and the other. None where the command fails."""
    times: list[float] = []
    baseline_times: list[float] = []
    for _ in range(repeats):
        baseline_times.append(best_of(baseline, 1))
        try:
            times.append(best_of(command, 1))
        except subprocess.CalledProcessError:
            return None, min(baseline_times)
    return min(times), min(baseline_times)


SOFTMAX = [sys.executable, "-m", "softgrad", "derive", "softmax"]


def model_lines() -> list[str]:
    """Derive times of functions of real models, as ratios to their baselines run in alternation with them."""
    two_index = [sys.executable, "-m", "softgrad", "derive", ATTENTION.format(p="")]
    rows = [("attention with batch and head indices, S[b, h, i, j]", ATTENTION.format(p="b, h, "), two_index,
             "the two-index attention example", 1.5),
            ("multi-head attention with its four projections", MULTI_HEAD, SOFTMAX, "`derive softmax`", 5.0)]
    lines = ["", "### Functions of real models (same-run ratios)", "",
             "| spec | seconds | baseline | ratio | target |", "|---|---:|---|---:|---:|"]
    for name, spec, baseline_command, baseline_name, target in rows:
        seconds, baseline = paired([sys.executable, "-m", "softgrad", "derive", spec], baseline_command,
                                   repeats=3 if "projections" in name else 5)
        if seconds is None:
            lines.append(f"| {name} | > 120 (stopped) | {baseline_name} {baseline:.2f} s | — | < {target:g}× OVER |")
        else:
            ratio = seconds / baseline
            lines.append(f"| {name} | {seconds:.2f} | {baseline_name} {baseline:.2f} s | {ratio:.2f}× | "
                         f"< {target:g}× {'ok' if ratio < target else 'OVER'} |")
        print(lines[-1], flush=True)
    return lines


def main() -> None:
    baseline = best_of([sys.executable, "-c", "pass"])
    # left as the CLI leaves (without the interpreter's teardown): the floor under every row below
    start_up = best_of([sys.executable, "-c", "import os, softgrad.cli; os._exit(0)"])
    lines = [f"## Derive times (`softgrad derive SPEC`, a fresh process each, best of 3; "
             f"a ratio: best of 5 runs alternating with its baseline; {platform.python_version()})",
             "", f"Python start-up alone {baseline:.2f} s; with softgrad (and SymPy) imported {start_up:.2f} s "
             "(the floor: SymPy's import).", "",
             "| entry | seconds | target |", "|---|---:|---:|"]
    worst, softmax_met = 0.0, False
    for name in CATALOG:
        seconds = best_of([sys.executable, "-m", "softgrad", "derive", name])
        target = 2.0 if name == "softmax" else 5.0
        worst = max(worst, seconds)
        softmax_met = softmax_met or (name == "softmax" and seconds < target)
        lines.append(f"| {name} | {seconds:.2f} | < {target:.0f} {'ok' if seconds < target else 'OVER'} |")
        print(lines[-1], flush=True)
    times = []
    for name, spec in CORPUS.items():
        seconds = best_of([sys.executable, "-m", "softgrad", "derive", spec])
        times.append(seconds)
        lines.append(f"| {name} (outside the catalog) | {seconds:.2f} | < 2 {'ok' if seconds < 2 else 'OVER'} |")
        print(lines[-1], flush=True)
    ratios = []
    for name, spec in SEVERAL_INDICES.items():
        seconds, softmax_here = paired([sys.executable, "-m", "softgrad", "derive", spec], SOFTMAX)
        assert seconds is not None, f"derive {name} failed"
        ratios.append(seconds / softmax_here)
        lines.append(f"| {name} (several indices, every step proved) | {seconds:.2f} | "
                     f"{ratios[-1]:.2f}× softmax ({softmax_here:.2f} s), < 3× {'ok' if ratios[-1] < 3 else 'OVER'} |")
        print(lines[-1], flush=True)
    models = model_lines()
    median = statistics.median(times)
    lines += ["", f"- softmax < 2 s: {'met' if softmax_met else 'NOT met'}; every catalog entry < 5 s: "
              f"{'met' if worst < 5 else 'NOT met'} (slowest {worst:.2f} s)",
              f"- every function outside the catalog < 2 s: {'met' if max(times) < 2 else 'NOT met'} "
              f"(slowest {max(times):.2f} s); median < 1 s: {'met' if median < 1 else 'NOT met'} ({median:.2f} s)",
              "- several-index specs within 3× of `derive softmax` (same run): "
              f"{'met' if max(ratios) < 3 else 'NOT met'} (largest {max(ratios):.2f}×)", *models]
    document = "\n".join(lines) + "\n"
    print(document)
    replace_section(ROOT / "results.md", "derive", document)


if __name__ == "__main__":
    main()
