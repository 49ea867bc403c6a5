"""Finding where a gradient is wrong: the worst element, and bisection of a projected mismatch."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from softgrad.verify import differences
from softgrad.verify.report import Report, Worst
from softgrad.verify.signatures import Arrays


def where(position: tuple[Any, ...]) -> str:
    names = ["row", "i", "j"]
    return ", ".join(f"{n} {int(p)}" for n, p in zip(names, position))


def record_worst(report: Report, array: str, position: tuple[Any, ...], analytic: np.ndarray, numeric: np.ndarray,
                 exact: np.ndarray | None, tolerance: np.ndarray, how: str, case: str, arrays: Arrays,
                 kinked: bool = False) -> None:
    """The first mismatch found is the report's worst element (row, i[, j] of per-row code's `array`); kinked:
    the comparison was with finite differences of a function that may have kinks, so say when the difference
    crossed a change of the row's argmax."""
    if report.worst is not None:
        return
    index = tuple(int(p) for p in position)
    row, column = index[0], index[-1]  # a Jacobian's element (row, i, j) moves with x_j
    x = arrays["x"][row]
    step = differences.DEFAULT_STEP
    plus, minus = x.copy(), x.copy()
    plus[column] += step
    minus[column] -= step
    report.worst = Worst(array, index, float(analytic[position]), float(numeric[position]),
                         None if exact is None else float(exact[position]), float(tolerance[position]), how, case,
                         kinked and bool(np.argmax(plus) != np.argmax(minus)))


def bisect(signed_mismatch: Callable[[np.ndarray], float], size: int) -> int:
    """The entry of one row that carries a mismatch, by halving: `signed_mismatch(mask)` is the signed
    mismatch of the comparison restricted to the masked entries. Both sides of the comparison are linear
    in the direction, so the other half's mismatch is the whole's minus this half's: one evaluation per
    level."""
    candidates = np.arange(size)
    whole = signed_mismatch(np.ones(size, dtype=bool))
    while len(candidates) > 1:
        first, second = np.array_split(candidates, 2)
        mask = np.zeros(size, dtype=bool)
        mask[first] = True
        in_first = signed_mismatch(mask)
        in_second = whole - in_first
        if abs(in_first) >= abs(in_second):
            candidates, whole = first, in_first
        else:
            candidates, whole = second, in_second
    return int(candidates[0])
