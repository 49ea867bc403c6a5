"""Check a gradient against finite differences of the forward function and, where known, the exact result.

The pieces live apart: the inputs (cases), the comparisons (compare: full Jacobian for small n, random
projections above), where a mismatch is (localise), and cheap structural properties (structure). This
module runs them in order and reports progress through a callback.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from softgrad import tolerances
from softgrad.errors import SoftgradError
from softgrad.verify import differences
from softgrad.verify.cases import SMALLER, Case, as_given, make_cases, target_kinds
from softgrad.verify.compare import EXACT_FLOOR, compare_full, compare_projections
from softgrad.verify.hints import mistake_hints
from softgrad.verify.problem import Problem, exact_gradient
from softgrad.verify.report import Report
from softgrad.verify.signatures import Signature, WrongOutput, call_under_test
from softgrad.verify.structure import structural_checks, unrepeatable

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
    targets: str | None = None,
    layout: str = "classes-last",
    extremes: bool = True,
) -> Report:
    """Check `function` (with `signature`) against `problem`; returns the report (never raises on FAIL).

    mode: "full" (every element by finite differences), "projections" (random projections and
    bisection), or "auto" (full up to n = 64). reduction: how the code reduces a loss over the rows
    (sum, mean, or none: one loss per row). targets: the kind the code takes (None: every kind the spec
    admits, or labels if the signature takes them). layout: where the code puts the class axis.
    extremes: False skips the inputs of order 1000. progress: told of each input case as it starts.
    """
    rng = np.random.default_rng(seed)
    if mode == "auto":
        mode = "full" if size <= FULL_JACOBIAN_UP_TO or signature.returns == ("J",) else "projections"
    mode = {"full": "full Jacobian", "projections": "random projections"}[mode]
    kinds, why = target_kinds(problem, targets, "label" in signature.takes)
    report = Report(label, signature.text, against, dtype, mode, seed, differences.DEFAULT_STEP,
                    sizes={"row": rows, "i": size}, conventions=_conventions(why, reduction, layout, extremes, problem))
    representable = np.dtype(dtype)
    cases = [Case(case.name, case.x.astype(representable).astype(np.float64), as_given(case.t, representable),
                  case.labels, case.extreme)  # projections too: extreme logits, near ties, every target kind
             for case in make_cases(problem, rows, size, rng, kinds, extremes)]
    report.cases_checked = [case.name for case in cases]
    checked: list[Case] = []  # each case as checked: its rows within the dtype's range, drawn smaller if need be
    for number, case in enumerate(cases):
        if progress is not None:
            progress(number, len(cases), case.name)
        failures_before, bad_before = len(report.failures), report.bad_elements
        _spec_has_a_value(problem, case.x, case.t)
        upstream = np.asarray(as_given(rng.normal(size=case.x.shape), representable))
        within, upstream, note = _within_range(case, upstream, problem, signature, dtype)
        if note:
            report.convention(note)
        if within is None:
            report.cases_checked.remove(case.name)
            continue
        checked.append(within)
        x, t = within.x, within.t
        arrays = {"x": x, "t": t, "g": upstream, "label": within.labels}
        if "y" in signature.takes:
            arrays["y"] = as_given(problem.forward(x, t), representable)
        try:
            outputs = call_under_test(function, signature, arrays, dtype, layout)
        except WrongOutput as wrong:
            report.fail(f"{wrong} (inputs: {case.name})")
            bad = x.size if wrong.bad is None else min(wrong.bad, x.size)
            report.case_counts.append((case.name, bad, x.size))
            report.bad_elements += bad
            report.elements += x.size
            continue
        if reduction == "mean" and "dx" in outputs:
            outputs["dx"] = outputs["dx"] * len(x)
        first = number == 0
        if mode == "full Jacobian" and (first or size <= FULL_JACOBIAN_UP_TO or "J" in outputs):
            compare_full(report, signature, problem, case.name, arrays, outputs, dtype)
        else:
            # with a spec every element is also compared with the exact result, so after the first case one
            # random projection per case is the independent check against the forward; without one, three
            compare_projections(report, signature, problem, case.name, arrays, outputs, dtype, rng,
                                probes=3 if first or not problem.exact else 1)
        if "loss" in outputs:
            compare_loss(report, outputs["loss"], problem.forward(x, t), reduction, dtype, case.name)
        if len(report.failures) > failures_before:
            report.case_counts.append((case.name, report.bad_elements - bad_before, outputs.get("dx", x).size))
            if not report.hints:
                report.hint(*mistake_hints(problem, signature, arrays, outputs, dtype, layout))
    if progress is not None:
        progress(len(cases), len(cases), "done")
    if report.passed and "J" not in signature.returns and checked:
        try:
            _structure(report, function, signature, problem, checked[0], dtype, rng, layout)
        except WrongOutput as wrong:
            report.fail(f"{wrong} (inputs: {checked[0].name}, structural checks)")
    elif "J" not in signature.returns and checked:  # a failure may have a cause that no element shows: say it first
        probe = checked[0]
        again = {"x": probe.x, "t": probe.t, "g": as_given(rng.normal(size=probe.x.shape), representable),
                 "label": probe.labels}
        if "y" in signature.takes:
            again["y"] = as_given(problem.forward(probe.x, probe.t), representable)
        try:
            varying = unrepeatable(lambda: call_under_test(function, signature, again, dtype, layout),
                                   tolerances.USER_CODE_STRUCTURE[dtype])
        except WrongOutput:
            varying = None
        if varying:
            report.failures.insert(0, varying)
    if report.elements == 0 and report.passed:  # never a pass that compared nothing
        raise SoftgradError("no element was compared: nothing was checked")
    return report


def _structure(report: Report, function: Callable[..., Any], signature: Signature, problem: Problem, case: Case,
               dtype: str, rng: np.random.Generator, layout: str) -> None:
    """The structural checks every gradient gets, at the first input case: g is the upstream gradient, and dx
    must add up to 0 along a row where the forward does not change when a constant is added to the row."""
    x, t = case.x, case.t
    arrays = {"x": x, "t": t, "g": rng.normal(size=x.shape), "label": case.labels}
    if "y" in signature.takes:
        arrays["y"] = as_given(problem.forward(x, t), np.dtype(dtype))
    invariant = not problem.simplex and np.allclose(problem.forward(x + 1.25, t), problem.forward(x, t), rtol=1e-12,
                                                    atol=1e-12)

    def gradient(given: Any) -> dict[str, Any]:
        return {"dx": call_under_test(function, signature, dict(given), dtype, layout)["dx"]}

    structural_checks(report, gradient, arrays, "g" if "g" in signature.takes else None,
                      tolerances.USER_CODE_STRUCTURE[dtype], rng, "dx" if invariant else None)


def _within_range(case: Case, upstream: np.ndarray, problem: Problem, signature: Signature,
                  dtype: str) -> tuple[Case | None, np.ndarray, str]:
    """The case as checked, its upstream gradient, and what to say of it: code cannot return a value its dtype
    does not hold, so rows where the spec's exact forward or gradient is beyond the dtype's range are not
    judged; where no row is within, the inputs are drawn smaller (÷4, up to ÷64), as the step checker draws them.
    None where no row can be judged. Without a spec every row is kept."""
    if problem.derivation is None or not problem.exact:
        return case, upstream, ""
    largest = float(np.finfo(dtype).max)
    for shrink in SMALLER if not problem.simplex else SMALLER[:1]:  # probabilities on the simplex stay as drawn
        x = case.x / shrink
        with np.errstate(all="ignore"):
            values = [problem.forward(x, case.t),
                      *exact_gradient(signature, problem, {"x": x, "t": case.t, "g": upstream}).values()]
        kept = _rows_within(values, len(x), largest)
        if not kept.all():  # the float64 kernels overflow where the exact values may not (L = log Σ exp(±x))
            outside = ~kept
            kept[outside] = _rows_within(_precise(problem, signature, x[outside],
                                                  None if case.t is None else case.t[outside], upstream[outside]),
                                         None, largest)
        if kept.any():
            break
    else:
        return None, upstream, f"{case.name}: not checked: the spec's exact values are beyond {dtype}'s range there"
    within = Case(case.name, x[kept], None if case.t is None else case.t[kept],
                  None if case.labels is None else case.labels[kept], case.extreme)
    said = f"{case.name}: drawn ÷{shrink}, where {dtype} holds the spec's exact values" if shrink > 1 else ""
    if not kept.all():
        said += ("; " if said else f"{case.name}: ") + (f"{int((~kept).sum())} of {len(kept)} rows not checked, "
                                                        f"where the spec's exact values are beyond {dtype}'s range")
    return within, upstream[kept], said


def _rows_within(values: list[Any], rows: int | None, largest: float) -> np.ndarray:
    """Which rows of every value (each with the rows first) are finite and at most `largest` in magnitude."""
    with np.errstate(invalid="ignore"):
        return np.asarray(np.all([(np.abs(np.reshape(v, (rows if rows is not None else len(v), -1))) <= largest)
                                  .all(axis=1) for v in values], axis=0), dtype=bool)


def _precise(problem: Problem, signature: Signature, x: np.ndarray, t: np.ndarray | None,
             upstream: np.ndarray) -> list[Any]:
    """The spec's forward and the signature's gradient at these inputs from the 40-digit reference (as doubles:
    ±inf where no double holds them, NaN where the spec has no value)."""
    kernel = "loss_and_grad" if problem.is_loss else "jacobian" if signature.returns == ("J",) else "vjp"
    return [*problem.high_precision("forward", x, t).values(),
            *problem.high_precision(kernel, x, t, upstream if kernel == "vjp" else None).values()]


def _spec_has_a_value(problem: Problem, x: np.ndarray, t: np.ndarray | None) -> None:
    """Raise (exit 2) where the spec itself has no value at these inputs (a variance over n − 1 at n = 1):
    a NaN from the code there is no evidence against it. Checked at 40 digits where float64 is not finite,
    which may be an overflow of the float64 reference only."""
    if problem.derivation is None:
        return
    try:
        with np.errstate(all="ignore"):
            finite = bool(np.isfinite(problem.forward(x, t)).all())
    except ZeroDivisionError:  # the NumPy reference computes with Python numbers where it can: (n − 1)**−1
        finite = False
    if not finite:
        problem.high_precision("forward", x, t)  # raises UndefinedReference where it divides by 0


def compare_loss(report: Report, loss: np.ndarray, per_row: np.ndarray, reduction: str, dtype: str,
                 case: str) -> None:
    """The loss the code returned against the forward: one number (sum or mean over rows) or one per row."""
    rows = len(per_row)
    if loss.ndim == 0 and reduction == "none":
        raise SoftgradError("the function's loss is one number, but --reduction none expects one per row "
                            "(give --reduction mean or sum)")
    divide = rows if reduction == "mean" else 1
    expected = per_row.sum() / divide if loss.ndim == 0 else per_row / divide
    scale = np.maximum(np.abs(per_row).sum() if loss.ndim == 0 else np.abs(per_row), 1e-300) / divide
    error = np.abs(loss - expected) / scale
    if (error <= EXACT_FLOOR[dtype] * 100).all():  # NaN-safe: a NaN error is a failure
        return
    report.fail(f"loss differs from the forward function by {np.max(error):.3g} (relative) for {case}")
    if loss.ndim == 0 and rows > 1:
        close = EXACT_FLOOR[dtype] * 100 * scale
        if abs(loss - expected * rows) <= close * rows:
            report.hint(f"the loss is {rows}× the expected one: it looks like the sum over the {rows} rows where a "
                        "mean was declared (a mean/sum reduction mismatch; --reduction sum)")
        elif abs(loss - expected / rows) <= close / rows:
            report.hint(f"the loss is 1/{rows} of the expected one: it looks like the mean over the {rows} rows "
                        "(a mean/sum reduction mismatch; --reduction mean)")


def _conventions(why: str, reduction: str, layout: str, extremes: bool, problem: Problem) -> list[str]:
    """What the report says about how the code was called and which inputs it was checked at."""
    lines = []
    if why:
        lines.append(f"targets: {why}")
    if problem.is_loss:
        lines.append({"sum": "reduction: sum over rows", "mean": "reduction: mean over rows (--reduction mean)",
                      "none": "reduction: none, one loss per row (--reduction none)"}[reduction])
    if layout != "classes-last":
        lines.append("layout: class axis first, arrays (n, rows) (--layout classes-first)")
    if problem.input_fact == "unit":
        lines.append("inputs: entries in (0, 1) each (the spec's fact 0 <= p <= 1)")
    elif problem.simplex:
        lines.append("inputs: probabilities on the simplex (the spec reads them under a log)")
    if not extremes:
        lines.append("extremes off: inputs of order 1000 (near-degenerate probabilities) not checked, as the "
                     "code's contract excludes them (--extremes off)")
    return lines
