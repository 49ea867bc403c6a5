"""Every catalog entry: results equal independent expectations, and match finite differences."""

import numpy as np
import pytest
import sympy as sp
from expectations import EXPECTED, FORWARD

import softgrad
from softgrad.derive.catalog import CATALOG
from softgrad.derive.check.numbers import DOUBLES, Evaluator, Frame, Point, one_range_view
from softgrad.derive.symbols import Partial, n

ROWS, SIZE = 4, 5


@pytest.fixture(scope="module", params=list(CATALOG))
def derivation(request):
    return softgrad.derive(request.param)


def test_catalog_is_complete():
    assert set(CATALOG) == set(EXPECTED) == set(FORWARD)


def test_results_equal_independent_expectations(derivation):
    expected = EXPECTED[derivation.spec.name]
    for key, formula in expected.items():
        assert key in derivation.results, f"{derivation.spec.name} has no result {key}"
        got = derivation.results[key].rhs
        assert sp.simplify(got - formula) == 0, f"{derivation.spec.name} {key}: {got} != {formula}"


def test_every_step_is_checked(derivation):
    assert derivation.steps and all(step.checked for step in derivation.steps)


def _rows(spec, rng, constrained: bool):
    """Random rows of every input (targets normalised when the spec says they sum to 1)."""
    for _ in range(ROWS):
        arrays = {name: rng.uniform(0.1, 1.0, SIZE) for name in spec.inputs}
        arrays[spec.inputs[0]] = rng.normal(0, 2, SIZE)  # logits can be any real number
        if constrained:
            for constraint in spec.constraints:
                arrays[constraint.input_name] /= arrays[constraint.input_name].sum()
        yield arrays


def _finite_difference_jacobian(forward, arrays, wrt, T, h=1e-6):
    columns = []
    for position in range(SIZE):
        plus = {k: v.copy() for k, v in arrays.items()}
        minus = {k: v.copy() for k, v in arrays.items()}
        plus[wrt][position] += h
        minus[wrt][position] -= h
        columns.append((np.asarray(forward(plus, T)) - np.asarray(forward(minus, T))) / (2 * h))
    return np.array(columns).T  # [output, input]


def test_results_match_finite_differences_on_a_batch(derivation):
    """The derived Jacobian / gradient, evaluated entry by entry, against central differences."""
    spec = derivation.spec
    forward = FORWARD[spec.name]
    evaluator = _evaluator(spec)
    rng = np.random.default_rng(7)
    key = "gradient_constrained" if "gradient_constrained" in derivation.results else (
        "gradient" if "gradient" in derivation.results else "jacobian")
    result = derivation.results[key]
    T = 1.7
    for arrays in _rows(spec, rng, constrained=key == "gradient_constrained"):
        point = _point(evaluator, SIZE, arrays, {"T": complex(T)})
        numeric = _finite_difference_jacobian(forward, arrays, derivation.wrt, T)
        free = sorted((s for s in result.lhs.free_symbols if s.is_integer), key=str)
        if spec.output.is_vector:
            row_index, column_index = spec.output.index, next(s for s in free if s != spec.output.index)
            frame = Frame(((row_index, 0, SIZE), (column_index, 0, SIZE)))
            np.testing.assert_allclose(evaluator.array(result.rhs, point, frame).real, numeric, rtol=1e-6, atol=1e-7)
        else:
            (column_index,) = free
            values = evaluator.array(result.rhs, point, Frame(((column_index, 0, SIZE),))).real
            np.testing.assert_allclose(values, numeric, rtol=1e-6, atol=1e-7)


def _evaluator(spec):
    view, axes = one_range_view(spec, None)
    return Evaluator(view, axes, view.definitions, DOUBLES)


def _point(evaluator, size, arrays, scalars):
    point = Point({n: size}, {name: np.asarray(values, dtype=complex) for name, values in arrays.items()}, scalars)
    evaluator.complete(point, evaluator.forward)
    return point


def test_vjp_matches_the_jacobian_transpose_product():
    derivation = softgrad.derive("softmax")
    spec = derivation.spec
    rng = np.random.default_rng(3)
    logits, upstream = rng.normal(size=6), rng.normal(size=6)
    y = FORWARD["softmax"]({"x": logits})
    jacobian = np.diag(y) - np.outer(y, y)
    evaluator = _evaluator(spec)
    point = _point(evaluator, 6, {"x": logits, "g": upstream}, {})
    vjp = derivation.results["vjp"].rhs
    got = evaluator.array(vjp, point, Frame(((spec.output.index, 0, 6),))).real
    np.testing.assert_allclose(got, jacobian.T @ upstream, rtol=1e-12, atol=1e-14)
    assert isinstance(derivation.results["vjp"].lhs, Partial)
