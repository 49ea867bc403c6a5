"""High-precision references: the exact symbolic results and the forward function, in mpmath.

`exact_outputs` evaluates a kernel's derived formulas (the checked results of the derivation) at
40 significant digits; `forward_directional` differentiates the forward function itself by a central
difference at that precision — a reference that shares nothing with the derived formulas.
"""

from __future__ import annotations

from typing import Any

import mpmath
import numpy as np
import sympy as sp

from softgrad.derive.check.numbers import Evaluator, Frame, Point, mpmath_numbers, one_range_view
from softgrad.derive.steps import Derivation
from softgrad.derive.symbols import n as size_symbol
from softgrad.errors import SoftgradError

DIGITS = 40


#: mpmath numbers at DIGITS: every value of a reference computed in them.
REFERENCE = mpmath_numbers(DIGITS, real=True)


def _evaluator(derivation: Derivation) -> Evaluator:
    """The spec's definitions, evaluated in REFERENCE numbers (inside mpmath.workdps(DIGITS))."""
    spec, axes = one_range_view(derivation.spec, None)
    return Evaluator(spec, axes, spec.definitions, REFERENCE)


class UndefinedReference(SoftgradError):
    """The spec has no value at these inputs (a variance over n − 1 at n = 1): there is no reference."""


def _point(evaluator: Evaluator, arrays: dict[str, np.ndarray], row: int, parameters: dict[str, float],
           moved: tuple[str, Any] | None = None) -> Point:
    """One row of the arrays as a point, every definition computed (`moved`: an input given other values)."""
    vectors = {name: _numbers(array[row]) for name, array in arrays.items()}
    if moved is not None:
        vectors[moved[0]] = moved[1]
    size = len(next(iter(vectors.values())))
    point = Point({size_symbol: size}, vectors, {name: mpmath.mpf(float(v)) for name, v in parameters.items()})
    try:
        evaluator.complete(point, evaluator.forward)
    except ZeroDivisionError:
        raise UndefinedReference(f"the spec has no value at n = {size} (it divides by 0 there): there is nothing "
                                 "to compare with; use another n") from None
    return point


def _numbers(values: Any) -> Any:
    """Doubles as exact mpmath numbers, in an object array."""
    return np.array([mpmath.mpf(float(v)) for v in values], dtype=object)


def _real(value: Any) -> float:
    """A reference value as a float: NaN where it is not real (the spec taken outside its domain)."""
    if isinstance(value, mpmath.mpc):
        return float(value.real) if value.imag == 0 else float("nan")
    return float(value)


def magnitude(expr: sp.Expr) -> sp.Expr:
    """The formula with every sum taken of absolute values (Σ|terms|, |a| + |b|): what rounding errors in
    computing it scale with. Where the exact value cancels to far less than this (layer norm at n = 2),
    no kernel can do better than a few units of roundoff relative to it."""
    def absolute(e: sp.Expr) -> sp.Expr:
        if isinstance(e, sp.Sum):
            return sp.Sum(absolute(e.function), *e.limits)
        if e.is_Add:
            return sp.Add(*[sp.Abs(absolute(term), evaluate=False) for term in e.args])
        if e.is_Mul:
            return sp.Mul(*[absolute(factor) for factor in e.args])
        return e

    return sp.Abs(absolute(expr), evaluate=False)


