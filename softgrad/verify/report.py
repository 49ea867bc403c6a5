"""The verify report: PASS or FAIL, and on FAIL exactly where and by how much."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from softgrad._version import __version__


@dataclass
class Worst:
    """The worst element: where it is, both values, errors and the tolerance it broke."""

    row: int
    i: int
    j: int | None
    analytic: float
    numeric: float
    exact: float | None
    tolerance: float
    tolerance_how: str
    case: str
    kink: bool

    @property
    def absolute_error(self) -> float:
        return abs(self.analytic - self.reference)

    @property
    def reference(self) -> float:
        """What the element should be: the exact result where known, else the finite difference."""
        return self.exact if self.exact is not None else self.numeric

    @property
    def relative_error(self) -> float | None:
        """Error relative to the reference; None where the reference is 0 or below the tolerance (a
        relative error of 1e+299 says nothing)."""
        if abs(self.reference) <= self.tolerance or self.reference == 0:
            return None
        return abs(self.analytic - self.reference) / abs(self.reference)


@dataclass
class Report:
    function: str
    signature: str
    against: str
    dtype: str
    mode: str  # "full Jacobian" or "random projections"
    seed: int
    step: float
    elements: int
    passed: bool = True
    bad_elements: int = 0
    worst: Worst | None = None
    failures: list[str] = field(default_factory=list)  # one line per failed comparison or check
    checks: list[tuple[str, bool, str]] = field(default_factory=list)  # (name, ok, detail)
    hints: list[str] = field(default_factory=list)  # what a failure looks like (a sign flip, a reduction factor)
    #: How the code was called and at which inputs: targets, reduction, layout, extremes (one line each).
    conventions: list[str] = field(default_factory=list)
    #: (input case, bad elements, elements) for each case a comparison failed at.
    case_counts: list[tuple[str, int, int]] = field(default_factory=list)
    #: Every input case the gradient was checked at, in order.
    cases_checked: list[str] = field(default_factory=list)

    def hint(self, *lines: str) -> None:
        """Add hints (each once) about what kind of mistake a failure looks like."""
        self.hints.extend(line for line in lines if line not in self.hints)

    def fail(self, line: str) -> None:
        self.passed = False
        self.failures.append(line)

    def to_dict(self) -> dict[str, Any]:
        """The report as data: the schema softgrad.report/1 (softgrad/schemas/report-1.schema.json)."""

        worst = None
        if self.worst is not None:
            w = self.worst
            worst = {"row": w.row, "i": w.i, "j": w.j, "analytic": w.analytic, "numeric": w.numeric,
                     "exact": w.exact, "absolute_error": w.absolute_error,
                     "relative_error": w.relative_error,
                     "tolerance": w.tolerance, "tolerance_how": w.tolerance_how, "case": w.case, "kink": w.kink}
        return {
            "schema": "softgrad.report/1", "softgrad": __version__,
            "verdict": "PASS" if self.passed else "FAIL",
            "function": self.function, "signature": self.signature, "against": self.against, "dtype": self.dtype,
            "mode": self.mode, "seed": self.seed, "step": self.step, "elements": self.elements,
            "bad_elements": self.bad_elements, "worst": worst, "failures": list(self.failures),
            "checks": [{"check": name, "ok": ok} for name, ok, _ in self.checks],
            "hints": list(self.hints), "conventions": list(self.conventions),
            "inputs": list(self.cases_checked),
            "cases": [{"case": case, "bad_elements": bad, "elements": total} for case, bad, total in self.case_counts],
        }

    def text(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        lines = [f"{verdict}  {self.function}  (signature {self.signature}, against {self.against}, {self.dtype})"]
        if self.worst is not None and not self.passed:
            w = self.worst
            where = f"row {w.row}, i = {w.i}" + (f", j = {w.j}" if w.j is not None else "")
            lines += [
                f"  worst element: {where}  (inputs: {w.case})",
                f"    analytic (the function under test)   {w.analytic: .12g}",
                f"    numeric (central differences)         {w.numeric: .12g}",
            ]
            if w.exact is not None:
                lines.append(f"    exact (the derived result)            {w.exact: .12g}")
            lines += [
                f"    absolute error {w.absolute_error:.3g}, "
                + (f"relative error {w.relative_error:.3g}" if w.relative_error is not None
                   else "no relative error (the reference is 0, to within the tolerance)"),
                f"    tolerance {w.tolerance:.3g}: {w.tolerance_how}",
                f"  bad elements: {self.bad_elements} of {self.elements}",
            ]
            lines += [f"    {bad} of {total} with {case}" for case, bad, total in self.case_counts]
            if w.kink:
                lines.append("  note: the finite difference crossed a kink (the row's argmax changed)")
        elif self.case_counts and not self.passed:  # results wrong by themselves (NaN, …): no worst element
            lines.append(f"  bad elements: {self.bad_elements} of {self.elements}")
            lines += [f"    {bad} of {total} with {case}" for case, bad, total in self.case_counts]
        for line in self.conventions:
            lines.append(f"  {line}")
        for hint in self.hints:
            lines.append(f"  hint: {hint}")
        for failure in self.failures:
            lines.append(f"  ✗ {failure}")
        if self.cases_checked:
            lines.append(f"  input cases: {len(self.cases_checked)} ({'; '.join(self.cases_checked[:3])}"
                         + ("; …)" if len(self.cases_checked) > 3 else ")"))
        lines.append(
            f"  mode: {self.mode}; step h = {self.step:.3g} (absolute, float64 numerical side); seed {self.seed}"
        )
        if self.checks:
            lines.append("  checks: " + ", ".join(f"{name} {'ok' if ok else 'FAIL'}" for name, ok, _ in self.checks))
        return "\n".join(lines)
