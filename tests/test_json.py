"""Stable JSON: every derivation, verify report and formula check validates against its checked-in schema."""

from __future__ import annotations

import json
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest
from conftest import require_module

import softgrad
from softgrad.derive import CATALOG, derive_spec, load_spec
from softgrad.verify import check_gradient
from softgrad.verify.formula import verify_formula

sys.path.insert(0, str(Path(__file__).parent / "corpus"))
import gradients

CORPUS = Path(__file__).parent / "corpus"


def schema(name: str) -> dict:
    """A schema as the installed package ships it."""
    return json.loads(resources.files("softgrad").joinpath(f"schemas/{name}.schema.json").read_text())


def validate(document: dict, name: str) -> None:
    jsonschema = require_module("jsonschema")
    checked = schema(name)
    jsonschema.Draft202012Validator.check_schema(checked)
    jsonschema.Draft202012Validator(checked).validate(document)


@pytest.mark.parametrize("name", list(CATALOG))
def test_every_catalog_derivation_validates(name):
    document = json.loads(softgrad.derive(name).render("json"))
    assert document["schema"] == "softgrad.derivation/1"
    validate(document, "derivation-1")


REPORTS = [  # (function, spec, signature): right and wrong ones, every signature
    ("softmax_vjp", "softmax", "x,g->dx"), ("softmax_vjp_sign", "softmax", "x,g->dx"),
    ("softmax_vjp_one_element", "softmax", "x,g->dx"),
    ("softmax_backward_from_output", "softmax", "y,g->dx"),
    ("softmax_backward_from_output_transposed", "softmax", "y,g->dx"),
    ("cross_entropy_grad", "cross-entropy", "z,t->dz"), ("cross_entropy_grad_p_minus_t", "cross-entropy", "z,t->dz"),
    ("cross_entropy_loss_and_grad", "cross-entropy", "z,t->loss,dz"),
    ("cross_entropy_loss_and_grad_wrong_loss", "cross-entropy", "z,t->loss,dz"),
    ("softmax_jacobian", "softmax", "x->J"), ("softmax_jacobian_transposed_index", "softmax", "x->J"),
]


@pytest.mark.parametrize("function, against, signature", REPORTS)
def test_every_report_of_the_verify_corpus_validates(function, against, signature):
    report = check_gradient(getattr(gradients, function), against, signature)
    document = report.to_dict()
    validate(json.loads(json.dumps(document)), "report-1")
    assert (document["verdict"] == "PASS") == report.passed
    if not report.passed:
        assert document["failures"]


def test_the_command_line_json_validates():
    for target in ("gradients.py:softmax_vjp", "gradients.py:softmax_vjp_one_element"):
        run = subprocess.run([sys.executable, "-m", "softgrad", "verify", target, "--against", "softmax", "--json"],
                             capture_output=True, text=True, cwd=CORPUS, timeout=300)
        assert run.returncode in (0, 1), run.stderr
        validate(json.loads(run.stdout), "report-1")


@pytest.mark.parametrize(
    "formula, passes", [("y[i] * (delta(i, j) - y[j])", True), ("y[i] * (delta(i, j) - y[i])", False)]
)
def test_formula_reports_validate(formula, passes):
    report = verify_formula(formula, derive_spec(load_spec("softmax")))
    assert report.passed == passes
    validate(report.to_dict(), "formula-report-1")
