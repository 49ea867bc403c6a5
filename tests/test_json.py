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
    validate(json.loads(json.dumps(document)), "report-2")
    assert (document["verdict"] == "PASS") == report.passed
    if not report.passed:
        assert document["failures"]


def test_the_command_line_json_validates():
    for target in ("gradients.py:softmax_vjp", "gradients.py:softmax_vjp_one_element"):
        run = subprocess.run([sys.executable, "-m", "softgrad", "verify", target, "--against", "softmax", "--json"],
                             capture_output=True, text=True, cwd=CORPUS, timeout=300)
        assert run.returncode in (0, 1), run.stderr
        validate(json.loads(run.stdout), "report-2")


@pytest.mark.parametrize(
    "formula, passes", [("y[i] * (delta(i, j) - y[j])", True), ("y[i] * (delta(i, j) - y[i])", False)]
)
def test_formula_reports_validate(formula, passes):
    report = verify_formula(formula, derive_spec(load_spec("softmax")))
    assert report.passed == passes
    validate(report.to_dict(), "formula-report-1")


def test_per_row_code_and_code_over_named_arrays_get_one_report():
    """One schema, softgrad.report/2, whatever the spec's indices: the worst element named by the array the code
    returned and its full index, for a softmax backward checked by rows as for a softmax regression's gradients."""
    import tensor_code

    per_row = check_gradient(gradients.softmax_vjp_one_element, "softmax", "x,g->dx")
    named = check_gradient(tensor_code.labels_sign_flip,
                           str(CORPUS.parent.parent / "docs" / "examples" / "softmax-regression-labels.spec"),
                           "X,W,bias,label->loss,dW,dX,dbias")
    assert (per_row.worst.array, per_row.worst.index[1:]) == ("dx", (3,)) and len(per_row.worst.index) == 2
    assert named.worst.array in ("dW", "dX", "dbias") and len(named.worst.index) == 2
    for report in (per_row, named):
        assert not report.passed and f"worst element {report.worst.where} " in report.text()
        validate(json.loads(json.dumps(report.to_dict())), "report-2")
