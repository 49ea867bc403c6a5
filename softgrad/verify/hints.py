"""Hints that save a reader time: what a wrong gradient looks like, in the mistakes real code makes.

A sign flip (−1×) and a reduction mismatch (the batch size, or its inverse) are the commonest ways a
gradient is wrong everywhere at once; both show as one ratio shared by every element that matters. Beside
the exact gradient, an array also shows a transposition, another input's gradient in its place, a
residual proportional to its input (weight decay), an index one off, or float32 rounding. Per-row code and
code over named arrays are read by the same detectors (array_hints); per-row code also at other readings
of its batch (mistake_hints).
"""

from __future__ import annotations

from collections.abc import Callable
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
    if exact is not None and np.isfinite(exact).all():
        hints += array_hints(signature.name_of("dx"), "x", analytic, {"x": exact}, {"row": rows, "i": size}, {"x": x},
                             dtype)
    return hints


def array_hints(returned: str, input_name: str, value: Any, exact: dict[str, Any], sizes: dict[str, int],
                inputs: dict[str, Any], dtype: str) -> list[str]:
    """What the returned gradient `value` of `input_name` looks like beside the exact gradients (`exact`, by
    input): a sign flip, a factor of a range's size (a reduction's 1/n), a scale applied twice (√n), a
    transposed square gradient, another input's gradient, a residual proportional to the input itself, an
    index one off, or float32 rounding; [] when it is none of these."""
    def close(a: Any, b: Any) -> bool:
        return bool(np.allclose(a, b, rtol=1e-6, atol=1e-9 * max(1.0, float(np.max(np.abs(b))))))

    value, reference = np.asarray(value, dtype=np.float64), np.asarray(exact[input_name], dtype=np.float64)
    if not np.any(reference):
        return []
    if close(value, reference):  # wrong by less than 1e-6 relative: float32 rounding is the one mistake that small
        return _float32_rounding(returned, value, reference, dtype)
    if close(value, -reference):
        return [f"{returned} is the exact gradient with its sign flipped"]
    if np.size(value) == 1:  # one number is a multiple of any other: no factor or residual says anything
        return []
    for range_name, size in sizes.items():
        if size > 1 and close(value, reference * size):
            return [f"{returned} is {size} times the exact gradient (n_{range_name}): looks like a mean/sum "
                    "reduction mismatch"]
        if size > 1 and close(value, reference / size):
            return [f"{returned} is the exact gradient divided by {size} (n_{range_name}): looks like a "
                    "mean/sum reduction mismatch"]
    if value.ndim == 2 and value.shape[0] == value.shape[1] and close(value, reference.T):
        return [f"{returned} is the exact gradient transposed"]
    hint = _misplaced(returned, input_name, value, exact, inputs, close)
    if hint:
        return [hint]
    factor = float(np.sum(value * reference) / np.sum(reference * reference))
    if factor > 0 and close(value, factor * reference):
        named = [f"√n_{r}" for r, size in sizes.items() if abs(factor - size ** 0.5) < 1e-6 * size or abs(
            1 / factor - size ** 0.5) < 1e-6 * size]
        return [f"{returned} is {factor:.6g} times the exact gradient" +
                (f" ({'1/' if factor < 1 else ''}{named[0]}: a scale applied twice or left out?)" if named
                 else " (a constant factor: a scale left out?)")]
    return _float32_rounding(returned, value, reference, dtype)


def _float32_rounding(returned: str, value: Any, reference: Any, dtype: str) -> list[str]:
    """Float64 inputs, a gradient every value of which is a float32 number, or off by float32's rounding."""
    if dtype != "float64" or not np.isfinite(reference).all():
        return []
    along_last = np.abs(reference).max(axis=-1, keepdims=True)
    relative = float((np.abs(value - reference) / (np.maximum(np.abs(reference), 1e-3 * along_last) + 1e-300)).max())
    single = bool((value.astype(np.float32).astype(np.float64) == value).all())
    if single or 1e-9 <= relative <= 1e-5:
        what = "every value is a float32 number" if single else f"{returned} is off by {relative:.2g} relative"
        return [f"{what} though float64 inputs were given: float32 rounding — something in the code is computed "
                "or accumulated in float32"]
    return []


def _misplaced(returned: str, input_name: str, value: Any, exact: dict[str, Any], arrays: dict[str, Any],
               close: Callable[[Any, Any], bool]) -> str:
    """Hints that need the other gradients or the inputs: a gradient that is another input's, a residual
    proportional to the input itself (weight decay: reg·W where the loss's ½·reg·ΣW² or reg·ΣW² says
    otherwise), or the exact gradient read one entry off along an axis (a wrong row or column index)."""
    reference = exact[input_name]
    for other, gradient in exact.items():
        same_shape = np.shape(gradient) == np.shape(value)
        if other != input_name and same_shape and np.any(gradient) and close(value, gradient):
            return f"{returned} is the exact gradient of {other}, not of {input_name}"
    weight = arrays.get(input_name)
    if weight is not None and np.shape(weight) == np.shape(value) and np.any(weight):
        residual = value - reference
        factor = float(np.sum(residual * weight) / np.sum(weight * weight))
        if abs(factor) > 1e-12 and close(residual, factor * np.asarray(weight)):
            return (f"{returned} differs from the exact gradient by {factor:.6g}·{input_name}: a weight-decay "
                    "term with its factor off (reg·W for a penalty of reg·ΣW², or ½ and 2 mixed up)?")
    for axis in range(np.ndim(value)):
        for shift in (1, -1):
            if np.shape(value)[axis] > 1 and close(value, np.roll(reference, shift, axis=axis)):
                return (f"{returned} is the exact gradient moved by {shift} along axis {axis}: an index that reads "
                        "the neighbouring entry (i ± 1)?")
    return ""
