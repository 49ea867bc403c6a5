"""Cheap properties a correct gradient has: repeatable, linear in g, vjp(0) = 0, Σ dx = 0 if shift-invariant."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from softgrad.verify.cases import as_given
from softgrad.verify.compare import FLOOR
from softgrad.verify.problem import Problem
from softgrad.verify.report import Report
from softgrad.verify.signatures import Arrays, Signature, call_under_test


def structural_checks(report: Report, function: Callable[..., Any], signature: Signature, problem: Problem,
                      case: tuple[str, np.ndarray, np.ndarray | None], dtype: str, rng: np.random.Generator) -> None:
    """Cheap properties: linear in g, vjp(0) = 0, repeatable, and Σ dx = 0 for a shift-invariant forward."""
    _, x, t = case
    arrays: Arrays = {"x": x, "t": t, "g": rng.normal(size=x.shape)}
    if "y" in signature.takes:
        arrays["y"] = as_given(problem.forward(x, t), np.dtype(dtype))
    if "J" in signature.returns:
        return
    first = call_under_test(function, signature, arrays, dtype)[-1]
    again = call_under_test(function, signature, arrays, dtype)[-1]
    tolerance = FLOOR[dtype] * (np.abs(first).max() + 1e-300)
    report.checks.append(("repeatable", bool(np.abs(first - again).max() <= tolerance), ""))
    if "g" in signature.takes:
        rng_g = rng.normal(size=x.shape)
        other = dict(arrays, g=rng_g)
        combined = dict(arrays, g=2 * arrays["g"] - 3 * rng_g)
        second = call_under_test(function, signature, other, dtype)[-1]
        mixed = call_under_test(function, signature, combined, dtype)[-1]
        linear = np.abs(mixed - (2 * first - 3 * second)).max() <= 10 * FLOOR[dtype] * (np.abs(mixed).max() + 1e-300)
        report.checks.append(("linear in g", bool(linear), ""))
        zero = call_under_test(function, signature, dict(arrays, g=np.zeros_like(x)), dtype)[-1]
        report.checks.append(("vjp(0) = 0", bool(np.abs(zero).max() == 0), ""))
    shifted = problem.forward(x + 1.25, t)
    if np.allclose(shifted, problem.forward(x, t), rtol=1e-12, atol=1e-12):
        sums = np.abs(first.sum(-1)) / (np.abs(first).sum(-1) + 1e-300)
        report.checks.append(("sums to 0 (shift-invariant)", bool(sums.max() <= 100 * FLOOR[dtype]), ""))
    for name, ok, _ in report.checks:
        if not ok:
            report.fail(f"structural check failed: {name}")
