"""How long `softgrad derive` takes, end to end, per catalog entry (a benchmark, not a test).

Each entry is run as a fresh process (import, parse, derive, check, render), best of three, next to
the bare interpreter start-up measured in the same run. Targets: softmax < 2 s, every entry < 5 s.
"""

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


if __name__ == "__main__":
    main()
