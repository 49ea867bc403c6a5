"""Indices that only carry a batch (issue #34): b and h of multi-head attention are lifted, not enumerated — the
spec is derived as one (b, h) block, every step proved, and written back with b and h in every array; the
generated code equals torch's attention for every block."""

import numpy as np
import pytest
import sympy as sp
from conftest import checked_module, require_module

from softgrad.derive import derive_spec, parse_spec
from softgrad.derive.lift import carried_ranges

ATTENTION = ("S[{p}i, j] = sum(Q[{p}i, e] * K[{p}j, e], e) / sqrt(size(e))\n"
             "P[{p}i, j] = exp(S[{p}i, j]) / sum(exp(S[{p}i, k]), k)\nO[{p}i, f] = sum(P[{p}i, j] * V[{p}j, f], j)")


@pytest.mark.parametrize("text, carried", [
    (ATTENTION.format(p="b, h, "), ["b", "h"]),
    (ATTENTION.format(p="b, "), ["b"]),
    (ATTENTION.format(p=""), []),
    ("y[b, h, i] = exp(x[b, h, i]) / sum(exp(x[b, h, k]), k)", ["b"]),  # one range must stay: h is its rows
    ("z[b, c] = sum(W[c, d] * X[b, d], d)\nL = sum(z[b, c]^2, b, c)", []),  # a loss sums over b
    ("y[b, i] = w[i] * x[b, i] / size(b)", []),  # W without b, and size(b) read
])
def test_carried_ranges_are_those_every_array_has_and_nothing_crosses(text: str, carried: list[str]) -> None:
    assert carried_ranges(parse_spec(text, fold_rows=False)) == carried


def test_attention_with_batch_and_heads_is_one_block_lifted_and_proved() -> None:
    derivation = derive_spec(parse_spec(ATTENTION.format(p="b, h, "), "mha"))
    assert all(step.proved for step in derivation.steps)
    assert "b and h are carried by every array and crossed by no sum" in derivation.check_summary
    assert derivation.tensor.axes["dQ"] == ("b", "h", "i", "e")
    for definition in derivation.tensor.backward:  # every array read at the block's own b, h
        assert definition.indices[:2] == (sp.Symbol("b", integer=True), sp.Symbol("h", integer=True))
        assert all(entry.indices[:2] == definition.indices[:2] for entry in definition.expr.atoms(sp.Indexed))
    chain = next(step for step in derivation.steps if step.rule == "chain rule")
    assert "no entry of another (b, h) block reads it" in str(chain.reason)
    for fmt in ("text", "latex", "markdown", "html", "json"):
        assert derivation.render(fmt)


def test_the_lifted_derivation_generates_torchs_attention_for_every_block(tmp_path) -> None:
    torch = require_module("torch")
    derivation = derive_spec(parse_spec(ATTENTION.format(p="b, h, "), "mha"))
    module = checked_module(derivation, tmp_path)
    rng = np.random.default_rng(0)
    Q, K, V, dO = (rng.normal(size=shape) for shape in [(2, 3, 5, 4), (2, 3, 6, 4), (2, 3, 6, 7), (2, 3, 5, 7)])
    output = module.forward(Q, K, V)
    dQ, dK, dV = module.gradients(Q, K, V, dO)
    q, k, v = (torch.tensor(a, requires_grad=True) for a in (Q, K, V))
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v)
    expected.backward(torch.tensor(dO))
    np.testing.assert_allclose(output, expected.detach().numpy(), rtol=1e-10, atol=1e-12)
    for got, tensor in ((dQ, q), (dK, k), (dV, v)):
        np.testing.assert_allclose(got, tensor.grad.numpy(), rtol=1e-9, atol=1e-12)