def exact_outputs(derivation: Derivation, kernel: str, arrays: dict[str, np.ndarray],
                  parameters: dict[str, float], magnitudes: bool = False) -> dict[str, np.ndarray]:
    """Each output of `kernel` for 2-D input arrays (rows, n), from the derived formulas, in float64
    (with `magnitudes`, the size its rounding errors scale with instead: see `magnitude`)."""
    spec = derivation.spec
    output = spec.output
    with mpmath.workdps(DIGITS):
        evaluator = _evaluator(derivation)
        rows = next(iter(arrays.values())).shape[0]
        plans = _plan(derivation, kernel)
        if magnitudes:
            plans = [(name, magnitude(expr), indices) for name, expr, indices in plans]
        values: dict[str, list[Any]] = {name: [] for name, _, _ in plans}
        for row in range(rows):
            point = _point(evaluator, arrays, row, parameters)
            if kernel == "vjp_from_output":  # the saved output is given, not recomputed
                point.arrays[output.name] = _numbers(arrays[output.name][row])
            for name, expr, indices in plans:
                values[name].append(_values(evaluator, expr, point, indices))
        return {name: np.array(v, dtype=np.float64).reshape((rows, *(np.shape(v[0]) if v else ())))
                for name, v in values.items()}


def _values(evaluator: Evaluator, expr: sp.Expr, point: Point, indices: list[sp.Symbol]) -> Any:
    """expr at every entry of its indices (each over the row), as floats; NaN where it is not real, or has
    no value (1/(1 − p) at p = 1 exactly: undefined there, judged nowhere)."""
    frame = Frame(tuple((index, 0, point.sizes[size_symbol]) for index in indices))
    try:
        entries = evaluator.array(expr, point, frame)
    except ZeroDivisionError:  # one entry divides by 0: the others have values, computed one by one
        entries = np.empty(frame.shape, dtype=object)
        for entry in np.ndindex(*frame.shape):
            try:
                entries[entry] = evaluator.value(expr, point, dict(zip(indices, entry)))
            except ZeroDivisionError:
                entries[entry] = mpmath.mpf("nan")
    return np.vectorize(_real, otypes=[np.float64])(entries) if entries.size else np.zeros(frame.shape)


def _plan(derivation: Derivation, kernel: str) -> list[tuple[str, sp.Expr, list[sp.Symbol]]]:
    """(output name, formula, its free indices in order) for each output of a kernel."""
    spec, results = derivation.spec, derivation.results
    output = spec.output
    gradient_name, jacobian_name = derivation.output_names  # as the generated kernels name them
    if kernel == "forward":
        return [(output.name, output.symbol, [output.index] if output.is_vector else [])]
    if kernel in ("vjp", "vjp_from_output"):
        return [(gradient_name, results["vjp"].rhs, list(results["vjp"].indices))]
    if kernel == "jacobian":
        return [(jacobian_name, results["jacobian"].rhs, list(results["jacobian"].indices))]
    gradient = results.get("gradient_constrained") or results["gradient"]
    return [(output.name, output.symbol, []), (gradient_name, gradient.rhs, list(gradient.indices))]


def forward_directional(derivation: Derivation, arrays: dict[str, np.ndarray], parameters: dict[str, float],
                        direction: np.ndarray, upstream: np.ndarray | None = None) -> np.ndarray:
    """Per row: d/dh of ⟨upstream, f(x + h·direction)⟩ at h = 0 (f a loss: upstream is None), in mpmath.

    A central difference with h = 1e-15 at 40 digits: truncation error ~1e-30, far below float64.
    """
    spec = derivation.spec
    output = spec.output
    wrt = derivation.wrt
    with mpmath.workdps(DIGITS):
        evaluator = _evaluator(derivation)
        step = mpmath.mpf("1e-15")
        rows = arrays[wrt].shape[0]
        result = []
        for row in range(rows):
            sides = []
            for sign in (1, -1):
                base = _numbers(arrays[wrt][row])
                point = _point(evaluator, arrays, row, parameters,
                               moved=(wrt, base + sign * step * _numbers(direction[row])))
                if output.is_vector:
                    assert upstream is not None, "a vector function is checked through its upstream gradient"
                    value = sum(u * v for u, v in zip(_numbers(upstream[row]), point.arrays[output.name]))
                else:
                    value = point.scalars[output.name]
                sides.append(value)
            result.append(float(mpmath.re((sides[0] - sides[1]) / (2 * step))))
        return np.array(result)
