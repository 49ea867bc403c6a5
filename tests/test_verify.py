"""softgrad verify: every correct gradient in the corpus passes, every wrong one fails at the right place."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import require_tool

from softgrad.verify import assert_gradient, check_gradient
from softgrad.verify.loaders import load_function
from softgrad.verify.signatures import parse_signature

CORPUS = Path(__file__).parent / "corpus"
sys.path.insert(0, str(CORPUS))
import gradients  # noqa: E402


def run(*args):
    return subprocess.run([sys.executable, "-m", "softgrad", "verify", *args], capture_output=True, text=True,
                          cwd=CORPUS, timeout=300)


@pytest.mark.parametrize("function, against, signature", [
    ("softmax_vjp", "softmax", "x,g->dx"),
    ("softmax_backward_from_output", "softmax", "y,g->dx"),
    ("cross_entropy_grad", "cross-entropy", "z,t->dz"),
    ("cross_entropy_grad_p_minus_t", "cross-entropy-onehot", "z,t->dz"),
    ("cross_entropy_loss_and_grad", "cross-entropy", "z,t->loss,dz"),
    ("softmax_jacobian", "softmax", "x->J"),
])
def test_correct_python_gradients_pass(function, against, signature):
    report = check_gradient(getattr(gradients, function), against, signature)
    assert report.passed, report.text()


def test_per_row_and_named_array_code_get_the_same_structural_checks():
    """A passing vjp is called again: repeatable, linear in its upstream gradient and 0 where that is 0 — the
    properties named-array code is checked for, under the code's own name — and, softmax being unchanged by a
    constant added to a row, its rows of dx add up to 0. One that is right on the checked inputs but not
    linear in g fails."""
    right = check_gradient(gradients.softmax_vjp, "softmax", "x,g->dx")
    assert [name for name, ok, _ in right.checks if ok] == ["repeatable", "linear in g", "0 where g = 0",
                                                            "sums to 0 (shift-invariant)"]
    calls, cases = [], len(right.cases_checked)

    def saturating(x, g):  # right at every input case (one call each), tanh of it afterwards
        calls.append(1)
        dx = gradients.softmax_vjp(x, g)
        return dx if len(calls) <= cases else np.tanh(dx)

    wrong = check_gradient(saturating, "softmax", "x,g->dx")
    assert not wrong.passed and any("structural check failed: linear in g" in f for f in wrong.failures), wrong.text()


@pytest.mark.parametrize("function, against, signature, worst_column", [
    ("softmax_vjp_wrong_axis", "softmax", "x,g->dx", None),
    ("softmax_vjp_sign", "softmax", "x,g->dx", None),
    ("softmax_vjp_one_element", "softmax", "x,g->dx", 3),
    ("softmax_vjp_relative_1e6", "softmax", "x,g->dx", None),
    ("softmax_backward_from_output_transposed", "softmax", "y,g->dx", None),
    ("cross_entropy_grad_p_minus_t", "cross-entropy", "z,t->dz", None),
    ("cross_entropy_loss_and_grad_wrong_loss", "cross-entropy", "z,t->loss,dz", None),
    ("softmax_jacobian_transposed_index", "softmax", "x->J", None),
])
def test_wrong_python_gradients_fail(function, against, signature, worst_column):
    report = check_gradient(getattr(gradients, function), against, signature)
    assert not report.passed
    assert report.worst is None or not report.worst.kink  # a smooth spec has no kink for a difference to cross
    if worst_column is not None:
        assert report.worst.index[1] == worst_column and report.case_counts[0][1] == 4  # one bad element per row


def test_no_kink_is_said_for_a_smooth_spec():
    """Near-tied logits change the row's argmax within a difference step, but softmax has no kink there: a
    gradient wrong on those rows is reported without the kink note (it was once said of every such row)."""
    def wrong_on_ties(x, g):
        dx = gradients.softmax_vjp(x, g)
        top = np.sort(x, axis=-1)
        tied = top[:, -1] - top[:, -2] < 1e-6  # two equal maxima, up to 1e-9
        dx[tied] *= 1.01
        return dx

    report = check_gradient(wrong_on_ties, "softmax", "x,g->dx")
    assert not report.passed and report.worst.case == "near-tied logits", report.text()
    assert not report.worst.kink and "crossed a kink" not in report.text()


def test_the_worst_element_is_reported_with_both_values():
    report = check_gradient(gradients.softmax_vjp_one_element, "softmax", "x,g->dx")
    worst = report.worst
    assert worst.array == "dx" and len(worst.index) == 2 and worst.index[1] == 3
    assert worst.got == pytest.approx(worst.numeric * 1.001, rel=1e-6)
    assert worst.exact == pytest.approx(worst.numeric, rel=1e-8)
    text = report.text()
    for label in ("worst element dx[", "got", "numeric", "exact", "tolerance", "bad elements: 18 of 168",
                  "4 of 28 with logits ~ N(0, 1²)", "seed 0"):
        assert label in text


C_CASES = [
    ("softmax_vjp", "softmax", "x,g->dx", "float64", True),
    ("softmax_vjp_float_accumulator", "softmax", "x,g->dx", "float64", False),
    ("cross_entropy_loss_and_grad", "cross-entropy", "z,t->loss,dz", "float64", True),
    ("cross_entropy_grad_p_minus_t", "cross-entropy", "z,t->dz", "float64", False),
    ("cross_entropy_grad_p_minus_t", "cross-entropy-onehot", "z,t->dz", "float64", True),
    ("softmax_jacobian", "softmax", "x->J", "float64", True),
    ("softmax_jacobian_sign", "softmax", "x->J", "float64", False),
    ("softmax_vjp_float", "softmax", "x,g->dx", "float32", True),
    ("softmax_backward_from_output", "softmax", "y,g->dx", "float64", True),
    ("softmax_backward_from_output_no_y", "softmax", "y,g->dx", "float64", False),
]


@pytest.mark.slow
@pytest.mark.parametrize("function, against, signature, dtype, correct", C_CASES)
def test_c_gradients(function, against, signature, dtype, correct):
    require_tool("cc")
    result = run(f"gradients.c:{function}", "--against", against, "--signature", signature, "--dtype", dtype)
    assert result.returncode == (0 if correct else 1), result.stdout + result.stderr
    assert result.stdout.startswith("PASS" if correct else "FAIL")


def test_a_float_accumulator_in_a_double_kernel_is_caught():
    require_tool("cc")
    function = load_function(str(CORPUS / "gradients.c:softmax_vjp_float_accumulator"), parse_signature("x,g->dx"),
                             "float64")
    report = check_gradient(function, "softmax", "x,g->dx", n=50)
    assert not report.passed, report.text()
    assert any("accumulated in float32" in hint for hint in report.hints), report.text()


def test_the_exact_result_sees_errors_below_finite_differences():
    def off_by_3e10(x, g):
        return gradients.softmax_vjp(x, g) * (1 + 3e-10)

    with_spec = check_gradient(off_by_3e10, "softmax", "x,g->dx")
    assert not with_spec.passed
    assert any("too small for finite differences to see" in line for line in with_spec.failures), with_spec.text()
    without_spec = check_gradient(off_by_3e10, signature="x,g->dx", forward=gradients.softmax)
    assert without_spec.passed  # finite differences alone cannot resolve 3e-10


def test_a_single_wrong_element_at_n_1e5_is_localized():
    def wrong(x, g):
        dx = gradients.softmax_vjp(x, g)
        dx[1, 76_543] += 1e-3 * np.abs(dx[1]).max()
        return dx

    report = check_gradient(wrong, "softmax", "x,g->dx", n=100_000, batch=3)
    assert not report.passed and report.mode == "random projections"
    assert report.worst.index == (1, 76_543), report.text()


def test_a_1e6_relative_error_at_n_1e5_is_caught():
    report = check_gradient(gradients.softmax_vjp_relative_1e6, "softmax", "x,g->dx", n=100_000, batch=2)
    assert not report.passed


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_no_false_alarm_over_200_seeds(dtype):
    for seed in range(200):
        report = check_gradient(gradients.softmax_vjp, "softmax", "x,g->dx", dtype=dtype, seed=seed, n=5, batch=3)
        assert report.passed, f"seed {seed}: {report.text()}"
    for seed in range(0, 200, 4):  # losses: fewer seeds (every seed checks six target kinds)
        report = check_gradient(gradients.cross_entropy_grad, "cross-entropy", "z,t->dz", dtype=dtype, seed=seed,
                                n=5, batch=3)
        assert report.passed, f"seed {seed}: {report.text()}"


def test_mean_reduction():
    assert check_gradient(gradients.cross_entropy_grad_mean, "cross-entropy", "z,t->dz", reduction="mean").passed
    assert not check_gradient(gradients.cross_entropy_grad_mean, "cross-entropy", "z,t->dz").passed


def test_generic_mode_without_a_spec():
    report = check_gradient(gradients.squared_norm_ratio_vjp, signature="x,g->dx", forward=gradients.squared_norm_ratio)
    assert report.passed, report.text()
    result = run("gradients.py:softmax_vjp_sign", "--fn", "gradients.py:softmax")
    assert result.returncode == 1 and result.stdout.startswith("FAIL")


def test_assert_gradient_for_test_suites():
    assert assert_gradient(gradients.softmax_vjp, against="softmax", signature="x,g->dx").passed
    with pytest.raises(AssertionError, match="worst element"):
        assert_gradient(gradients.softmax_vjp_one_element, against="softmax", signature="x,g->dx")


def test_json_report():
    result = run("gradients.py:softmax_vjp_one_element", "--against", "softmax", "--json")
    assert result.returncode == 1
    data = json.loads(result.stdout)
    assert data["verdict"] == "FAIL" and data["bad_elements"] == 18
    assert data["worst"]["array"] == "dx" and data["worst"]["index"][1] == 3
    assert data["cases"][0] == {"case": "logits ~ N(0, 1²)", "bad_elements": 4, "elements": 28}
    assert {"got", "numeric", "exact", "tolerance", "absolute_error", "relative_error"} <= set(data["worst"])


@pytest.mark.slow
@pytest.mark.parametrize("formula, against, wrt, passes", [
    ("y[i]*(delta(i,j) - y[j])", "softmax", None, True),
    ("y[j]*(delta(i,j) - y[i])", "softmax", None, True),
    ("delta(i,j)*y[j] - y[i]*y[j]", "softmax", None, True),
    ("y[i]*(delta(i,j) - y[i])", "softmax", None, False),
    ("-q[k]/p[k]", "kl-divergence", "p", True),
    ("p[j] - q[j]", "kl-divergence", None, False),
    ("p[j]*sum(q[k], k) - q[j]", "kl-divergence", None, True),
    ("y[j] - t[j]", "cross-entropy-onehot", None, True),
])
def test_formulas(formula, against, wrt, passes):
    args = ["--formula", formula, "--against", against] + (["--wrt", wrt] if wrt else [])
    result = run(*args)
    assert result.returncode == (0 if passes else 1), result.stdout + result.stderr
    if not passes:
        assert "counterexample: n = " in result.stdout and "the formula gives" in result.stdout


@pytest.mark.slow
@pytest.mark.parametrize("args, fragment", [
    (["missing.py:f", "--against", "softmax"], "no such file"),
    (["gradients.py:nope", "--against", "softmax"], "has no function 'nope'"),
    (["gradients.py:raises", "--against", "softmax"], "raised ValueError: shapes do not match"),
    (["gradients.py:wrong_shape", "--against", "softmax"], "has shape"),
    (["gradients.py:softmax_vjp", "--against", "softmax", "--signature", "a,b->c"], "unknown signature"),
    (["gradients.py:softmax_vjp", "--against", "cross-entropy", "--signature", "x,g->dx"], "does not fit"),
    (["gradients.py:softmax_vjp"], "give --against"),
    (["--formula", "y[i] * (", "--against", "softmax"], "col"),
    (["--formula", "y[i]", "--against", "softmax"], "free index"),
    (["gradients.c:no_such", "--against", "softmax"], "has no function"),
    (["gradients.py:softmax_vjp", "--against", "softmax-temperature"], "--param T="),
])
def test_input_errors_exit_2_with_one_line(args, fragment):
    result = run(*args)
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.count("\n") == 1 and fragment in result.stderr and "Traceback" not in result.stderr


def test_an_unquoted_signature_gets_a_hint(tmp_path):
    result = subprocess.run(f"{sys.executable} -m softgrad verify gradients.py:softmax_vjp --against softmax "
                            f"--signature x,g->dx", shell=True, capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 2 and "quote it" in result.stderr


@pytest.mark.slow
def test_a_prebuilt_shared_library(tmp_path):
    cc = require_tool("cc")
    library = tmp_path / "libgradients.so"
    subprocess.run([cc, "-std=c99", "-O2", "-shared", "-fPIC", str(CORPUS / "gradients.c"), "-o", str(library), "-lm"],
                   check=True)
    right = run(f"{library}:softmax_vjp", "--against", "softmax")
    wrong = run(f"{library}:cross_entropy_grad_p_minus_t", "--against", "cross-entropy", "--signature", "z,t->dz")
    assert right.returncode == 0 and right.stdout.startswith("PASS"), right.stdout + right.stderr
    assert wrong.returncode == 1 and "worst element" in wrong.stdout


def _negated(x, g):
    return -gradients.softmax_vjp(x, g)


@pytest.mark.parametrize("function, against, options, hint", [
    (_negated, "softmax", {}, "a sign flip?"),
    (_negated, "softmax", {"n": 200}, "a sign flip?"),  # random projections: the hint comes from the exact result
    (gradients.cross_entropy_grad_mean, "cross-entropy", {}, "1/4 of the reference everywhere"),
    (gradients.cross_entropy_grad, "cross-entropy", {"reduction": "mean"}, "4× the reference everywhere"),
    (lambda x, g: 2 * gradients.softmax_vjp(x, g), "softmax", {}, "2× the reference everywhere"),
])
def test_a_constant_factor_is_named(function, against, options, hint):
    report = check_gradient(function, against, **options)
    assert not report.passed and any(hint in line for line in report.hints), report.text()
    assert "hint: " in report.text()


def test_no_hint_where_the_error_is_not_a_constant_factor():
    report = check_gradient(gradients.softmax_vjp_sign, "softmax", "x,g->dx")  # only the Σ term's sign is wrong
    assert not report.passed and report.hints == []


def test_no_relative_error_is_printed_when_the_reference_is_zero():
    from softgrad.verify.report import Report, Worst

    report = Report("f", "x,g->dx", "softmax", "float64", "full Jacobian", 0, 6e-6, elements=28)
    report.fail("dx does not match finite differences at 1 element(s) (logits ~ N(0, 1²))")
    report.worst = Worst("dx", (0, 3), 0.25, 0.0, 0.0, 1e-8, "tolerance", "logits ~ N(0, 1²)")
    text = report.text()
    assert "no relative error (the reference is 0, to within the tolerance)" in text and "e+29" not in text
    assert report.to_dict()["worst"]["relative_error"] is None


def _layer_norm_unbiased_backward(x, g):
    """Layer norm with torch.var's default (Bessel's correction, n − 1): right wherever n ≥ 2."""
    n = x.shape[-1]
    m = x.mean(-1, keepdims=True)
    s = np.sqrt(((x - m) ** 2).sum(-1, keepdims=True) / (n - 1) + 1e-5)
    y = (x - m) / s
    return (g - g.mean(-1, keepdims=True) - y * (g * y).sum(-1, keepdims=True) / (n - 1)) / s


def test_where_the_spec_has_no_value_there_is_no_verdict():
    """At n = 1 a variance over n − 1 has no value: the code's NaN there is no evidence against it (it was
    called wrong, exit 1); softgrad says it cannot judge (exit 2). At n = 7 the same code passes."""
    from softgrad.errors import SoftgradError

    spec = "m = sum(x[k], k)/n; v = sum((x[k] - m)^2, k)/(n - 1); y[i] = (x[i] - m)/sqrt(v + 0.00001)"
    assert check_gradient(_layer_norm_unbiased_backward, spec, "x,g->dx").passed
    with np.errstate(all="ignore"), pytest.raises(SoftgradError, match="no value at n = 1") as raised:
        check_gradient(_layer_norm_unbiased_backward, spec, "x,g->dx", n=1)
    assert raised.value.exit_status == 2
