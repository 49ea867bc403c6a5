"""Turn a Derivation into a document. The math is printed by SymPy's printers; layout is in templates."""

from __future__ import annotations

import html
import json
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import jinja2
import sympy as sp
from markupsafe import Markup

from softgrad._version import __version__
from softgrad.derive.prose import Prose
from softgrad.render.printers import abbreviate, equation_text, inline_mathml, to_latex, to_mathml

if TYPE_CHECKING:
    from softgrad.derive.steps import Derivation

FORMATS = ("text", "latex", "markdown", "html", "json")

_ENVIRONMENT = jinja2.Environment(
    loader=jinja2.PackageLoader("softgrad", "templates"),
    undefined=jinja2.StrictUndefined,
    autoescape=jinja2.select_autoescape(enabled_extensions=("html.j2",), default_for_string=False),
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
)

#: Unicode that reasons and titles use, spelled for pdflatex (which reads no Unicode math by itself).
_LATEX_TEXT = {
    "∂": r"$\partial$", "δ": r"$\delta$", "Σ": r"$\Sigma$", "σ": r"$\sigma$", "≠": r"$\neq$", "−": "-",
    "·": r"$\cdot$", "²": r"$^2$", "′": "'", "–": "--", "—": "---", "→": r"$\to$", "∘": r"$\circ$",
    "⊙": r"$\odot$", "ᵀ": r"$^T$", "‖": r"$\|$", "≤": r"$\leq$", "≥": r"$\geq$", "∑": r"$\Sigma$",
    "_": r"\_", "^": r"\^{}", "&": r"\&", "%": r"\%", "#": r"\#", "$": r"\$", "{": r"\{", "}": r"\}",
    "~": r"\~{}", "\\": r"\textbackslash{}", "ℓ": r"$\ell$", "‘": "`", "’": "'",
}


def latex_text(text: str) -> str:
    """Plain text made safe for LaTeX: special characters escaped, math symbols spelled out."""
    return "".join(_LATEX_TEXT.get(c, c if c.isascii() else "?") for c in str(text))


_ENVIRONMENT.filters["latex_text"] = latex_text


def _markdown_words(text: str) -> str:
    return re.sub(r"([\\`*_\[\]<>|$])", r"\\\1", text)


#: How each format prints a reason: its words escaped, its math by the format's printer.
REASON_PRINTERS: dict[str, Callable[[Prose], Any]] = {
    "text": lambda reason: reason.text(),
    "latex": lambda reason: reason.render(latex_text, lambda e: f"${to_latex(e)}$"),
    "markdown": lambda reason: reason.render(_markdown_words, lambda e: f"${to_latex(e)}$"),
    "html": lambda reason: Markup(reason.render(html.escape, inline_mathml)),
}


def _view(derivation: Derivation, equation: Callable[..., Any], fmt: str) -> dict[str, Any]:
    """What every template sees: the spec, and each step with its equation and reason printed for the target."""
    reason_for = REASON_PRINTERS[fmt]
    spec = derivation.spec
    taken = {str(s) for r in derivation.results.values() for s in r.rhs.free_symbols} | set(spec.inputs) | {
        d.name for d in spec.definitions} | {str(s) for step in derivation.steps for e in [step.lhs, *step.forms]
                                             for s in e.free_symbols}
    sections = []
    number = 0
    for section in derivation.sections:
        steps = []
        for step in section.steps:
            number += 1
            forms, where = (step.forms, []) if step.ordered else abbreviate(step.lhs, step.forms, taken)
            steps.append({
                "number": number, "rule": step.rule, "reason": reason_for(step.reason), "condition": step.condition,
                "assumes": list(step.assumes), "checked": step.checked, "check_detail": step.check_detail,
                "verdict": "proved" if step.proved else ("checked numerically" if step.checked else "NOT CHECKED"),
                "verdict_detail": "; ".join(filter(None, [step.proof_detail, step.check_detail])),
                "equation": equation(step.lhs, forms, step.ordered),
                "where": [equation(name, [value]) for name, value in where],
            })
        sections.append({"title": section.title, "steps": steps})
    results = []
    for r in derivation.results.values():
        if isinstance(r.rhs, sp.MatrixExpr):
            rhs, where = r.rhs, []
        else:
            (rhs,), where = abbreviate(r.lhs, [r.rhs], taken)
        results.append({"title": r.title, "equation": equation(r.lhs, [rhs]), "note": r.note,
                        "where": [equation(name, [value]) for name, value in where]})
    return {
        "title": derivation.title, "name": spec.name, "source": "\n".join(spec.statements), "wrt": derivation.wrt,
        "wrt_reason": derivation.wrt_reason,
        "inputs": spec.inputs, "parameters": spec.parameters,
        "constraints": spec.statements[len(spec.definitions):],
        "sections": sections, "results": results, "check_summary": derivation.check_summary,
        "all_checked": all(s.checked for s in derivation.steps), "version": __version__,
    }


