"""Generated NumPy for specs with several indices against the NumPy a person would write by hand.

Attention backward (Q, K, V, dO → dQ, dK, dV, the forward recomputed as a hand-written backward does) at
(seq 1024, d 64) and (seq 4096, d 128), and softmax regression's dW (forward and dW = (P − T)ᵀX/B) at
(B 4096, D 1024, C 1000), in float32 and float64. One process, the two implementations interleaved
(A B A B …), the median of the rounds; the ratio is generated time / hand-written time (< 1: faster).
Targets (issue 13): attention ≤ 1.3×, softmax-regression dW ≤ 1.2×. The table and the targets go into
bench/results.md (its "tensors" section; bench/kernels.py keeps it).

    python bench/tensors.py [--quick]      # --quick: small shapes, few rounds, nothing written
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from softgrad.codegen.build import import_path
from softgrad.codegen.emit import emit
from softgrad.derive import derive_spec, load_spec

ROOT = Path(__file__).resolve().parent
EXAMPLES = ROOT.parent / "docs" / "examples"
sys.path.insert(0, str(ROOT))
from sections import replace_section  # noqa: E402


def generated(name: str, wrt: str | None, folder: Path):
    derivation = derive_spec(load_spec(str(EXAMPLES / f"{name}.spec")), wrt=wrt)
    ((file_name, text),) = emit(derivation, "numpy").items()
    (folder / file_name).write_text(text)
    return import_path(folder / file_name)


def attention_by_hand(Q, K, V, dO):
    scale = Q.dtype.type(1 / np.sqrt(Q.shape[1]))  # in the inputs' dtype: float32 stays float32
    S = (Q @ K.T) * scale
    S -= S.max(axis=1, keepdims=True)
    P = np.exp(S)
    P /= P.sum(axis=1, keepdims=True)
    out = P @ V
    dV = P.T @ dO
    dP = dO @ V.T
    dS = P * (dP - (dO * out).sum(axis=1, keepdims=True))
    return (dS @ K) * scale, (dS.T @ Q) * scale, dV


def softmax_regression_by_hand(W, X, bias, T):
    z = X @ W.T + bias
    z -= z.max(axis=1, keepdims=True)
    P = np.exp(z)
    P /= P.sum(axis=1, keepdims=True)
    return (P - T).T @ X / X.dtype.type(X.shape[0])


def timed(function, arguments, rounds: int) -> list[float]:
    function(*arguments)  # warm up (and allocate)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        function(*arguments)
        times.append(time.perf_counter() - start)
    return times


def compare(first, second, arguments, rounds: int) -> tuple[float, float]:
    """Medians of interleaved rounds, in ms."""
    a, b = [], []
    for _ in range(rounds):
        a += timed(first, arguments, 1)
        b += timed(second, arguments, 1)
    return statistics.median(a) * 1e3, statistics.median(b) * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    arguments = parser.parse_args()
    rounds = 3 if arguments.quick else 9
    rng = np.random.default_rng(0)
    rows = []
    targets = []
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary)
        attention = generated("attention", None, folder)
        regression = generated("softmax-regression", "W", folder)
        shapes = [(256, 32)] if arguments.quick else [(1024, 64), (4096, 128)]
        for dtype in ("float64", "float32"):
            for seq, d in shapes:
                Q, K, V, dO = (rng.normal(size=(seq, d)).astype(dtype) for _ in range(4))
                ours, hand = compare(attention.gradients, attention_by_hand, (Q, K, V, dO), rounds)
                ratio = ours / hand
                rows.append(f"| attention backward | (seq {seq}, d {d}) | {dtype} | {ours:.1f} | {hand:.1f} | "
                            f"{ratio:.2f} |")
                targets.append(("attention ≤ 1.3×", f"(seq {seq}, d {d}) {dtype}", ratio, 1.3))
            B, D, C = (256, 128, 100) if arguments.quick else (4096, 1024, 1000)
            X = rng.normal(size=(B, D)).astype(dtype)
            W = (rng.normal(size=(C, D)) / np.sqrt(D)).astype(dtype)
            bias = rng.normal(size=C).astype(dtype)
            T = rng.random((B, C)).astype(dtype)
            T /= T.sum(axis=1, keepdims=True)
            ours, hand = compare(lambda *a: regression.gradients(*a)[1], softmax_regression_by_hand, (W, X, bias, T),
                                 rounds)
            ratio = ours / hand
            rows.append(f"| softmax regression: loss and dW | (B {B}, D {D}, C {C}) | {dtype} | {ours:.1f} | "
                        f"{hand:.1f} | {ratio:.2f} |")
            targets.append(("softmax regression dW ≤ 1.2×", f"(B {B}, D {D}, C {C}) {dtype}", ratio, 1.2))
    lines = ["## Specs with several indices: generated NumPy against NumPy by hand", "",
             "`python bench/tensors.py` (NumPy's BLAS with its default threads on this 2-core machine; medians of "
             f"{rounds} interleaved rounds; ratio = generated / by hand, < 1 is faster). The generated attention "
             "backward recomputes the forward as the hand-written one does; softmax regression's generated "
             "gradients() also returns the loss.", "",
             "| function | shape | dtype | generated ms | by hand ms | ratio |", "|---|---|---|---:|---:|---:|", *rows,
             "", "| target | where | ratio | met |", "|---|---|---:|---|"]
    lines += [f"| {name} | {where} | {ratio:.2f} | {'met' if ratio <= limit else 'NOT MET'} |"
              for name, where, ratio, limit in targets]
    document = "\n".join(lines) + "\n"
    print(document)
    if not arguments.quick:
        replace_section(ROOT / "results.md", "tensors", document)


if __name__ == "__main__":
    main()
