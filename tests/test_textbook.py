"""Results read as a textbook prints them: no longer than the textbook form (+20% operations), no
result line wider than 200 columns in a terminal, and terms that cancel are gone."""

import pytest
import sympy as sp
from outside_catalog import OUTSIDE_THE_CATALOG

import softgrad
from softgrad.derive.catalog import CATALOG
from softgrad.derive.spec import parse_spec
from softgrad.render.printers import WIDEST_RESULT

LAYER_NORM = "m = sum(x[k], k)/n; v = sum((x[k] - m)^2, k)/n; y[i] = (x[i] - m)/sqrt(v + 0.00001)"
SQUARED_SOFTMAX = "p[i] = exp(z[i])/sum(exp(z[k]), k); y[i] = p[i]^2/sum(p[k]^2, k)"

#: (spec, result, the textbook's formula in the spec language, over the same names)
TEXTBOOK = [
    ("softmax", "vjp", "r[i] = y[i]*(g[i] - sum(g[j]*y[j], j))"),
    ("log-softmax", "vjp", "r[i] = g[i] - exp(y[i])*sum(g[j], j)"),
    ("logsumexp", "gradient", "r[j] = exp(x[j] - L)"),
    ("cross-entropy", "gradient", "r[j] = y[j]*sum(t[k], k) - t[j]"),
    ("cross-entropy-onehot", "gradient_constrained", "r[j] = y[j] - t[j]"),
    ("kl-divergence", "gradient", "r[j] = p[j]*sum(q[k], k) - q[j]"),
    ("sigmoid", "vjp", "r[i] = g[i]*y[i]*(1 - y[i])"),
    ("binary-cross-entropy", "gradient", "r[j] = p[j] - t[j]"),
    ("softmax-temperature", "vjp", "r[i] = y[i]*(g[i] - sum(g[j]*y[j], j))/T"),
    ("y[i] = exp(-x[i]) / sum(exp(-x[k]), k)", "vjp", "r[i] = -y[i]*(g[i] - sum(g[j]*y[j], j))"),
    ("y[i] = tanh(x[i])", "vjp", "r[i] = g[i]*(1 - y[i]^2)"),
    ("y[i] = x[i] - sum(x[k], k)/n", "vjp", "r[i] = g[i] - sum(g[j], j)/n"),
    (LAYER_NORM, "vjp", "r[i] = (g[i] - sum(g[j], j)/n - y[i]*sum(g[j]*y[j], j)/n)/sqrt(v + 0.00001)"),
    ("y[i] = x[i] / sqrt(sum(x[k]^2, k))", "vjp",
     "r[i] = g[i]/sqrt(sum(x[k]^2, k)) - y[i]*sum(g[j]*x[j], j)/sum(x[k]^2, k)"),
    ("y[i] = x[i]*sigmoid(x[i])", "vjp", "r[i] = g[i]*sigmoid(x[i])*(1 + x[i]*(1 - sigmoid(x[i])))"),
    (SQUARED_SOFTMAX, "vjp", "r[i] = 2*y[i]*(g[i] - sum(g[j]*y[j], j))"),  # y = softmax(z)²/‖·‖² = softmax(2z)
]


@pytest.mark.parametrize("spec, key, textbook", TEXTBOOK)
def test_results_are_no_longer_than_the_textbook(spec, key, textbook):
    ours = softgrad.derive(spec).results[key].rhs
    theirs = parse_spec(textbook).output.expr
    assert sp.count_ops(ours) <= 1.2 * sp.count_ops(theirs), (sp.sstr(ours), sp.sstr(theirs))


def test_the_table_has_at_least_ten_functions():
    assert len({spec for spec, _, _ in TEXTBOOK}) >= 10


def test_a_vector_of_a_vector_is_written_in_the_outer_one():
    """y = p²/Σp² with p = softmax(z) is softmax(2z): its Jacobian reads as a textbook prints it, in y alone
    (it was written in z: y's own form, in p, cannot be found in a result written in z)."""
    results = softgrad.derive(SQUARED_SOFTMAX).results
    assert sp.sstr(results["jacobian"].rhs) == "2*(KroneckerDelta(i, j) - y[j])*y[i]"
    assert {str(b.label) for b in results["vjp"].rhs.atoms(sp.IndexedBase)} == {"g", "y"}


def test_layer_norm_is_written_in_its_normalised_values_and_row_means():
    vjp = softgrad.derive(LAYER_NORM).results["vjp"].rhs
    assert {str(b.label) for b in vjp.atoms(sp.IndexedBase)} == {"g", "y"}  # x̂ = y, no raw x
    assert sp.Symbol("v") in vjp.free_symbols and len(vjp.atoms(sp.Sum)) == 2


def test_terms_that_cancel_are_gone():
    """L2 normalisation's VJP once kept g·x²/Σx² − g·y², which is exactly 0."""
    vjp = softgrad.derive("y[i] = x[i] / sqrt(sum(x[k]^2, k))").results["vjp"].rhs
    assert not any(term.has(sp.IndexedBase("y")[sp.Symbol("i", integer=True)] ** 2) for term in sp.Add.make_args(
        sp.expand(vjp)))


X, J = sp.IndexedBase("x"), sp.Symbol("j", integer=True)


@pytest.mark.parametrize("spec, gradient", [
    ("y[i] = x[i] / sqrt(sum(x[k]^2, k))\nL = sum(y[k]^2, k)", sp.S.Zero),  # ‖y‖² = 1 whatever x is
    ("y[i] = x[i] / sqrt(x[i]^2 + 1)\nL = sum(y[k]^2, k)", 2 * X[J] / (X[J] ** 2 + 1) ** 2),
])
def test_a_result_that_mixes_outputs_and_inputs_is_also_tried_in_the_inputs_alone(spec, gradient):
    """Written in y first, these gradients keep y beside the x it is made of (−2(Σx_k y_k − √Σx²)·y_j/Σx²,
    which is 0); written wholly in x, the terms cancel. Results already in y alone are not tried again."""
    result = softgrad.derive(spec).results["gradient"].rhs
    assert result == gradient


@pytest.mark.parametrize("spec", list(CATALOG) + OUTSIDE_THE_CATALOG)
def test_no_result_line_is_wider_than_200_columns(spec):
    text = softgrad.derive(spec).render("text")
    results = text[text.index("\nResults"):]
    assert max(len(line) for line in results.splitlines()) <= WIDEST_RESULT
