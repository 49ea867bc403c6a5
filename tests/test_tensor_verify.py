"""verify for specs with several indices: functions written as course solutions and papers write them,
checked with a signature that names every input and output, right ones pass, wrong ones fail with the
worst element named by array and full index."""

import functools
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from softgrad.derive import derive_spec, load_spec
from softgrad.errors import SoftgradError
from softgrad.verify.arrays import parse_array_signature, parse_sizes, verify_arrays

ROOT = Path(__file__).parent.parent
EXAMPLES = ROOT / "docs" / "examples"
sys.path.insert(0, str(Path(__file__).parent / "corpus"))
import tensor_code  # noqa: E402

CASES = {  # function → (spec, signature, right?)
    "softmax_regression": ("softmax-regression", "X,W,bias,T->loss,dW,dbias", True),
    "sum_reduction": ("softmax-regression", "X,W,bias,T->loss,dW,dbias", False),
    "labels_mean_loss": ("softmax-regression-labels", "X,W,bias,label->loss,dW,dX,dbias", True),
    "labels_sign_flip": ("softmax-regression-labels", "X,W,bias,label->loss,dW,dX,dbias", False),
    "attention_backward": ("attention", "Q,K,V,dO->dQ,dK,dV", True),
    "attention_wrong_scale": ("attention", "Q,K,V,dO->dQ,dK,dV", False),
    "layer_norm_backward": ("layer-norm-affine", "x,gamma,beta,dy->dx,dgamma,dbeta", True),
    "layer_norm_transposed_dgamma": ("layer-norm-affine", "x,gamma,beta,dy->dx,dgamma,dbeta", False),
    "naive": ("softmax-regression", "X,W,bias,T->loss,dW,dbias", True),  # right, except at large logits
    "layer_norm_keepdims": ("layer-norm-affine", "x,gamma,beta,dy->dx,dgamma,dbeta", True),
}


@functools.cache
def _derived(spec_name, signature):
    spec = load_spec(str(EXAMPLES / f"{spec_name}.spec"))
    outputs = signature.split("->")[1].split(",")
    wrt = ",".join(o[1:] for o in outputs if o.startswith("d") and o[1:] in spec.inputs)
    return derive_spec(spec, wrt=wrt, time_limit=None)


def _check(function_name, seed=0, extremes=False, sizes=None):
    spec_name, signature, _ = CASES[function_name]
    derivation = _derived(spec_name, signature)
    chosen = parse_array_signature(signature, derivation)
    return verify_arrays(getattr(tensor_code, function_name), derivation, chosen, parse_sizes(sizes, derivation.spec),
                         label=function_name, against=spec_name, seed=seed, extremes=extremes)


@pytest.mark.parametrize("function_name", list(CASES))
def test_right_code_passes_and_wrong_code_fails(function_name):
    report = _check(function_name)
    assert report.passed == CASES[function_name][2], report.text()
    assert report.elements > 0


def test_the_report_names_the_worst_element_and_the_reduction_factor():
    report = _check("sum_reduction", sizes="b=8,c=10,d=5")
    assert report.worst is not None and report.worst.array in ("dW", "dbias")
    text = report.text()
    assert f"{report.worst.array}[" in text and "n_b = 8" in text
    assert any("8 times the exact gradient (n_b): looks like a mean/sum reduction mismatch" in h for h in report.hints)


def test_sign_flip_and_scale_hints():
    assert any("sign flipped" in h for h in _check("labels_sign_flip").hints)
    assert any("√n_e" in h for h in _check("attention_wrong_scale").hints)


def test_extremes_find_code_that_overflows_and_can_be_turned_off():
    report = _check("naive", extremes=True)
    assert not report.passed and "inputs of order 1000" in report.text()
    quiet = _check("naive", extremes=False)
    assert quiet.passed and "--extremes off" in quiet.text()


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(10))
def test_no_false_alarm_on_right_code_over_seeds(seed):
    for function_name, (_, _, right) in CASES.items():
        if right and function_name != "naive":
            assert _check(function_name, seed=seed, extremes=True).passed, function_name


