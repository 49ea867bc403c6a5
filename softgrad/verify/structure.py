"""Cheap properties a correct gradient has: repeatable, linear in g, vjp(0) = 0, Σ dx = 0 if shift-invariant."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from softgrad.verify.cases import Case, as_given
from softgrad.verify.compare import FLOOR
from softgrad.verify.problem import Problem
from softgrad.verify.report import Report
from softgrad.verify.signatures import Arrays, Signature, call_under_test


def structural_checks(report: Report, function: Callable[..., Any], signature: Signature, problem: Problem,
                      case: Case, dtype: str, rng: np.random.Generator, layout: str = "classes-last") -> None:
    """Cheap properties: linear in g, vjp(0) = 0, repeatable, and Σ dx = 0 for a shift-invariant forward."""
    x, t = case.x, case.t
    arrays: Arrays = {"x": x, "t": t, "g": rng.normal(size=x.shape), "label": case.labels}
    if "y" in signature.takes:
        arrays["y"] = as_given(problem.forward(x, t), np.dtype(dtype))
    if "J" in signature.returns:
        return
    first = _gradient(function, signature, arrays, dtype, layout)
    again = _gradient(function, signature, arrays, dtype, layout)
    tolerance = FLOOR[dtype] * (np.abs(first).max() + 1e-300)
    report.checks.append(("repeatable", bool(np.abs(first - again).max() <= tolerance), ""))
    if "g" in signature.takes:
        rng_g = rng.normal(size=x.shape)
        other = dict(arrays, g=rng_g)
        combined = dict(arrays, g=2 * arrays["g"] - 3 * rng_g)
        second = _gradient(function, signature, other, dtype, layout)
        mixed = _gradient(function, signature, combined, dtype, layout)
        linear = np.abs(mixed - (2 * first - 3 * second)).max() <= 10 * FLOOR[dtype] * (np.abs(mixed).max() + 1e-300)
        report.checks.append(("linear in g", bool(linear), ""))
        zero = _gradient(function, signature, dict(arrays, g=np.zeros_like(x)), dtype, layout)
        report.checks.append(("vjp(0) = 0", bool(np.abs(zero).max() == 0), ""))
    if not problem.simplex and np.allclose(problem.forward(x + 1.25, t), problem.forward(x, t), rtol=1e-12,
                                           atol=1e-12):
        sums = np.abs(first.sum(-1)) / (np.abs(first).sum(-1) + 1e-300)
        report.checks.append(("sums to 0 (shift-invariant)", bool(sums.max() <= 100 * FLOOR[dtype]), ""))
    for name, ok, _ in report.checks:
        if not ok:
            report.fail(f"structural check failed: {name}")


def unrepeatable(call: Callable[[], dict[str, Any]], tolerance: float) -> str | None:
    """What differs between two calls of the code with the same inputs (None if nothing): a gradient that
    reads a random number generator or keeps state between calls cannot be right, whatever it returns,
    and saying so explains a failure better than its worst element."""
    first, again = call(), call()
    for name, value in first.items():
        before, after = np.asarray(value, dtype=np.float64), np.asarray(again[name], dtype=np.float64)
        if before.shape != after.shape:
            return f"{name} came back with shape {before.shape}, then {after.shape}"
        with np.errstate(invalid="ignore"):
            difference = np.abs(before - after)
        same_nan = np.isnan(before) & np.isnan(after)
        difference = np.where(same_nan, 0.0, difference)
        scale = float(np.nanmax(np.abs(before), initial=0.0)) + 1e-300
        if not np.all(difference <= tolerance * scale):
            worst = np.unravel_index(int(np.nanargmax(np.where(np.isnan(difference), np.inf, difference))),
                                     difference.shape) if difference.ndim else ()
            where = f"{name}[{', '.join(map(str, worst))}]" if worst else name
            return (f"the function is not repeatable: two calls with the same inputs returned {where} = "
                    f"{before[worst]:.6g}, then {after[worst]:.6g} (a random number generator, or state kept "
                    "between calls?)")
    return None


def _gradient(function: Callable[..., Any], signature: Signature, arrays: Arrays, dtype: str,
              layout: str) -> np.ndarray:
    return call_under_test(function, signature, arrays, dtype, layout)["dx"]
