"""A derivation is data: sections of steps, each an equation chain with the rule that justifies it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import sympy as sp

from softgrad.derive.prose import Prose
from softgrad.derive.spec import Spec


@dataclass
class Step:
    """lhs = forms[0] = forms[1] = …, justified by `rule`, checked numerically before it is shown.

    `equal`/`distinct` restrict the check (and the claim) to index pairs with i = j or i ≠ j;
    `assumes` lists constraints (e.g. Σ_k t_k = 1) under which the step holds.
    """

    rule: str
    lhs: sp.Expr
    forms: list[sp.Expr]
    reason: Prose
    equal: tuple[sp.Symbol, sp.Symbol] | None = None
    distinct: tuple[sp.Symbol, sp.Symbol] | None = None
    assumes: tuple[str, ...] = ()
    matrix_axes: tuple[sp.Symbol, ...] = ()  # for a matrix form: which indices pick its row, column
    ordered: bool = False  # print the forms' terms in the order they were built (a rule's stated order)
    checked: bool = False
    check_detail: str = ""
    check_sizes: tuple[int, ...] = ()  # the sizes n at which at least one index pair was compared
    proved: bool = False  # the sides are identical at every size of proof_detail (softgrad.derive.check.proof)
    proof_detail: str = ""

    @property
    def condition(self) -> str:
        if self.equal:
            return f"{self.equal[0]} = {self.equal[1]}"
        if self.distinct:
            return f"{self.distinct[0]} ≠ {self.distinct[1]}"
        return ""

    @property
    def result(self) -> sp.Expr:
        return self.forms[-1]


@dataclass
class Section:
    title: str
    steps: list[Step] = field(default_factory=list)

    def add(self, step: Step) -> Step:
        self.steps.append(step)
        return step


@dataclass
class Result:
    """A named outcome of the derivation (Kronecker form, matrix form, VJP, gradient, …), with the facts
    code generation and verification need, so that nothing downstream guesses them again.

    indices: the free indices of lhs in their roles' order — (output entry, input entry) for a Jacobian,
    (input entry,) for a VJP or a gradient; upstream: the upstream gradient's name (VJPs); inputs: the
    arrays and parameters rhs reads, in the spec's order; reductions: its Σs over a whole row."""

    key: str
    title: str
    lhs: sp.Expr
    rhs: sp.Expr
    note: str = ""
    indices: tuple[sp.Symbol, ...] = ()
    upstream: str | None = None
    inputs: tuple[str, ...] = ()
    reductions: tuple[sp.Expr, ...] = ()


#: How a Derivation renders itself, registered by softgrad.render when it is imported (softgrad's package face
#: imports it), so that this layer never imports the presentation layer above it.
_renderers: dict[str, Callable[..., str]] = {}


def use_renderers(document: Callable[..., str], latex_display: Callable[[Derivation], str]) -> None:
    """Register the document renderer and Jupyter's LaTeX display (softgrad.render calls this once)."""
    _renderers.update(document=document, latex_display=latex_display)


@dataclass
class Derivation:
    """Everything `softgrad derive` shows: the spec, the checked steps and the results."""

    spec: Spec
    wrt: str
    sections: list[Section]
    results: dict[str, Result]
    reductions: list[sp.Expr] = field(default_factory=list)
    check_summary: str = ""
    wrt_reason: str = ""  # why `wrt` was chosen when --wrt was not given ("" when it was, or had to be)
    #: For a spec with several index ranges: the backward arrays and gradients (derive.adjoint.ArrayDerivation).
    tensor: Any = None
    order: int = 1  # 2: a loss's Hessian, derived as the Jacobian of its gradient (softgrad.derive.hessian)

    @property
    def output_names(self) -> tuple[str, str]:
        """(gradient, Jacobian): what generated code and references call the outputs softgrad adds (dx and J),
        named apart from the spec's own names and the upstream gradient's (an input may be called J)."""
        from softgrad.derive.symbols import fresh_name

        taken = {d.name for d in self.spec.definitions} | set(self.spec.inputs) | set(self.spec.parameters)
        taken |= {str(result.upstream) for result in self.results.values() if result.upstream is not None}
        return fresh_name((f"d{self.wrt}", f"grad_{self.wrt}"), taken), fresh_name(("J", "jacobian"), taken)

    @property
    def steps(self) -> list[Step]:
        return [step for section in self.sections for step in section.steps]

    @property
    def title(self) -> str:
        return self.spec.name or self.spec.statements[len(self.spec.definitions) - 1]

    def render(self, fmt: str = "text", standalone: bool = False) -> str:
        """The derivation as a document: text, latex, markdown, html or json (see softgrad.render)."""
        return _renderers["document"](self, fmt, standalone=standalone)

    def _repr_latex_(self) -> str:
        return str(_renderers["latex_display"](self))

    def _repr_markdown_(self) -> str:
        return self.render("markdown")

    def __str__(self) -> str:
        return self.render("text")
