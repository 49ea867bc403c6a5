"""Check a gradient against finite differences of the forward function and, where known, the exact result.

The pieces live apart: the inputs (cases), the comparisons (compare: full Jacobian for small n, random
projections above), where a mismatch is (localise), and cheap structural properties (structure). This
module runs them in order and reports progress through a callback.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from softgrad.errors import SoftgradError
from softgrad.verify import differences
from softgrad.verify.cases import as_given, make_cases
from softgrad.verify.compare import EXACT_FLOOR, compare_full, compare_projections, row_scale
from softgrad.verify.problem import Problem
from softgrad.verify.report import Report
from softgrad.verify.signatures import Signature, WrongOutput, call_under_test
from softgrad.verify.structure import structural_checks

FULL_JACOBIAN_UP_TO = 64

#: progress(done, total, what): called before each input case is checked.
Progress = Callable[[int, int, str], None]


def verify(
    function: Callable[..., Any],
    signature: Signature,
    problem: Problem,
    *,
    label: str = "function",
    dtype: str = "float64",
    size: int = 7,
    rows: int = 4,
    seed: int = 0,
    reduction: str = "sum",
    against: str = "finite differences",
    mode: str = "auto",
    progress: Progress | None = None,
) -> Report:
    """Check `function` (with `signature`) against `problem`; returns the report (never raises on FAIL).

    mode: "full" (every element by finite differences), "projections" (random projections and
    bisection), or "auto" (full up to n = 64). progress: told of each input case as it starts.
    """
    rng = np.random.default_rng(seed)
    if mode == "auto":
        mode = "full" if size <= FULL_JACOBIAN_UP_TO or signature.returns == ("J",) else "projections"
    mode = {"full": "full Jacobian", "projections": "random projections"}[mode]
    report = Report(label, signature.text, against, dtype, mode, seed, differences.DEFAULT_STEP, 0)
    made = make_cases(problem, rows, size, rng)  # projections too: extreme logits, near ties, every target kind
    representable = np.dtype(dtype)
    cases: list[tuple[str, Any, Any]] = [(case, as_given(x, representable), as_given(t, representable))
                                          for case, x, t in made]
    for number, (case, x, t) in enumerate(cases):
        if progress is not None:
            progress(number, len(cases), case)
        upstream = as_given(rng.normal(size=x.shape), representable)
        arrays = {"x": x, "t": t, "g": upstream}
        if "y" in signature.takes:
            arrays["y"] = as_given(problem.forward(x, t), representable)
        try:
            outputs = dict(zip(signature.returns, call_under_test(function, signature, arrays, dtype)))
        except WrongOutput as wrong:
            report.fail(f"{wrong} (inputs: {case})")
            break
        if reduction == "mean" and "dx" in outputs:
            outputs["dx"] = outputs["dx"] * rows
        first = number == 0
        if mode == "full Jacobian" and (first or size <= FULL_JACOBIAN_UP_TO or "J" in outputs):
            compare_full(report, signature, problem, case, arrays, outputs, dtype)
        else:
            compare_projections(report, signature, problem, case, arrays, outputs, dtype, rng)
        if "loss" in outputs:
            loss = problem.forward(x, t) * (1 / rows if reduction == "mean" else 1)
            error = np.abs(outputs["loss"] - loss) / row_scale(loss[:, None])
            if not (error <= EXACT_FLOOR[dtype] * 100).all():  # NaN-safe: a NaN error is a failure
                report.fail(f"loss differs from the forward function by {error.max():.3g} (relative) for {case}")
        if not report.passed:
            break
    if progress is not None:
        progress(len(cases), len(cases), "done")
    if report.passed:
        try:
            structural_checks(report, function, signature, problem, cases[0], dtype, rng)
        except WrongOutput as wrong:
            report.fail(f"{wrong} (inputs: {cases[0][0]}, structural checks)")
    if report.elements == 0 and report.passed:  # never a pass that compared nothing
        raise SoftgradError("no element was compared: nothing was checked")
    return report
