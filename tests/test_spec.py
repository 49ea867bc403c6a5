"""The spec language: what parses, into what, and one clear located error for what does not."""

import pytest
import sympy as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from softgrad.derive.spec import parse_spec
from softgrad.derive.symbols import class_sum, index, sigmoid
from softgrad.errors import SoftgradError, SpecError

i, k = index("i"), index("k")
x, t, y = sp.IndexedBase("x"), sp.IndexedBase("t"), sp.IndexedBase("y")


def test_softmax_and_loss_parse_to_sympy_objects():
    spec = parse_spec("y[i] = exp(x[i]) / sum(exp(x[k]), k)\nL = -sum(t[k] * log(y[k]), k)\ngiven sum(t[k], k) = 1")
    assert spec.definitions[0].expr == sp.exp(x[i]) / class_sum(sp.exp(x[k]), k)
    assert spec.definitions[1].expr == -class_sum(t[k] * sp.log(y[k]), k)
    assert spec.inputs == ["x", "t"] and spec.parameters == []
    assert spec.constraints[0].input_name == "t" and spec.constraints[0].rhs == 1


def test_operators_precedence_and_functions():
    spec = parse_spec("y[i] = -x[i]**2^1 + 2*T/3 - sqrt(x[i]) * tanh(x[i]) + sigmoid(x[i]) + delta(i, i) + 1.5e-1")
    T = sp.Symbol("T", positive=True)
    expected = -x[i] ** 2 + sp.Rational(2, 3) * T - sp.sqrt(x[i]) * sp.tanh(x[i]) + sigmoid(x[i]) + 1 + sp.Float("0.15")
    assert sp.simplify(spec.output.expr - expected) == 0
    assert spec.parameters == ["T"]


def test_power_is_right_associative_and_binds_tighter_than_unary_minus():
    spec = parse_spec("y[i] = -x[i]**2**3")
    assert spec.output.expr == -(x[i] ** 8)


@pytest.mark.parametrize(
    "source, message, column",
    [
        ("y[i] = exp(x[i]", "expected ')'", 16),
        ("y[i] = foo(x[i])", "unknown function 'foo'", 8),
        ("y[i] = x[j]", "undefined index 'j'", 10),
        ("y[i] = sum(x[i], i)", "cannot sum over index 'i'", 18),
        ("y[i] = x[i] +", "expected a number", 14),
        ("y[i] = x[i] $ 2", "unexpected character '$'", 13),
        ("y[i] = x[i+]", "expected an index", 12),
        ("L = x[i]", "undefined index 'i'", 7),
        ("y[i] = y[i]", "used in its own definition", 1),
        ("y[i] = x\nz[i] = x[i]", "is a scalar", 8),
        ("y[i] = x[i]\ny[i] = x[i]", "already defined", 1),
        ("y[i] = x[i]\nz = y", "is a vector and needs an index", 5),
        ("y[i] = exp(x[i], x[i])", "takes one argument", 16),
        ("y[i] = sum(x[k])", "sum() needs two arguments", 16),
    ],
)
def test_malformed_specs_name_line_column_and_problem(source, message, column):
    with pytest.raises(SpecError) as caught:
        parse_spec(source)
    assert message in str(caught.value)
    assert caught.value.column == column


def test_empty_and_oversized_specs_are_rejected():
    with pytest.raises(SpecError, match="empty"):
        parse_spec("  # only a comment\n")
    with pytest.raises(SpecError, match="too long"):
        parse_spec("y[i] = " + "x[i] + " * 200_000 + "1")


def test_only_sum_constraints_on_inputs():
    with pytest.raises(SpecError, match="only constraints"):
        parse_spec("y[i] = x[i]\ngiven sum(x[k] * 2, k) = 1")


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet="xyzLtik[]()+-*/^=,.#01 \nexpsumdeltalog_'", max_size=60))
def test_arbitrary_text_parses_or_fails_with_a_spec_error(text):
    try:
        parse_spec(text)
    except SoftgradError:
        pass
