"""A step's reason is data: words and expressions, printed per format with the spec's own names."""

import json
import re

import pytest
import sympy as sp
from outside_catalog import OUTSIDE_THE_CATALOG

import softgrad
from softgrad.derive.catalog import CATALOG
from softgrad.derive.prose import names_in_prose

EVERY_SPEC = list(CATALOG) + OUTSIDE_THE_CATALOG
LEAKS = ("Sum(", "Indexed", "IndexedBase", "KroneckerDelta", "Partial(")
#: Names a derivation introduces itself: the upstream gradient, the surrogate loss, placeholders of rules.
INTRODUCED = {"g", "l", "u", "v", "w", "s", "r", "N", "D", "A", "B", "n"}


@pytest.mark.parametrize("spec", EVERY_SPEC)
def test_prose_leaks_no_internals_and_uses_the_specs_names(spec):
    derivation = softgrad.derive(spec)
    document = json.loads(derivation.render("json"))
    spec_names = {str(s) for d in derivation.spec.definitions for s in d.expr.free_symbols}
    spec_names |= {d.name for d in derivation.spec.definitions} | set(derivation.spec.inputs)
    spec_names |= set(derivation.spec.parameters)
    indices = {str(s) for step in derivation.steps for e in [step.lhs, *step.forms]
               if not isinstance(e, sp.MatrixExpr) for s in e.free_symbols if s.is_integer}
    indices |= {str(b.limits[0][0]) for step in derivation.steps for e in [step.lhs, *step.forms]
                if not isinstance(e, sp.MatrixExpr) for b in e.atoms(sp.Sum)}
    for section in document["sections"]:
        for step in section["steps"]:
            for leak in LEAKS:
                assert leak not in step["reason"] and leak not in step["reason_latex"], (step["rule"], leak)
            assert "Σ_" not in step["reason_latex"] and "δ_" not in step["reason_latex"], step["reason_latex"]
    for step in derivation.steps:
        stray = names_in_prose(step.reason) - spec_names - indices - INTRODUCED
        assert not stray, (step.rule, stray, step.reason.text())
    for fmt in ("text", "latex", "markdown", "html"):
        rendered = derivation.render(fmt)
        assert not any(leak in rendered for leak in LEAKS), fmt


def test_prose_follows_the_specs_names_not_x_y_i_j():
    """A spec written with p, z and the index a prints p, z and a: never the x, y and i of the catalog."""
    derivation = softgrad.derive("p[a] = exp(z[a]) / sum(exp(z[b]), b)")
    text = "\n".join(step.rule + " " + step.reason.text() for step in derivation.steps)
    assert "case a = j" in text and "J = ∂p/∂z" in text
    assert not re.search(r"\b[xyi]\b", text), text


def test_html_minus_is_the_minus_sign_and_the_quotient_rule_keeps_its_order():
    derivation = softgrad.derive("softmax")
    html = derivation.render("html")
    assert "<mo>-</mo>" not in html and "<mo>\u2212</mo>" in html
    quotient = next(step for step in derivation.steps if step.rule == "quotient rule")
    latex = derivation.render("latex")
    equation = latex[latex.index("quotient rule"):]
    equation = equation[equation.index(r"\begin{align*}"):equation.index(r"\end{align*}")]
    assert equation.index(r"\frac{\partial e^{{x}_{i}}}") < equation.index(r"- e^{{x}_{i}}"), equation
    assert quotient.reason.text().startswith("(N/D)′ = (N′ D − N D′) / D²")


def test_a_default_wrt_is_said_and_skips_targets(tmp_path):
    derivation = softgrad.derive("L = -sum(t[k]*x[k], k)")
    assert derivation.wrt == "x" and "t looks like targets" in derivation.wrt_reason
    assert "by default: t looks like targets" in derivation.render("text")
    assert softgrad.derive("L = -sum(t[k]*x[k], k)", wrt="t").wrt_reason == ""
    assert softgrad.derive("L = sum(max(0, 1 - t[k]*x[k]), k)").wrt == "x"  # a hinge: named like targets
    assert softgrad.derive("kl-divergence").wrt == "z"