def _latex_lines(lhs: Any, forms: list[Any], ordered: bool = False) -> list[str]:
    return [to_latex(lhs)] + [to_latex(f, ordered) for f in forms]


def _mathml(lhs: Any, forms: list[Any], ordered: bool = False) -> Markup:
    pieces = [to_mathml(lhs)] + [to_mathml(f, ordered) for f in forms]
    return Markup('<math display="block"><mrow>' + "<mo>=</mo>".join(pieces) + "</mrow></math>")


def equation_mathml(sides: list[Any]) -> Markup:
    """sides[0] = sides[1] = … as one block of MathML (what a checked page shows for a written equality)."""
    return _mathml(sides[0], sides[1:])


def page(template: str, **context: Any) -> str:
    """A page from one of the templates (HTML ones escape what they are given)."""
    return str(_ENVIRONMENT.get_template(template).render(version=__version__, **context))


def render(derivation: Derivation, fmt: str = "text", standalone: bool = False) -> str:
    """The derivation as a document in one of FORMATS."""
    if fmt == "json":
        return json.dumps(to_json(derivation), indent=2, ensure_ascii=False) + "\n"
    if fmt == "text":
        view = _view(derivation, equation_text, fmt)
    elif fmt in ("latex", "markdown"):
        view = _view(derivation, _latex_lines, fmt)
    elif fmt == "html":
        view = _view(derivation, _mathml, fmt)
    else:
        raise ValueError(f"unknown format {fmt!r} (known: {', '.join(FORMATS)})")
    template = {"text": "text/derivation.txt.j2", "latex": "latex/derivation.tex.j2",
                "markdown": "markdown/derivation.md.j2", "html": "html/derivation.html.j2"}[fmt]
    text = _ENVIRONMENT.get_template(template).render(standalone=standalone, **view)
    return re.sub(r"\n{3,}", "\n\n", text)


def to_json(derivation: Derivation) -> dict[str, Any]:
    """Steps and results as data: each expression as LaTeX and as SymPy's own string form."""

    def expression(expr: Any, ordered: bool = False) -> dict[str, str]:
        return {"latex": to_latex(expr, ordered), "sympy": sp.sstr(expr, order="none" if ordered else None)}

    return {
        "schema": "softgrad.derivation/1",  # softgrad/schemas/derivation-1.schema.json, docs/json.md
        "softgrad": __version__,
        "name": derivation.spec.name,
        "spec": "\n".join(derivation.spec.statements),
        "spec_sha256": derivation.spec.digest,
        "wrt": derivation.wrt,
        "wrt_reason": derivation.wrt_reason or None,
        "inputs": derivation.spec.inputs,
        "parameters": derivation.spec.parameters,
        "constraints": derivation.spec.statements[len(derivation.spec.definitions):],
        "sections": [
            {
                "title": section.title,
                "steps": [
                    {
                        "rule": step.rule, "reason": step.reason.text(),
                        "reason_latex": REASON_PRINTERS["latex"](step.reason), "condition": step.condition or None,
                        "assumes": list(step.assumes), "checked": step.checked, "check": step.check_detail,
                        "proved": step.proved, "proof": step.proof_detail or None,
                        "lhs": expression(step.lhs), "forms": [expression(f, step.ordered) for f in step.forms],
                    }
                    for step in section.steps
                ],
            }
            for section in derivation.sections
        ],
        "results": {
            key: {"title": r.title, "lhs": expression(r.lhs), "rhs": expression(r.rhs), "note": r.note}
            for key, r in derivation.results.items()
        },
        "reductions": [expression(r) for r in derivation.reductions],
        "check_summary": derivation.check_summary,
    }


def latex_display(derivation: Derivation) -> str:
    """All steps as one display-math block (for Jupyter's text/latex): equations with their rules."""
    lines = []
    for step in derivation.steps:
        forms = " = ".join(to_latex(f, step.ordered) for f in step.forms)
        rule = latex_text(
            step.rule + (f" ({step.condition})" if step.condition and step.condition not in step.rule else "")
        )
        lines.append(f"{to_latex(step.lhs)} &= {forms} && \\text{{{rule}}}")
    return "$$\\begin{aligned}\n" + " \\\\\n".join(lines) + "\n\\end{aligned}$$"
