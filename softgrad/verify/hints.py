"""Hints that save a reader time: a wrong gradient that is a constant multiple of the right one says so.

A sign flip (−1×) and a reduction mismatch (the batch size, or its inverse) are the commonest ways a
gradient is wrong everywhere at once; both show as one ratio shared by every element that matters.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from softgrad.verify.problem import Problem, exact_gradient
from softgrad.verify.signatures import Arrays, Signature

#: How closely the ratios must agree to count as one constant factor.
AGREEMENT = 1e-6


def constant_factor_hints(analytic: np.ndarray, reference: np.ndarray, tolerance: np.ndarray, rows: int,
                          role: str = "dx") -> list[str]:
    """What a constant ratio analytic / reference (over the elements the reference is clearly non-zero
    at) suggests, or [] when there is no such ratio."""
    significant = np.abs(reference) > np.maximum(tolerance, 1e-300) * 10
    if significant.sum() < 2:
        return []
    ratios = analytic[significant] / reference[significant]
    factor = float(np.median(ratios))
    if not np.isfinite(factor) or not (np.abs(ratios - factor) <= AGREEMENT * max(abs(factor), 1.0)).all():
        return []
    if abs(factor - 1) <= AGREEMENT:
        return []
    if factor == 0:
        return [f"{role} is 0 wherever the reference is not: the result vanished (an overflow or underflow "
                "replaced by 0, e.g. by nan_to_num or a clip?)"]
    if abs(factor + 1) <= AGREEMENT:
        return [f"{role} is the negative of the reference everywhere: a sign flip?"]
    if rows > 1 and abs(factor * rows - 1) <= AGREEMENT:
        return [f"{role} is 1/{rows} of the reference everywhere: it looks like the gradient of a mean over the "
                f"{rows} rows (a mean/sum reduction mismatch; --reduction mean says the code divides by the rows)"]
    if rows > 1 and abs(factor - rows) <= AGREEMENT * rows:
        return [f"{role} is {rows}× the reference everywhere: it looks like the gradient of a sum where a mean was "
                f"declared (a mean/sum reduction mismatch; drop --reduction mean)"]
    return [f"{role} is {factor:.6g}× the reference everywhere: a constant factor is missing or extra"]


def mistake_hints(problem: Problem, signature: Signature, arrays: Arrays, outputs: dict[str, np.ndarray],
                  dtype: str, layout: str = "classes-last") -> list[str]:
    """What a wrong dx looks like, tried in turn against the exact result at other readings of the batch:
    the whole batch as one row (a softmax over everything), rows and classes swapped (the class axis
    first), and the rounding of float32 where float64 was asked for."""
    analytic = outputs.get("dx")
    if analytic is None or not problem.exact or "y" in signature.takes:
        return []
    rows, size = analytic.shape
    x, t, g = arrays["x"], arrays["t"], arrays["g"]

    def matches(candidate: np.ndarray | None) -> bool:
        if candidate is None or candidate.shape != analytic.shape or not np.isfinite(candidate).all():
            return False
        scale = np.abs(candidate).max() + 1e-300
        return bool(np.abs(analytic - candidate).max() <= 1e-6 * scale)

    def regrouped(shape: tuple[int, int], transpose: bool) -> np.ndarray | None:
        def arrange(a: Any) -> Any:
            return None if a is None else (a.T if transpose else a).reshape(shape)

        try:
            result = exact_gradient(signature, problem, {"x": arrange(x), "t": arrange(t), "g": arrange(g)})
        except Exception:  # a reading the reference kernels cannot take is simply not this mistake
            return None
        dx = result.get("dx")
        return None if dx is None else (dx.T if transpose else dx.reshape(rows, size))

    hints = []
    if rows > 1 and matches(regrouped((1, rows * size), False)):
        hints.append("dx is the gradient with the whole batch taken as one row: the code's softmax (or its sums) "
                     "runs over every entry of the batch instead of each row (axis=None where axis=-1 was meant?)")
    elif rows > 1 and size > 1 and matches(regrouped((size, rows), True)):
        other = "classes-first" if layout == "classes-last" else "classes-last"
        hints.append(f"dx is the gradient with rows and classes swapped: the code reduces over the other axis, as "
                     f"if the class axis came {other.split('-')[1]} (--layout {other} if it does; else its reductions "
                     "run along the wrong axis)")
    exact = exact_gradient(signature, problem, arrays).get("dx")
    if dtype == "float64" and exact is not None and np.isfinite(exact).all():
        row = np.abs(exact).max(axis=-1, keepdims=True)
        relative = float((np.abs(analytic - exact) / (np.maximum(np.abs(exact), 1e-3 * row) + 1e-300)).max())
        single = bool((analytic.astype(np.float32).astype(np.float64) == analytic).all())
        if single or 1e-9 <= relative <= 1e-5:
            what = "every value is a float32 number" if single else f"dx is off by {relative:.2g} relative"
            hints.append(f"{what} though float64 inputs were given: float32 rounding — something in the code is "
                         "computed or accumulated in float32")
    return hints
