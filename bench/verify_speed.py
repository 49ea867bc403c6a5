"""How fast `verify` is (a benchmark, not a test): targets from the verification issue.

- random projections at n = 1e5 localize a single wrong element: < 1 s
- projections at n = 1e5 keep every input case full mode has (for cross-entropy: six logits cases,
  extremes included, times three target kinds): < 1 s
- the full-Jacobian check at n = 1000: < 0.5 s
- code over named arrays: softmax regression's loss and gradients at b = 128, c = 1000, d = 256 (dW of 256,000
  entries) by projections, against every entry's own central difference at a size where that still runs
Each figure is the best of three, beside the time of one call of the function under test (the
baseline of the same run: the machine is shared and noisy).
"""

import time
from pathlib import Path

import numpy as np

from softgrad.verify import check_gradient

REGRESSION = Path(__file__).resolve().parent.parent / "docs" / "examples" / "softmax-regression.spec"


def softmax_regression(X, W, bias, T):
    """Soft targets, a batch-mean cross-entropy: (loss, dW, dbias), as course solutions write it."""
    z = X @ W.T + bias
    z = z - z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    dz = (np.exp(log_p) - T) / X.shape[0]
    return -np.sum(T * log_p) / X.shape[0], dz.T @ X, dz.sum(axis=0)


def softmax_vjp(x, g):
    e = np.exp(x - x.max(-1, keepdims=True))
    y = e / e.sum(-1, keepdims=True)
    return y * (g - (g * y).sum(-1, keepdims=True))


def cross_entropy_gradient(z, t):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True) * t.sum(-1, keepdims=True) - t


def one_wrong_element(x, g):
    dx = softmax_vjp(x, g)
    dx[1, 76_543 % x.shape[1]] += 1e-3 * np.abs(dx[1]).max()
    return dx


def best_of(action, repeats=3):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        result = action()
        times.append(time.perf_counter() - start)
    return min(times), result


def main() -> None:
    check_gradient(softmax_vjp, "softmax", "x,g->dx", n=8)  # derive and build the reference once
    rows = 4
    x = np.random.default_rng(0).normal(size=(rows, 100_000))
    call, _ = best_of(lambda: softmax_vjp(x, x))
    seconds, report = best_of(lambda: check_gradient(one_wrong_element, "softmax", "x,g->dx", n=100_000,
                                                     batch=rows, mode="projections"))
    found = report.worst.index if report.worst else None
    print(f"projections, n = 1e5, {rows} rows, one wrong element: {seconds:.3f} s (target < 1 s); "
          f"found {found}; one call of the function: {call * 1e3:.1f} ms")
    check_gradient(cross_entropy_gradient, "cross-entropy", "z,t->dz", n=8)
    seconds, report = best_of(lambda: check_gradient(cross_entropy_gradient, "cross-entropy", "z,t->dz",
                                                     n=100_000, batch=rows, mode="projections"))
    print(f"projections, n = 1e5, {rows} rows, cross-entropy, all {len(report.cases_checked)} input cases: "
          f"{seconds:.3f} s (target < 1 s); {'PASS' if report.passed else 'FAIL'}")
    x = np.random.default_rng(1).normal(size=(rows, 1000))
    call, _ = best_of(lambda: softmax_vjp(x, x))
    seconds, report = best_of(lambda: check_gradient(softmax_vjp, "softmax", "x,g->dx", n=1000, batch=rows,
                                                     mode="full"))
    print(f"full Jacobian, n = 1000, {rows} rows, correct gradient: {seconds:.3f} s (target < 0.5 s); "
          f"{'PASS' if report.passed else 'FAIL'}; one call of the function: {call * 1e3:.2f} ms")
    signature = "X,W,bias,T->loss,dW,dbias"
    for sizes, mode in (("b=128,c=1000,d=256", "auto"), ("b=32,c=100,d=64", "projections"),
                        ("b=32,c=100,d=64", "full")):
        seconds, report = best_of(lambda: check_gradient(softmax_regression, str(REGRESSION), signature, sizes=sizes,
                                                         mode=mode))
        print(f"named arrays, softmax regression {sizes}, {report.mode}: {seconds:.3f} s, "
              f"{report.elements} elements; {'PASS' if report.passed else 'FAIL'}")


if __name__ == "__main__":
    main()
