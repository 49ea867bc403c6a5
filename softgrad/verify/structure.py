"""Properties every right gradient has, which right values at a few inputs do not prove: the same outputs from
the same inputs, gradients linear in the upstream gradient and 0 where it is 0 (they are of ℓ = Σ g·y), and
Σ dx = 0 along a row for a forward unchanged by adding a constant to the row. One set for every spec: the
per-row verifier and the named-array verifier call them with their own names and tolerances."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from softgrad.verify.report import Report

#: The code under test, called with named arrays, returning its gradients by name.
Gradients = Callable[[Mapping[str, Any]], Mapping[str, Any]]


def structural_checks(report: Report, gradients: Gradients, arrays: Mapping[str, Any], upstream: str | None,
                      tolerance: float, rng: np.random.Generator, sums_to_zero: str | None = None) -> None:
    """Add each property to report.checks (and a failure for each that does not hold). upstream: the name of
    the upstream gradient among `arrays` (None where the code takes none); tolerance: relative, for the same
    outputs twice (ten times it, against the terms combined, for linearity); sums_to_zero: a gradient whose
    rows must add up to 0 because the forward is shift-invariant along them."""
    returned = gradients(arrays)
    varying = differing(returned, gradients(arrays), tolerance)
    report.checks.append(("repeatable", varying is None, varying or ""))
    first = _float(returned)
    if upstream is not None:
        other = rng.normal(size=np.shape(arrays[upstream]))
        second = _float(gradients({**arrays, upstream: other}))
        mixed = _float(gradients({**arrays, upstream: 2 * np.asarray(arrays[upstream]) - 3 * other}))

        def linear(name: str) -> bool:  # rounding scales with the terms combined, not with their difference
            terms = np.abs(mixed[name]) + 2 * np.abs(first[name]) + 3 * np.abs(second[name])
            error = np.abs(mixed[name] - (2 * first[name] - 3 * second[name]))
            return bool(np.max(error, initial=0.0) <= 10 * tolerance * (np.max(terms, initial=0.0) + 1e-300))

        report.checks.append((f"linear in {upstream}", all(linear(name) for name in mixed), ""))
        zero = gradients({**arrays, upstream: np.zeros(np.shape(arrays[upstream]))})
        report.checks.append((f"0 where {upstream} = 0", all(not np.any(value) for value in zero.values()), ""))
    if sums_to_zero is not None:
        rows = first[sums_to_zero]
        sums = np.abs(rows.sum(-1)) / (np.abs(rows).sum(-1) + 1e-300)
        report.checks.append(("sums to 0 (shift-invariant)", bool(np.max(sums, initial=0.0) <= 100 * tolerance), ""))
    for name, ok, detail in report.checks:
        if not ok:
            report.fail(detail or f"structural check failed: {name}")


def _float(named: Mapping[str, Any]) -> dict[str, np.ndarray]:
    return {name: np.asarray(value, dtype=np.float64) for name, value in named.items()}


def unrepeatable(call: Callable[[], Mapping[str, Any]], tolerance: float) -> str | None:
    """What differs between two calls of the code with the same inputs (None if nothing): a gradient that
    reads a random number generator or keeps state between calls cannot be right, whatever it returns,
    and saying so explains a failure better than its worst element."""
    return differing(call(), call(), tolerance)


def differing(first: Mapping[str, Any], again: Mapping[str, Any], tolerance: float) -> str | None:
    """What differs between two results of the same call (None if nothing), relative to each output's largest
    entry: a line naming the first output and entry that does."""
    for name, value in first.items():
        before, after = np.asarray(value, dtype=np.float64), np.asarray(again[name], dtype=np.float64)
        if before.shape != after.shape:
            return f"{name} came back with shape {before.shape}, then {after.shape}"
        with np.errstate(invalid="ignore"):
            difference = np.abs(before - after)
        same = (np.isnan(before) & np.isnan(after)) | (before == after)  # inf twice is the same value
        difference = np.where(same, 0.0, difference)
        scale = float(np.nanmax(np.abs(before), initial=0.0)) + 1e-300
        if not np.all(difference <= tolerance * scale):
            worst = np.unravel_index(int(np.nanargmax(np.where(np.isnan(difference), np.inf, difference))),
                                     difference.shape) if difference.ndim else ()
            where = f"{name}[{', '.join(map(str, worst))}]" if worst else name
            return (f"the function is not repeatable: two calls with the same inputs returned {where} = "
                    f"{before[worst]:.6g}, then {after[worst]:.6g} (a random number generator, or state kept "
                    "between calls?)")
    return None
