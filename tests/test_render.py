"""Every format renders every catalog entry; LaTeX compiles; HTML is self-contained MathML."""

import json
import subprocess
import xml.dom.minidom

import pytest
from conftest import require_tool

import softgrad
from softgrad.derive.catalog import CATALOG
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