@pytest.mark.parametrize("signature, message", [
    ("X,W,bias->dW", "does not pass T"),
    ("X,W,bias,T->dT2", "signature output 'dT2'"),
    ("X,W,bias,T,Z->dW", "not an input or parameter of the spec"),
    ("X,W,bias,T->loss", "returns no gradient"),
    ("X,W,bias,T", "INPUTS->OUTPUTS"),
])
def test_bad_signatures_are_one_clear_error(signature, message):
    derivation = _derived("softmax-regression", "X,W,bias,T->loss,dW,dbias")
    with pytest.raises(SoftgradError, match=message):
        parse_array_signature(signature, derivation)


@pytest.mark.slow
def test_cli_exit_status_and_report(tmp_path):
    spec = str(EXAMPLES / "softmax-regression-labels.spec")
    corpus = str(Path(__file__).parent / "corpus" / "tensor_code.py")
    common = [sys.executable, "-m", "softgrad", "verify", "--against", spec,
              "--signature", "X,W,bias,label->loss,dW,dX,dbias", "--size", "b=6,c=4,d=3"]
    right = subprocess.run([*common, f"{corpus}:labels_mean_loss"], capture_output=True, text=True)
    assert right.returncode == 0, right.stdout + right.stderr
    assert right.stdout.startswith("PASS")
    wrong = subprocess.run([*common, f"{corpus}:labels_sign_flip"], capture_output=True, text=True)
    assert wrong.returncode == 1 and "worst element dW[" in wrong.stdout
    unknown = subprocess.run([*common[:-2], "--size", "q=3", f"{corpus}:labels_mean_loss"], capture_output=True,
                             text=True)
    assert unknown.returncode == 2 and unknown.stderr.count("\n") == 1 and "no index 'q'" in unknown.stderr


def test_python_api_checks_tensor_specs_in_process():
    from softgrad.verify import assert_gradient, check_gradient

    spec = str(EXAMPLES / "softmax-regression-labels.spec")
    report = assert_gradient(tensor_code.labels_mean_loss, against=spec,
                             signature="X,W,bias,label->loss,dW,dX,dbias", sizes="b=7")
    assert report.passed and report.sizes["b"] == 7
    assert not check_gradient(tensor_code.labels_sign_flip, against=spec,
                              signature="X,W,bias,label->loss,dW,dX,dbias").passed
    with pytest.raises(SoftgradError, match="W,X,bias,label->loss,dW,dX,dbias"):
        check_gradient(tensor_code.labels_mean_loss, against=spec)


@pytest.mark.parametrize("function_name", ["labels_mean_loss", "labels_sign_flip"])
def test_reports_validate_against_their_schema(function_name):
    import json

    import jsonschema

    schema = json.loads((ROOT / "softgrad" / "schemas" / "report-2.schema.json").read_text())
    report = _check(function_name)
    document = json.loads(json.dumps(report.to_dict()))
    jsonschema.validate(document, schema)
    assert (document["verdict"] == "PASS") == report.passed
    if not report.passed:
        assert document["worst"]["array"] in ("dW", "dX", "dbias", "loss") and document["worst"]["index"]


WEIGHT_DECAY = """z[b, c] = sum(W[c, d] * X[b, d], d)
P[b, c] = exp(z[b, c]) / sum(exp(z[b, k]), k)
L = -sum(log(P[b, y[b]]), b) / size(b) + 0.5 * reg * sum(W[e, f]^2, e, f)"""


