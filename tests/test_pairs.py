"""verify of forward/backward pairs with a cache (issue #30): `FILE:FORWARD,BACKWARD` and a signature in two
parts; the pair is checked as the one function it composes into — its output and its gradients."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import require_module

from softgrad.errors import SoftgradError
from softgrad.verify import check_gradient
from softgrad.verify.pairs import compose, parse_pair

EXAMPLES = Path(__file__).resolve().parent.parent / "docs" / "examples"
LAYER_NORM = str(EXAMPLES / "layer-norm-affine.spec")
REGRESSION = str(EXAMPLES / "softmax-regression-labels.spec")
PAIR = "x,gamma,beta->out,cache; dout,cache->dx,dgamma,dbeta"

LAYERS = '''
import numpy as np

def layernorm_forward(x, gamma, beta):
    mean, var = x.mean(axis=1, keepdims=True), x.var(axis=1, keepdims=True)
    xhat = (x - mean) / np.sqrt(var + 1e-5)
    return gamma * xhat + beta, {"xhat": xhat, "gamma": gamma, "v": var + 1e-5}

def layernorm_backward(dout, cache):
    xhat, gamma, v = cache["xhat"], cache["gamma"], cache["v"]
    dxhat = dout * gamma
    dx = (dxhat - dxhat.mean(axis=1, keepdims=True) - xhat * (dxhat * xhat).mean(axis=1, keepdims=True)) / np.sqrt(v)
    return dx, (dout * xhat).sum(axis=0), dout.sum(axis=0)

def layernorm_backward_wrong_axis(dout, cache):  # the mean of dxhat·xhat over the batch, not the features
    xhat, gamma, v = cache["xhat"], cache["gamma"], cache["v"]
    dxhat = dout * gamma
    dx = (dxhat - dxhat.mean(axis=1, keepdims=True) - xhat * (dxhat * xhat).mean(axis=0, keepdims=True)) / np.sqrt(v)
    return dx, (dout * xhat).sum(axis=0), dout.sum(axis=0)

def layernorm_forward_without_cache(x, gamma, beta):
    return layernorm_forward(x, gamma, beta)[0]
'''


def _regression_forward(W, X, bias, label):
    z = X @ W.T + bias
    z = z - z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return -log_p[np.arange(len(X)), label].mean(), (np.exp(log_p), X, W, label)


def _regression_backward(cache):
    p, X, W, label = cache
    dz = p.copy()
    dz[np.arange(len(X)), label] -= 1
    dz /= len(X)
    return dz.T @ X, dz @ W, dz.sum(axis=0)


def _regression_backward_without_mean(cache):  # the 1/N left out
    p, X, W, label = cache
    dz = p.copy()
    dz[np.arange(len(X)), label] -= 1
    return dz.T @ X, dz @ W, dz.sum(axis=0)


@pytest.fixture()
def layers(tmp_path, monkeypatch):
    (tmp_path / "layers.py").write_text(LAYERS, encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    return tmp_path


class _Result:
    def __init__(self, completed: subprocess.CompletedProcess):
        self.exit_code, self.output = completed.returncode, completed.stdout + completed.stderr


def _verify(target: str, signature: str = PAIR, against: str = LAYER_NORM) -> _Result:
    """The verify command as a user runs it (its worker needs real standard streams)."""
    return _Result(subprocess.run([sys.executable, "-m", "softgrad", "verify", target, "--against", against,
                                   "--signature", signature], capture_output=True, text=True, timeout=300))


def test_a_right_pair_passes_and_its_output_is_compared_too(layers):
    result = _verify("layers.py:layernorm_forward,layernorm_backward")
    assert result.exit_code == 0, result.output
    assert result.output.startswith("PASS") and "258 elements compared" in result.output  # y, dx, dgamma, dbeta


def test_a_wrong_backward_fails_naming_the_array_and_index(layers):
    result = _verify("layers.py:layernorm_forward,layernorm_backward_wrong_axis")
    assert result.exit_code == 1, result.output
    assert result.output.startswith("FAIL") and "worst element dx[" in result.output


def test_a_forward_that_returns_no_cache_is_one_clear_line(layers):
    result = _verify("layers.py:layernorm_forward_without_cache,layernorm_backward")
    assert result.exit_code == 2
    assert "the forward returned 1 value(s); the signature names 2 (out, cache)" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize("signature, message", [
    ("x,gamma,beta->out,cache; cache->dx,dgamma,dbeta", "must take the upstream gradient of y"),
    ("x,gamma,beta->out,cache; dout,g,cache->dx,dgamma,dbeta", "only one (the upstream gradient) may be new"),
    ("x,gamma,beta->out,cache; dout,cache->dx,dgamma,dbeta; more->x", "FORWARD INPUTS->OUTPUTS; BACKWARD"),
    ("x,gamma,beta->out,cache; dout,cache->dx,out", "names of their own"),
])
def test_malformed_pair_signatures_are_one_line_errors(layers, signature, message):
    result = _verify("layers.py:layernorm_forward,layernorm_backward", signature)
    assert result.exit_code == 2 and message in result.output, result.output


def test_a_pair_from_python_with_a_loss_and_labels():
    signature = "W,X,bias,label->loss,cache; cache->dW,dX,dbias"
    report = check_gradient((_regression_forward, _regression_backward), against=REGRESSION, signature=signature)
    assert report.passed, report.text()
    wrong = check_gradient((_regression_forward, _regression_backward_without_mean), against=REGRESSION,
                           signature=signature)
    assert not wrong.passed and "worst element d" in wrong.text()


def test_compose_hands_the_cache_on_by_name():
    pair = parse_pair("a,b->s,keep; ds,keep,a->da,db")
    assert pair.takes == ("a", "b", "ds") and pair.returns == ("s", "da", "db")
    both = compose(lambda a, b: (a + b, {"b": b}), lambda ds, keep, a: (ds * keep["b"], ds * a), pair)
    assert both(2.0, 3.0, 10.0) == (5.0, 30.0, 20.0)
    assert parse_pair("x,g->dx") is None
    with pytest.raises(SoftgradError, match="a name appears twice"):
        parse_pair("a,a->s; ds->da")


LINEAR = '''
import torch
import jax
import jax.numpy as jnp


class LinearFunction(torch.autograd.Function):  # the PyTorch docs' example, three arrays
    @staticmethod
    def forward(ctx, input, weight, bias):
        ctx.save_for_backward(input, weight, bias)
        return input.mm(weight.t()) + bias

    @staticmethod
    def backward(ctx, grad_output):
        input, weight, bias = ctx.saved_tensors
        return grad_output.mm(weight), grad_output.t().mm(input), grad_output.sum(0)


class LinearWrongBias(LinearFunction):
    @staticmethod
    def backward(ctx, grad_output):
        input, weight, bias = ctx.saved_tensors
        return grad_output.mm(weight), grad_output.t().mm(input), grad_output.mean(0)


@jax.custom_vjp
def linear(X, W, bias):
    return X @ W.T + bias


def _linear_forward(X, W, bias):
    return linear(X, W, bias), (X, W)


def _linear_backward(saved, dy):
    X, W = saved
    return dy @ W, dy.T @ X, dy.sum(axis=0)


linear.defvjp(_linear_forward, _linear_backward)


@jax.custom_vjp
def linear_transposed(X, W, bias):
    return X @ W.T + bias


linear_transposed.defvjp(_linear_forward, lambda saved, dy: (dy @ saved[1], saved[0].T @ dy, dy.sum(axis=0)))
'''


@pytest.mark.parametrize("name, right", [("LinearFunction", True), ("LinearWrongBias", False), ("linear", True)])
def test_framework_code_with_several_arrays_runs_its_own_backward(tmp_path, monkeypatch, name, right):
    require_module("torch")
    require_module("jax")
    (tmp_path / "linear.py").write_text(LINEAR, encoding="utf-8")
    (tmp_path / "linear.spec").write_text("y[b, c] = sum(X[b, d] * W[c, d], d) + bias[c]\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    result = _verify(f"linear.py:{name}", "X,W,bias,dy->dX,dW,dbias", "linear.spec")
    assert result.exit_code == (0 if right else 1), result.output
    assert "called as" in result.output and "Warning" not in result.output
    if not right:
        assert "worst element dbias[" in result.output


def test_a_jax_backward_with_a_transposed_gradient_is_one_line_from_jax(tmp_path, monkeypatch):
    require_module("torch")
    require_module("jax")
    (tmp_path / "linear.py").write_text(LINEAR, encoding="utf-8")
    (tmp_path / "linear.spec").write_text("y[b, c] = sum(X[b, d] * W[c, d], d) + bias[c]\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)
    result = _verify("linear.py:linear_transposed", "X,W,bias,dy->dX,dW,dbias", "linear.spec")
    assert result.exit_code == 2 and "shapes do not match" in result.output, result.output  # JAX refuses it
    assert "Traceback" not in result.output and len(result.output.strip().splitlines()) == 1


class _LayerNorm:
    """A layer as course code writes one: forward keeps what backward needs on self."""

    def forward(self, x, gamma, beta):
        mean, var = x.mean(axis=1, keepdims=True), x.var(axis=1, keepdims=True)
        self.xhat, self.gamma, self.v = (x - mean) / np.sqrt(var + 1e-5), gamma, var + 1e-5
        return gamma * self.xhat + beta

    def backward(self, dout):
        dxhat = dout * self.gamma
        dx = (dxhat - dxhat.mean(axis=1, keepdims=True)
              - self.xhat * (dxhat * self.xhat).mean(axis=1, keepdims=True)) / np.sqrt(self.v)
        return dx, (dout * self.xhat).sum(axis=0), dout.sum(axis=0) * 2  # dbeta doubled: the bug to find


def test_a_layer_with_state_is_checked_with_a_two_part_signature():
    report = check_gradient(_LayerNorm, against=LAYER_NORM, signature="x,gamma,beta->out; dout->dx,dgamma,dbeta")
    assert not report.passed and "worst element dbeta[" in report.text()
    assert "called as _LayerNorm().forward(…), then its backward(…)" in report.text()
    with pytest.raises(SoftgradError, match="signature in two parts"):
        check_gradient(_LayerNorm, against=LAYER_NORM, signature="x,gamma,beta,dy->dx,dgamma,dbeta")


def _softmax_forward(x):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    out = e / e.sum(axis=1, keepdims=True)
    return out, {"y": out}


def _softmax_backward(dout, cache):
    y = cache["y"]
    return y * (dout - (dout * y).sum(axis=1, keepdims=True))


def _softmax_backward_without_the_sum(dout, cache):
    return cache["y"] * dout


def test_a_pair_for_a_one_index_spec_is_checked_by_rows():
    """softmax is y[i] = …: its pair is checked as y[b, i] = …, the spec with its row index written out."""
    signature = "x->out,cache; dout,cache->dx"
    assert check_gradient((_softmax_forward, _softmax_backward), against="softmax", signature=signature).passed
    wrong = check_gradient((_softmax_forward, _softmax_backward_without_the_sum), against="softmax",
                           signature=signature)
    assert not wrong.passed and "worst element dx[" in wrong.text()


LAYERS_WITH_SETTINGS = '''
import numpy as np

def layernorm_forward(x, gamma, beta, ln_param):
    """Course code's convention: a dict of settings, here the epsilon."""
    eps = ln_param.get("eps", 1e-5)
    mean, var = x.mean(axis=1, keepdims=True), x.var(axis=1, keepdims=True)
    xhat = (x - mean) / np.sqrt(var + eps)
    return gamma * xhat + beta, (xhat, gamma, var + eps)

