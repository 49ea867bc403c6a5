"""The functions users write: erf, abs, min, max, log1p, softplus and n as a value — derived, generated
and compared with PyTorch's autograd (an oracle that shares nothing with softgrad)."""

import numpy as np
import pytest
from conftest import require_module

import softgrad
from softgrad.codegen.build import import_path
from softgrad.codegen.emit import emit
from softgrad.derive.spec import parse_spec
from softgrad.errors import SpecError

#: spec → the same function in torch
FUNCTIONS = {
    "y[i] = 0.5*x[i]*(1 + erf(x[i]/sqrt(2)))": lambda torch, x: torch.nn.functional.gelu(x),
    "y[i] = max(x[i], 0)": lambda torch, x: torch.relu(x),
    "y[i] = max(x[i], 0.01*x[i])": lambda torch, x: torch.nn.functional.leaky_relu(x, 0.01),
    "y[i] = min(x[i], 1, x[i]^2)": lambda torch, x: torch.minimum(torch.minimum(x, torch.ones_like(x)), x**2),
    "y[i] = x[i]/(1 + abs(x[i]))": lambda torch, x: torch.nn.functional.softsign(x),
    "y[i] = abs(x[i]) / sum(abs(x[k]), k)": lambda torch, x: x.abs() / x.abs().sum(-1, keepdim=True),
    "y[i] = softplus(x[i])": lambda torch, x: torch.nn.functional.softplus(x),
    "y[i] = log1p(x[i]^2)": lambda torch, x: torch.log1p(x**2),
    "y[i] = x[i] - sum(x[k], k)/n": lambda torch, x: x - x.mean(-1, keepdim=True),
    "m = sum(x[k], k)/n; v = sum((x[k] - m)^2, k)/n; y[i] = (x[i] - m)/sqrt(v + 0.00001)":
        lambda torch, x: torch.nn.functional.layer_norm(x, x.shape[-1:], eps=1e-5),
}


@pytest.mark.parametrize("spec", list(FUNCTIONS))
def test_new_functions_match_torch_autograd(spec, tmp_path):
    torch = require_module("torch")
    derivation = softgrad.derive(spec)
    ((name, text),) = emit(derivation, "numpy").items()
    (tmp_path / name).write_text(text)
    module = import_path(tmp_path / name)
    rng = np.random.default_rng(5)
    x = rng.normal(0, 2, (6, 9))
    x[np.abs(x) < 1e-3] = 0.5  # away from the kinks of abs, max and min
    x[np.abs(x - 1) < 1e-3] = 0.5
    g = rng.normal(size=x.shape)
    inputs = torch.tensor(x, requires_grad=True)
    output = FUNCTIONS[spec](torch, inputs)
    output.backward(torch.tensor(g))
    np.testing.assert_allclose(module.y_forward(x), output.detach().numpy(), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(module.y_vjp(x, g), inputs.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_a_tie_of_max_gives_half_to_each_argument_as_torch_maximum_does(tmp_path):
    torch = require_module("torch")
    derivation = softgrad.derive("y[i] = max(x[i], 0)")
    ((name, text),) = emit(derivation, "numpy").items()
    (tmp_path / name).write_text(text)
    module = import_path(tmp_path / name)
    at_the_kink = torch.zeros(1, 1, requires_grad=True)
    torch.maximum(at_the_kink, torch.zeros(1, 1)).backward(torch.ones(1, 1))
    assert module.y_vjp(np.zeros((1, 1)), np.ones((1, 1)))[0, 0] == float(at_the_kink.grad) == 0.5
    assert "kink" in next(step for step in derivation.steps if step.rule == "max rule").reason.text()


def test_min_and_max_take_two_or_more_arguments_and_log1p_a_real_constant():
    with pytest.raises(SpecError, match="two or more"):
        parse_spec("y[i] = max(x[i])")
    with pytest.raises(SpecError, match="log1p"):
        parse_spec("y[i] = x[i] + log1p(-2)")
    assert parse_spec("y[i] = max(x[i], 0, -x[i])").output.expr.func.__name__ == "Max"
