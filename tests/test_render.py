"""Every format renders every catalog entry; LaTeX compiles; HTML is self-contained MathML."""

import json
import subprocess
import sys
import xml.dom.minidom

import pytest
import sympy as sp
from conftest import require_tool
from hypothesis import given, settings
from hypothesis import strategies as st
from sympy.printing.pretty.pretty import PrettyPrinter

import softgrad
from softgrad.derive.catalog import CATALOG
from softgrad.render.printers import TextPrinter
from softgrad.render.render import latex_text


@pytest.fixture(scope="module", params=list(CATALOG))
def derivation(request):
    return softgrad.derive(request.param)


def test_text_marks_every_step_checked(derivation):
    text = derivation.render("text")
    assert text.count("✓ proved") + text.count("✓ checked numerically") == len(derivation.steps)
    assert "∂" in text and "NOT CHECKED" not in text


def test_json_is_data_for_other_tools(derivation):
    data = json.loads(derivation.render("json"))
    assert data["name"] == derivation.spec.name and data["wrt"] == derivation.wrt
    steps = [s for section in data["sections"] for s in section["steps"]]
    assert len(steps) == len(derivation.steps) and all(s["checked"] for s in steps)
    assert all(set(s["lhs"]) == {"latex", "sympy"} for s in steps)
    assert set(data["results"]) == set(derivation.results)


def test_markdown_uses_display_math_blocks(derivation):
    markdown = derivation.render("markdown")
    assert markdown.count("$$") == 2 * (len(derivation.steps) + len(derivation.results))
    assert derivation._repr_markdown_() == markdown
    assert derivation._repr_latex_().startswith("$$\\begin{aligned}")


def test_html_is_self_contained_mathml(derivation):
    page = derivation.render("html")
    assert page.startswith("<!DOCTYPE html>") and "<math" in page
    assert "http://" not in page and "https://" not in page and "<script" not in page
    for block in page.split('<math display="block">')[1:]:
        # every math block is well-formed XML (entities aside), so a browser lays it out
        fragment = "<math>" + block.split("</math>")[0] + "</math>"
        xml.dom.minidom.parseString(fragment.replace("&", "&amp;"))


def test_standalone_latex_compiles_with_pdflatex(derivation, tmp_path):
    pdflatex = require_tool("pdflatex")
    source = tmp_path / "derivation.tex"
    source.write_text(derivation.render("latex", standalone=True), encoding="utf-8")
    run = subprocess.run([pdflatex, "-interaction=nonstopmode", "-halt-on-error", source.name],
                         cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-2000:]
    assert (tmp_path / "derivation.pdf").stat().st_size > 1000


def test_latex_text_escapes_everything_pdflatex_cannot_read():
    escaped = latex_text("Σ_k t_k = 1 & 50% ∂y/∂x ≠ σ(u)² — {x}")
    assert escaped.isascii()
    assert r"\_" in escaped and r"\&" in escaped and r"\%" in escaped and r"\{" in escaped


_FACTORS = [sp.Symbol("x"), sp.Symbol("y_i"), sp.exp(sp.Symbol("z")), sp.Sum(sp.Indexed("x", sp.Symbol("k")), (
    sp.Symbol("k"), 1, sp.Symbol("n"))), sp.Symbol("x") + 1, sp.KroneckerDelta(sp.Symbol("i"), sp.Symbol("j"))]


class _SymPyProducts(TextPrinter):
    _print_Mul = PrettyPrinter._print_Mul


@given(st.lists(st.tuples(st.sampled_from(_FACTORS), st.sampled_from([1, 2, -1, -2, sp.Rational(1, 2),
                                                                       sp.Rational(-3, 2)])), min_size=1, max_size=4),
       st.sampled_from([1, -1, 2, sp.Rational(3, 4), sp.Rational(-1, 5)]), st.booleans())
@settings(max_examples=150, deadline=None)
def test_products_print_as_sympy_prints_them(powers, coefficient, ordered):
    """The text printer's own product printing (which spares SymPy's import of its units) draws what SymPy draws."""
    product = sp.Mul(coefficient, *[base**exponent for base, exponent in powers])
    settings_ = {"order": "none"} if ordered else None
    expected = _SymPyProducts(settings_)._print(product).render(wrap_line=False)
    assert TextPrinter(settings_)._print(product).render(wrap_line=False) == expected


def test_rendering_does_not_import_sympy_units():
    """SymPy's units (a tenth of a second at start-up) are not loaded to print a derivation."""
    program = ("import sys, softgrad; softgrad.derive('y[i] = x[i]^2 / sum(x[k]^2, k)').render('text'); "
               "print('sympy.physics.units' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"
