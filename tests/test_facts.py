"""Facts about inputs (issue #34): `given t in {0, 1}`, `given v > 0`, `given 0 <= p <= 1` say where a function
is defined, so that derivation checks, codegen --check and verify draw inputs there. A focal loss with its γ
derives (it did not: arbitrary real targets made its base negative); no formula changes."""

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import checked_module, require_module

from softgrad.derive import derive_spec, parse_spec
from softgrad.derive.check.numeric import sample_inputs
from softgrad.derive.spec import with_rows
from softgrad.errors import SpecError

FOCAL = """p[b, c] = sigmoid(x[b, c])
q[b, c] = p[b, c] * t[b, c] + (1 - p[b, c]) * (1 - t[b, c])
L = -sum((1 - q[b, c])^gamma * log(q[b, c]), b, c) / size(b)
"""
FOCAL_ONE_ROW = """p[k] = sigmoid(x[k])
q[k] = p[k]*t[k] + (1 - p[k])*(1 - t[k])
L = -sum((1 - q[k])^gamma * log(q[k]), k)
given t in {0, 1}
"""


@pytest.mark.parametrize("line, name, kind", [
    ("given t[b, c] in {0, 1}", "t", "binary"), ("given t in {0,1}", "t", "binary"),
    ("given x[b, c] > 0", "x", "positive"), ("given 0 <= t[b, c] <= 1", "t", "unit"),
])
def test_facts_are_read_and_printed_back(line: str, name: str, kind: str) -> None:
    spec = parse_spec(FOCAL + line + "\n", "focal")
    assert spec.facts == {name: kind}
    assert spec.statements[-1].startswith("given ") and parse_spec(
        "\n".join(spec.statements).replace("/n_b", "/size(b)"), "again").facts == {name: kind}
    assert with_rows(spec).facts == {name: kind}


@pytest.mark.parametrize("line, message", [
    ("given t > 1", "a fact about an input is 'given t[b, c] in {0, 1}'"),
    ("given 0 <= t <= 2", "a fact about an input is"),
    ("given q in {0, 1}", "'q' is not an input of the spec"),
])
def test_a_malformed_fact_is_one_clear_error(line: str, message: str) -> None:
    with pytest.raises(SpecError, match=re.escape(message)):
        parse_spec(FOCAL + line + "\n")


def test_without_its_fact_a_focal_loss_is_checked_where_it_is_real_and_with_it_everywhere_drawn() -> None:
    """Targets drawn as arbitrary reals make (1 − q)^γ the power of a negative number at some points: the spec
    has no real value there, and those points are left out and said (once the steps failed there); with the
    fact every point drawn is one where it holds."""
    without = derive_spec(parse_spec(FOCAL, "focal"), wrt="x")
    assert "where L has no finite real value left out" in without.check_summary
    derivation = derive_spec(parse_spec(FOCAL + "given t[b, c] in {0, 1}\n", "focal"), wrt="x")
    assert derivation.check_summary.endswith("inputs drawn where the spec's facts hold (t in {0, 1})")
    one_row = derive_spec(parse_spec(FOCAL_ONE_ROW, "focal-row"), wrt="x")
    assert "t in {0, 1}" in one_row.check_summary


def test_inputs_are_drawn_where_the_facts_hold() -> None:
    spec = parse_spec(FOCAL + "given t in {0, 1}\ngiven 0 <= x <= 1\n", "focal")
    arrays, _ = sample_inputs(spec, spec.axes, ["x", "t"], {"b": 40, "c": 30}, set(), np.random.default_rng(0), 1000)
    assert set(np.unique(arrays["t"])) == {0.0, 1.0}
    assert 0 < arrays["x"].min() and arrays["x"].max() < 1


def test_generated_focal_loss_equals_torchs_formula(tmp_path: Path) -> None:
    torch = require_module("torch")
    derivation = derive_spec(parse_spec(FOCAL + "given t[b, c] in {0, 1}\n", "focal"), wrt="x")
    module = checked_module(derivation, tmp_path)
    rng = np.random.default_rng(3)
    x, t, gamma = rng.normal(0, 2, (6, 4)), rng.integers(0, 2, (6, 4)).astype(float), 2.0
    loss, dx = module.gradients(x, t, gamma)
    logits = torch.tensor(x, requires_grad=True)
    targets = torch.tensor(t)
    p = torch.sigmoid(logits)
    p_t = p * targets + (1 - p) * (1 - targets)  # RetinaNet's sigmoid focal loss, alpha off, summed per row
    ce = torch.nn.functional.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    expected = (ce * (1 - p_t) ** gamma).sum() / len(x)
    expected.backward()
    assert float(loss) == pytest.approx(float(expected), rel=1e-10)
    np.testing.assert_allclose(dx, logits.grad.numpy(), rtol=1e-9, atol=1e-13)


FOCAL_CODE = '''
import numpy as np

def focal_grad(x, t, gamma=2.0):
    p = 1 / (1 + np.exp(-x))
    q = p * t + (1 - p) * (1 - t)
    dq = (2 * t - 1) * p * (1 - p)
    return (gamma * (1 - q) ** (gamma - 1) * np.log(q) - (1 - q) ** gamma / q) * dq

def focal_grad_without_gamma_term(x, t, gamma=2.0):
    p = 1 / (1 + np.exp(-x))
    q = p * t + (1 - p) * (1 - t)
    return -(1 - q) ** gamma / q * (2 * t - 1) * p * (1 - p)
'''


@pytest.mark.parametrize("function, status", [("focal_grad", 0), ("focal_grad_without_gamma_term", 1)])
def test_verify_draws_binary_targets_for_a_one_row_focal_loss(tmp_path: Path, function: str, status: int) -> None:
    """One-hot targets and targets of 0 and 1; the forward's rounding near p = 1 (1 − p) is no false alarm."""
    (tmp_path / "code.py").write_text(FOCAL_CODE)
    (tmp_path / "focal.spec").write_text(FOCAL_ONE_ROW)
    result = subprocess.run([sys.executable, "-m", "softgrad", "verify", f"code.py:{function}", "--against",
                             "focal.spec", "--signature", "x,t->dx", "--param", "gamma=2", "--extremes", "off"],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == status, result.stdout + result.stderr
    assert "targets: one-hot targets, targets of 0 and 1: every kind the spec's fact about them allows" in result.stdout


def test_probabilities_with_a_fact_are_drawn_in_the_unit_interval_not_on_the_simplex(tmp_path: Path) -> None:
    (tmp_path / "bce.py").write_text("def grad(p, t):\n    return (p - t) / (p * (1 - p))\n")
    (tmp_path / "bce.spec").write_text("L = -sum(t[k]*log(p[k]) + (1-t[k])*log(1-p[k]), k)\ngiven 0 <= p <= 1\n")
    result = subprocess.run([sys.executable, "-m", "softgrad", "verify", "bce.py:grad", "--against", "bce.spec",
                             "--wrt", "p", "--signature", "p,t->dp"], capture_output=True, text=True, timeout=300,
                            cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "inputs: entries in (0, 1) each (the spec's fact 0 <= p <= 1)" in result.stdout
