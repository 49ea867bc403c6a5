"""How long `softgrad derive` takes, end to end, per catalog entry (a benchmark, not a test).

Each entry is run as a fresh process (import, parse, derive, check, render), best of three, next to
the bare interpreter start-up measured in the same run. Targets: softmax < 2 s, every entry < 5 s; and
for the functions users bring (the performance issue's corpus, outside the catalog): every one < 2 s,
median < 1 s.
"""

import statistics
import subprocess
import sys
import time

from softgrad.derive.catalog import CATALOG


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


def main() -> None:
    baseline = best_of([sys.executable, "-c", "pass"])
    print(f"{'entry':24} {'seconds':>8} {'target':>7}  (python start-up alone: {baseline:.3f} s)")
    worst = 0.0
    for name in CATALOG:
        seconds = best_of([sys.executable, "-m", "softgrad", "derive", name])
        target = 2.0 if name == "softmax" else 5.0
        worst = max(worst, seconds)
        print(f"{name:24} {seconds:8.2f} {target:7.1f}  {'ok' if seconds < target else 'OVER'}")
    print(f"slowest entry: {worst:.2f} s")
    print()
    print(f"{'outside the catalog':24} {'seconds':>8} {'target':>7}")
    times = []
    for name, spec in CORPUS.items():
        seconds = best_of([sys.executable, "-m", "softgrad", "derive", spec])
        times.append(seconds)
        print(f"{name:24} {seconds:8.2f} {2.0:7.1f}  {'ok' if seconds < 2 else 'OVER'}")
    median = statistics.median(times)
    print(f"slowest {max(times):.2f} s (target < 2 s: {'met' if max(times) < 2 else 'not met'}); "
          f"median {median:.2f} s (target < 1 s: {'met' if median < 1 else 'not met'})")


if __name__ == "__main__":
    main()
