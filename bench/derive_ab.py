"""Derive times of the corpus for another revision and this working tree, side by side (a benchmark, not a test).

    python bench/derive_ab.py REV [--rounds 3] [--only NAME]

Each spec is derived in a fresh process (`python -m softgrad derive SPEC`), the two trees interleaved and
their order alternated round by round, best of the rounds. This machine is shared and its speed drifts by
a third within an hour: the ratio of two trees measured in the same run is what this is for. REV is checked
out into a temporary git worktree, removed afterwards. Prints a table; writes nothing.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT))
from derive_times import CORPUS, SEVERAL_INDICES  # noqa: E402


def derive_seconds(tree: Path, spec: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "softgrad", "derive", spec], cwd=tree, check=True, capture_output=True,
                   env=dict(os.environ, PYTHONPATH=str(tree)))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("revision", help="the commit to compare this working tree with")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--only", help="only the corpus functions whose name contains this")
    arguments = parser.parse_args()
    specs = {"softmax": "softmax", **CORPUS, **SEVERAL_INDICES}
    names = [name for name in specs if not arguments.only or arguments.only in name]
    with tempfile.TemporaryDirectory(prefix="softgrad-ab-") as folder:
        other = Path(folder) / "tree"
        subprocess.run(["git", "worktree", "add", "--detach", "-q", str(other), arguments.revision],
                       cwd=ROOT.parent, check=True)
        try:
            trees = {arguments.revision: other, "this tree": ROOT.parent}
            best = {(label, name): float("inf") for label in trees for name in names}
            for round_number in range(arguments.rounds):
                order = list(trees.items()) if round_number % 2 == 0 else list(reversed(trees.items()))
                for name in names:
                    for label, tree in order:
                        best[label, name] = min(best[label, name], derive_seconds(tree, specs[name]))
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(other)], cwd=ROOT.parent, check=False)
    labels = list(trees)
    print(f"| function | {labels[0]} s | {labels[1]} s | ratio |\n|---|---:|---:|---:|")
    for name in names:
        old, new = best[labels[0], name], best[labels[1], name]
        print(f"| {name} | {old:.2f} | {new:.2f} | {new / old:.2f} |")
    medians = [statistics.median(best[label, name] for name in names) for label in labels]
    print(f"\nmedian {medians[0]:.2f} s → {medians[1]:.2f} s; slowest {max(best[labels[0], n] for n in names):.2f} s → "
          f"{max(best[labels[1], n] for n in names):.2f} s (best of {arguments.rounds}, fresh process each)")


if __name__ == "__main__":
    main()
