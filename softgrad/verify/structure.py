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


def _gradient(function: Callable[..., Any], signature: Signature, arrays: Arrays, dtype: str,
              layout: str) -> np.ndarray:
    return call_under_test(function, signature, arrays, dtype, layout)["dx"]