def layernorm_backward(dout, cache):
    xhat, gamma, v = cache
    dxhat = dout * gamma
    dx = (dxhat - dxhat.mean(axis=1, keepdims=True) - xhat * (dxhat * xhat).mean(axis=1, keepdims=True)) / np.sqrt(v)
    return dx, (dout * xhat).sum(axis=0, keepdims=True), dout.sum(axis=0, keepdims=True)
'''


@pytest.mark.parametrize("extra, verdict", [
    ([], 0),  # the dict's eps sets the spec's eps
    (["--param", "eps=0.2"], 1),  # the spec at 0.2, the code at the dict's 0.1: a real difference
])
def test_a_settings_dict_is_passed_to_the_code_and_sets_the_spec_parameters_it_names(tmp_path, extra, verdict):
    (tmp_path / "layers.py").write_text(LAYERS_WITH_SETTINGS)
    (tmp_path / "ln.spec").write_text("m[b] = sum(x[b, k], k) / size(k)\nv[b] = sum((x[b, k] - m[b])**2, k) / size(k)\n"
                                      "y[b, k] = gamma[k] * (x[b, k] - m[b]) / sqrt(v[b] + eps) + beta[k]\n")
    result = subprocess.run([sys.executable, "-m", "softgrad", "verify",
                             "layers.py:layernorm_forward,layernorm_backward", "--against", "ln.spec", "--signature",
                             "x,gamma,beta,ln_param->out,cache; dout,cache->dx,dgamma,dbeta",
                             "--param", 'ln_param={"eps": 0.1, "mode": "train"}', *extra],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == verdict, result.stdout + result.stderr
    if verdict == 0:
        assert 'ln_param = {"eps": 0.1, "mode": "train"} is passed as the code\'s argument ln_param; the ' \
               "spec's eps = 0.1" in result.stdout
        assert "dgamma is returned with shape (1, 6) and read as (6,)" in result.stdout


@pytest.mark.parametrize("value, message", [
    ('{"eps": 0.1', "--param ln_param: not a JSON object (Expecting ',' delimiter"),
    ("[1, 2]", "--param takes NAME=VALUE with a number, or NAME='{...}' with a JSON object"),
])
def test_a_malformed_settings_dict_is_one_line(tmp_path, value, message):
    result = subprocess.run([sys.executable, "-m", "softgrad", "verify", "layers.py:f", "--against", LAYER_NORM,
                             "--signature", PAIR, "--param", f"ln_param={value}"],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 2 and message in result.stderr and result.stdout == "", result.stderr


@pytest.mark.parametrize("example, signature", [
    ("softmax-regression-labels", "W,X,bias,label->L,cache; cache->dW,dX,dbias"),
    ("layer-norm-affine", "x,gamma,beta->y,cache; dy,cache->dx,dgamma,dbeta"),
])
def test_the_generated_forward_saving_and_backward_pass_as_a_pair_with_a_cache(example, signature, tmp_path):
    """The generated NumPy module's forward_saving() and backward(cache) follow the course-code convention that
    `verify` checks (forward returns the output and a cache, backward takes the upstream gradient and the cache)."""
    from softgrad.codegen.build import import_path
    from softgrad.codegen.emit import emit
    from softgrad.derive import derive_spec, parse_spec

    spec = EXAMPLES / f"{example}.spec"
    ((file_name, text),) = emit(derive_spec(parse_spec(spec.read_text(), name=example)), "numpy").items()
    (tmp_path / file_name).write_text(text)
    module = import_path(tmp_path / file_name)
    report = check_gradient((module.forward_saving, module.backward), against=str(spec), signature=signature)
    assert report.passed, report.text()
