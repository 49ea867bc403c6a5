"""The verify report, for every spec: PASS or FAIL, and on FAIL exactly where and by how much.

One report and one schema (softgrad.report/2) whatever the spec's indices: the worst element is named by
the array the code returned and its full index (dx[1, 3] for per-row code, dW[3, 1] or J[0, 2, 4]).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from softgrad._version import __version__

SCHEMA = "softgrad.report/2"


@dataclass
class Worst:
    """The worst element: which array and where, what the code gave, what it should be (the exact result,
    the finite difference, or both) and the absolute tolerance it broke."""

    array: str  # as the signature names it: dx, dW, J, hv
    index: tuple[int, ...]  # the full index, every axis (the row first for per-row code)
    got: float
    numeric: float | None  # central finite differences, where computed
    exact: float | None  # the derived result, where known
    tolerance: float
    tolerance_how: str
    case: str  # the inputs it was found at
    kink: bool = False  # the finite difference crossed a change of the row's argmax

    def __post_init__(self) -> None:
        if self.numeric is None and self.exact is None:
            raise ValueError("a worst element needs a reference: the exact result or a finite difference")

    @property
    def where(self) -> str:
        return f"{self.array}[{', '.join(map(str, self.index))}]" if self.index else self.array

    @property
    def reference(self) -> float:
        """What the element should be: the exact result where known, else the finite difference."""
        return self.exact if self.exact is not None else float(self.numeric)  # type: ignore[arg-type]

    @property
    def against(self) -> str:
        return "exact" if self.exact is not None else "finite differences"

    @property
    def absolute_error(self) -> float:
        return abs(self.got - self.reference)

    @property
    def relative_error(self) -> float | None:
        """Error relative to the reference; None where the reference is 0 or below the tolerance (a
        relative error of 1e+299 says nothing)."""
        if abs(self.reference) <= self.tolerance or self.reference == 0:
            return None
        return abs(self.got - self.reference) / abs(self.reference)

    @property
    def excess(self) -> float:
        """How many tolerances the error is: what picks the worst of several mismatches."""
        return self.absolute_error / self.tolerance if self.tolerance > 0 else float("inf")


@dataclass
class Report:
    function: str
    signature: str
    against: str
    dtype: str
    mode: str  # "full Jacobian", "random projections" or "every element"
    seed: int
    step: float  # the finite-difference step (absolute)
    elements: int = 0
    sizes: dict[str, int] = field(default_factory=dict)  # each range's size the code was called at
    passed: bool = True
    bad_elements: int = 0
    worst: Worst | None = None
    failures: list[str] = field(default_factory=list)  # one line per failed comparison or check
    checks: list[tuple[str, bool, str]] = field(default_factory=list)  # (name, ok, detail)
    hints: list[str] = field(default_factory=list)  # what a failure looks like (a sign flip, a reduction factor)
    #: How the code was called and at which inputs: adapter, targets, reduction, layout, extremes (one line each).
    conventions: list[str] = field(default_factory=list)
    #: (input case, bad elements, elements) for each case a comparison failed at.
    case_counts: list[tuple[str, int, int]] = field(default_factory=list)
    #: Every input case the gradient was checked at, in order.
    cases_checked: list[str] = field(default_factory=list)

    def hint(self, *lines: str) -> None:
        """Add hints (each once) about what kind of mistake a failure looks like."""
        self.hints.extend(line for line in lines if line not in self.hints)

    def convention(self, line: str) -> None:
        """Add a line (once) on how the code was called."""
        if line not in self.conventions:
            self.conventions.append(line)

    def fail(self, line: str) -> None:
        self.passed = False
        self.failures.append(line)

    def offer_worst(self, worst: Worst) -> None:
        """Keep `worst` if it breaks its tolerance by more than the one kept so far."""
        if self.worst is None or worst.excess > self.worst.excess:
            self.worst = worst

    def to_dict(self) -> dict[str, Any]:
        """The report as data: the schema softgrad.report/2 (softgrad/schemas/report-2.schema.json)."""
        worst = None
        if self.worst is not None:
            w = self.worst
            worst = {"array": w.array, "index": list(w.index), "got": w.got, "numeric": w.numeric, "exact": w.exact,
                     "against": w.against, "absolute_error": w.absolute_error, "relative_error": w.relative_error,
                     "tolerance": w.tolerance, "tolerance_how": w.tolerance_how, "case": w.case, "kink": w.kink}
        return {
            "schema": SCHEMA, "softgrad": __version__,
            "verdict": "PASS" if self.passed else "FAIL",
            "function": self.function, "signature": self.signature, "against": self.against, "dtype": self.dtype,
            "mode": self.mode, "seed": self.seed, "step": self.step, "sizes": dict(self.sizes),
            "elements": self.elements, "bad_elements": self.bad_elements, "worst": worst,
            "failures": list(self.failures), "checks": [{"check": name, "ok": ok} for name, ok, _ in self.checks],
            "hints": list(self.hints), "conventions": list(self.conventions), "inputs": list(self.cases_checked),
            "cases": [{"case": case, "bad_elements": bad, "elements": total} for case, bad, total in self.case_counts],
        }

    def text(self) -> str:
        verdict = "PASS" if self.passed else "FAIL"
        lines = [f"{verdict}  {self.function}  (signature {self.signature}, against {self.against}, {self.dtype})"]
        if self.sizes:
            lines.append("  sizes " + ", ".join(f"n_{name} = {size}" for name, size in self.sizes.items()))
        if self.worst is not None and not self.passed:
            w = self.worst
            lines.append(f"  worst element {w.where}  (inputs: {w.case})")
            values = [("got (the function under test)", w.got), ("numeric (central differences)", w.numeric),
                      ("exact (the derived result)", w.exact)]
            lines += [f"    {label:<38}{value: .12g}" for label, value in values if value is not None]
            lines += [
                f"    absolute error {w.absolute_error:.3g}, "
                + (f"relative error {w.relative_error:.3g}" if w.relative_error is not None
                   else "no relative error (the reference is 0, to within the tolerance)"),
                f"    tolerance {w.tolerance:.3g}: {w.tolerance_how}",
            ]
        if self.case_counts and not self.passed:
            lines.append(f"  bad elements: {self.bad_elements} of {self.elements}")
            lines += [f"    {bad} of {total} with {case}" for case, bad, total in self.case_counts]
        if self.worst is not None and self.worst.kink and not self.passed:
            lines.append("  note: the finite difference crossed a kink (the row's argmax changed)")
        lines += [f"  {line}" for line in self.conventions]
        lines += [f"  hint: {hint}" for hint in self.hints]
        lines += [f"  ✗ {failure}" for failure in self.failures]
        if self.cases_checked:
            shown = "; ".join(self.cases_checked[:3]) + ("; …" if len(self.cases_checked) > 3 else "")
            lines.append(f"  {self.elements} elements compared at {len(self.cases_checked)} input cases ({shown})")
        lines.append(f"  mode: {self.mode}; step h = {self.step:.3g} (absolute, float64 numerical side); "
                     f"seed {self.seed}")
        if self.checks:
            lines.append("  checks: " + ", ".join(f"{name} {'ok' if ok else 'FAIL'}" for name, ok, _ in self.checks))
        return "\n".join(lines)