def _softmax_loss_vectorized(W, X, y, reg, decay_factor=1.0):
    """CS231n's softmax_loss_vectorized (W as (classes, features)); decay_factor 2 is the published bug."""
    import numpy as np

    z = X @ W.T
    p = np.exp(z - z.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    rows = np.arange(len(X))
    loss = -np.log(p[rows, y]).mean() + 0.5 * reg * (W * W).sum()
    d = p.copy()
    d[rows, y] -= 1
    return loss, d.T @ X / len(X) + decay_factor * reg * W


@pytest.mark.parametrize("decay_factor, right", [(1.0, True), (2.0, False)])
def test_a_signature_names_a_parameter_where_the_code_takes_it(decay_factor, right):
    """`W,X,y,reg->loss,dW`: the course code's own argument order, reg given by --param; a gradient with its
    weight decay doubled fails on dW."""
    derivation = derive_spec(load_spec(WEIGHT_DECAY), wrt="W", time_limit=None)
    signature = parse_array_signature("W,X,y,reg->loss,dW", derivation)

    def function(W, X, y, reg):
        assert isinstance(reg, float) and reg == 0.5  # the parameter arrives where the signature names it
        return _softmax_loss_vectorized(W, X, y, reg, decay_factor)

    report = verify_arrays(function, derivation, signature, parse_sizes(None, derivation.spec), label="softmax_loss",
                           against="weight decay", parameters={"reg": 0.5}, extremes=False)
    assert report.passed == right, report.text()
    assert right or report.worst.array == "dW"
    with pytest.raises(SoftgradError, match="'bogus' is not an input or parameter"):
        parse_array_signature("W,X,y,bogus->loss,dW", derivation)


def test_keepdims_outputs_are_read_in_the_specs_shape_and_said():
    """dgamma, dbeta of shape (1, D) where the spec's is (D,): every value right, so it passes, and the report
    says how they were read; a shape with other sizes is still refused in one line."""
    report = _check("layer_norm_keepdims")
    assert report.passed and any(re.match(r"dgamma is returned with shape \(1, \d+\) and read as \(\d+,\)", note)
                                 for note in report.conventions)
    spec_name, signature, _ = CASES["layer_norm_backward"]
    derivation = _derived(spec_name, signature)
    with pytest.raises(SoftgradError, match=r"dgamma has shape \(1, 4\), expected \(\d+,\)"):
        verify_arrays(lambda x, g, b, dy: (dy, np.zeros((1, 4)), np.zeros(5)), derivation,
                      parse_array_signature(signature, derivation), parse_sizes(None, derivation.spec), label="f",
                      against=spec_name)


WEIGHT_DECAY_SPEC = ("z[b, c] = sum(W[c, d] * X[b, d], d)\nP[b, c] = exp(z[b, c]) / sum(exp(z[b, k]), k)\n"
                     "L = -sum(log(P[b, y[b]]), b) / size(b) + reg * sum(W[e, f]^2, e, f)\n")


def _softmax_loss(W, X, y, reg, decay_factor=2.0):
    z = X @ W.T
    z = z - z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    N = X.shape[0]
    dz = np.exp(log_p)
    dz[np.arange(N), y] -= 1
    return -log_p[np.arange(N), y].mean() + reg * np.sum(W * W), dz.T @ X / N + decay_factor * reg * W


@pytest.mark.parametrize("mistake, hint", [
    (lambda W, X, y, reg: _softmax_loss(W, X, y, reg, decay_factor=1.0), "differs from the exact gradient by -0.5·W"),
    (lambda W, X, y, reg: (lambda loss, dW: (loss, np.roll(dW, 1, axis=0)))(*_softmax_loss(W, X, y, reg)),
     "moved by 1 along axis 0"),
])
def test_hints_name_the_mistakes_of_course_code(tmp_path, mistake, hint):
    """Weight decay with its factor off (reg·W for reg·ΣW², the bug of a published solution) and a gradient read
    one row off are named, not only counted."""
    from softgrad.verify import check_gradient

    spec = tmp_path / "decay.spec"
    spec.write_text(WEIGHT_DECAY_SPEC, encoding="utf-8")
    assert check_gradient(_softmax_loss, against=str(spec), signature="W,X,y,reg->loss,dW",
                          parameters={"reg": 0.5}).passed
    report = check_gradient(mistake, against=str(spec), signature="W,X,y,reg->loss,dW", parameters={"reg": 0.5})
    assert not report.passed and any(hint in h for h in report.hints), report.text()


def test_a_gradient_returned_in_another_inputs_place_is_named():
    from softgrad.verify import check_gradient

    def swapped(x, gamma, beta, dy):  # dgamma and dbeta returned the wrong way round
        right = tensor_code.layer_norm_backward(x, gamma, beta, dy)
        return right[0], right[2], right[1]

    report = check_gradient(swapped, against=str(EXAMPLES / "layer-norm-affine.spec"),
                            signature="x,gamma,beta,dy->dx,dgamma,dbeta")
    assert not report.passed
    assert "dgamma is the exact gradient of beta, not of gamma" in report.hints, report.text()


def test_large_gradients_are_checked_against_differences_by_projections():
    """Above EVERY_ENTRY_UP_TO entries a gradient is compared with finite differences along random ±1 directions
    (two calls of the forward each, not two per entry); small ones entry by entry; --mode chooses either."""
    right = _check("softmax_regression", sizes="b=64,c=200,d=32")  # dW has 6400 entries
    assert right.passed and right.mode == "random projections", right.text()
    small = _check("softmax_regression")
    assert small.passed and small.mode == "every element"
    chosen = subprocess.run([sys.executable, "-m", "softgrad", "verify", "tensor_code.py:softmax_regression",
                             "--against", str(EXAMPLES / "softmax-regression.spec"), "--signature",
                             CASES["softmax_regression"][1], "--mode", "projections"],
                            capture_output=True, text=True, timeout=300, cwd=ROOT / "tests" / "corpus")
    assert chosen.returncode == 0 and "mode: random projections" in chosen.stdout, chosen.stdout + chosen.stderr


def test_a_projection_that_disagrees_is_bisected_to_the_wrong_entry():
    """The projections judge by finite differences alone: an entry wrong by 1 is found by halving the direction,
    and reported with its own central difference."""
    from softgrad.verify.arrays import _compare_projections, _reference
    from softgrad.verify.generated import module_gradients, sample_array_inputs
    from softgrad.verify.report import Report

    spec_name, signature, _ = CASES["softmax_regression"]
    derivation = _derived(spec_name, signature)
    sizes = parse_sizes("b=16,c=30,d=20", derivation.spec)
    arrays, parameters = sample_array_inputs(derivation, sizes, 0)
    reference = _reference(derivation)
    exact = np.asarray(module_gradients(reference, derivation, arrays, parameters)["W"], dtype=np.float64)
    report = Report("f", signature, spec_name, "float64", "random projections", 0, 1e-6)
    assert _compare_projections(report, reference, derivation, arrays, parameters, "dW", "W", exact, exact,
                                "inputs of order 1", 0) == 0 and report.passed
    wrong = exact.copy()
    wrong[17, 5] += 1.0
    assert _compare_projections(report, reference, derivation, arrays, parameters, "dW", "W", wrong, exact,
                                "inputs of order 1", 0) == 1
    assert "bisection found dW[17, 5]" in report.failures[0] and report.worst.index == (17, 5)
    assert report.worst.numeric == pytest.approx(exact[17, 5], abs=1e-6)


def test_code_that_keeps_state_between_calls_fails_its_structural_checks():
    """Right at every input case, then different: a passing report also says the code is repeatable, linear in
    its upstream gradient and 0 where that is 0, so a gradient that keeps state between calls cannot pass."""
    from softgrad.verify import check_gradient

    calls = []

    def drifting(Q, K, V, dO):
        calls.append(1)
        dQ, dK, dV = tensor_code.attention_backward(Q, K, V, dO)
        return (dQ, dK, dV) if len(calls) <= 3 else (dQ * (1 + 1e-3 * len(calls)), dK, dV)

    right = check_gradient(tensor_code.attention_backward, str(EXAMPLES / "attention.spec"), "Q,K,V,dO->dQ,dK,dV")
    assert right.passed and [name for name, ok, _ in right.checks if ok] == ["repeatable", "linear in dO",
                                                                            "0 where dO = 0"]
    wrong = check_gradient(drifting, str(EXAMPLES / "attention.spec"), "Q,K,V,dO->dQ,dK,dV")
    assert not wrong.passed and "the function is not repeatable" in wrong.failures[0], wrong.text()


def test_per_row_code_and_named_arrays_share_the_mistake_detectors():
    """One set of detectors reads a wrong gradient beside the exact one, whatever the spec's indices: float32
    rounding is now said for named arrays, an index one off for per-row code."""
    from softgrad.verify import check_gradient

    def in_float32(Q, K, V, dO):
        arrays = [np.asarray(a, dtype=np.float32) for a in (Q, K, V, dO)]
        return tuple(np.asarray(g, dtype=np.float64) for g in tensor_code.attention_backward(*arrays))

    rounded = check_gradient(in_float32, str(EXAMPLES / "attention.spec"), "Q,K,V,dO->dQ,dK,dV")
    assert not rounded.passed and any("float32 rounding" in hint for hint in rounded.hints), rounded.text()

    sys.path.insert(0, str(ROOT / "tests" / "corpus"))
    import gradients

    def one_off(x, g):
        return np.roll(gradients.softmax_vjp(x, g), 1, axis=-1)

    def rounded_by_float32(x, g):  # off by float32's rounding, though not made of float32 numbers
        dx = gradients.softmax_vjp(x, g)
        return dx * (1 + 3e-7 * np.cos(np.arange(dx.size).reshape(dx.shape)))

    nearly = check_gradient(rounded_by_float32, "softmax", "x,g->dx")
    assert not nearly.passed and any("off by 3e-07 relative" in hint for hint in nearly.hints), nearly.text()

    shifted = check_gradient(one_off, "softmax", "x,g->dx")
    assert not shifted.passed and any("moved by 1 along axis 1" in hint for hint in shifted.hints), shifted.text()


def test_named_array_code_that_changes_an_input_or_loses_precision_fails():
    """The one way every verifier calls code: an input changed in place (a caller's array corrupted) and a
    gradient narrower than its inputs (float32 for float64) are failures for named arrays too, each said in
    one line, not read as whatever values came back."""
    from softgrad.verify import check_gradient

    def scaling_in_place(Q, K, V, dO):
        gradients = tensor_code.attention_backward(Q, K, V, dO)
        dO *= 2.0
        return gradients

    def narrowing(Q, K, V, dO):
        return tuple(g.astype(np.float32) for g in tensor_code.attention_backward(Q, K, V, dO))

    spec = str(EXAMPLES / "attention.spec")
    changed = check_gradient(scaling_in_place, spec, "Q,K,V,dO->dQ,dK,dV")
    assert not changed.passed and "the function changed its input dO in place" in changed.failures[0], changed.text()
    narrow = check_gradient(narrowing, spec, "Q,K,V,dO->dQ,dK,dV")
    assert not narrow.passed and "dQ is float32 for float64 inputs (precision lost)" in narrow.failures[0]


def test_one_entry_loads_and_checks_code_for_every_spec():
    """check_target is what `softgrad verify FILE:FUNCTION` runs: the same call loads and checks per-row code and
    code over named arrays (each in its child process), and refuses a spec and a forward function together."""
    from softgrad.verify import check_target

    corpus = Path(__file__).parent / "corpus"
    per_row = check_target(f"{corpus / 'gradients.py'}:softmax_vjp", "softmax", "x,g->dx")
    named = check_target(f"{corpus / 'tensor_code.py'}:attention_backward", str(EXAMPLES / "attention.spec"),
                         "Q,K,V,dO->dQ,dK,dV")
    assert per_row.passed and named.passed and named.sizes != per_row.sizes
    with pytest.raises(SoftgradError, match="give --against SPEC, or --fn"):
        check_target(f"{corpus / 'gradients.py'}:softmax_vjp", "softmax", "x,g->dx",
                     forward_reference=f"{corpus / 'gradients.py'}:softmax_vjp")
