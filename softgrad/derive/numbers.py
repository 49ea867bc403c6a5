"""The numeric meaning of the spec language: its functions in complex doubles (cmath) and in mpmath, and a
scalar evaluator of one-range expressions at one point (a row), in either.

The step checker (softgrad.derive.check) takes its functions and constants from here; the verifier's
40-digit reference for per-row code evaluates derived results with the evaluator.
"""

from __future__ import annotations

import cmath
import contextlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import sympy as sp
from sympy.codegen.cfunctions import log1p

from softgrad.derive.spec import Definition
from softgrad.derive.symbols import Bracket, Edge, SumExcept, sigmoid, softplus
from softgrad.derive.symbols import n as size_symbol

#: The imaginary step of complex-step differentiation: exact to rounding for real-analytic functions.
COMPLEX_STEP = 1e-30
#: Beyond the largest x87 extended / IEEE quadruple number (~1.19e4932) no floating-point code computes a value,
#: so no step is judged there (e^(e^(e^10)) has 10^9565 digits); exp(1000) ≈ 2e434 is still checked, in mpmath.
LARGEST_FLOAT = 10 ** 4932

def _first_order(function: Callable[[float], float], derivative: Callable[[float], float]) -> Callable[[Any], Any]:
    """f(x + ih) = f(x) + ih f'(x) for a real-analytic f that cmath lacks: exact for the complex step."""
    def value(z: Any) -> complex:
        z = complex(z)
        return complex(function(z.real), z.imag * derivative(z.real) if z.imag else 0.0)
    return value


def _real_part(library: Any) -> Callable[[Any], Any]:
    return (lambda z: complex(z).real) if library is cmath else library.re


def _softplus(x: float) -> float:
    return max(x, 0.0) + math.log1p(math.exp(-abs(x)))


def _logistic(x: float) -> float:
    return 1 / (1 + math.exp(-x)) if x >= 0 else math.exp(x) / (1 + math.exp(x))


#: |x| beyond which exp(x) in mpmath is taken as +inf or 0: e^(10^9) is far beyond any float format (10^4932)
#: and near where mpmath's own exponent arithmetic runs out of memory (exp(exp(exp(exp(2)))) = e^(10^702)).
EXP_SATURATES = 1e9


def function_table(library: Any) -> dict[Any, Callable[..., Any]]:
    """The spec language's functions computed with a math library (cmath here, mpmath for references).

    Kinked functions (abs, min, max, sign, the step H) decide by the real part, which is the value a
    complex step carries; they are analytic on each side of the kink."""
    real = _real_part(library)

    def sign(u: Any) -> Any:
        return (real(u) > 0) - (real(u) < 0)

    def saturating_exp(u: Any) -> Any:  # mpmath: beyond EXP_SATURATES it would run out of memory
        if abs(real(u)) > EXP_SATURATES:
            return library.inf if real(u) > 0 else library.mpf(0)
        return library.exp(u)

    table: dict[Any, Callable[..., Any]] = {
        # in doubles an overflow raises OverflowError, and the checker decides (widening to mpmath)
        sp.exp: library.exp if library is cmath else saturating_exp,
        sp.log: library.log,
        sp.tanh: library.tanh,
        sigmoid: lambda u: 1 / (1 + library.exp(-u)),
        sp.Abs: lambda u: u if real(u) >= 0 else -u,
        sp.sign: sign,
        sp.Heaviside: lambda u, at_zero: 1.0 if real(u) > 0 else (0.0 if real(u) < 0 else at_zero),
        sp.Max: lambda *values: max(values, key=real),
        sp.Min: lambda *values: min(values, key=real),
        Bracket: lambda u: 1.0 if round(real(u)) >= 0 else 0.0,
        Edge: lambda u: 1.0 if round(real(u)) >= 0 else 0.0,
    }
    if library is cmath:
        table[sp.erf] = _first_order(math.erf, lambda x: 2 / math.sqrt(math.pi) * math.exp(-x * x))
        table[log1p] = _first_order(math.log1p, lambda x: 1 / (1 + x))
        table[softplus] = _first_order(_softplus, _logistic)
    else:
        table[sp.erf] = library.erf
        table[log1p] = library.log1p
        table[softplus] = lambda u: library.log(1 + library.exp(u))
    return table


_FUNCTIONS = function_table(cmath)
#: Digits of the mpmath evaluator that takes over where double precision overflows (exp(1000) in a spec).
WIDE_DIGITS = 30


@dataclass
class Point:
    """Concrete values: n, the input vectors, parameters, and every definition computed from them."""

    size: int
    vectors: dict[str, list[complex]]
    scalars: dict[str, complex]
    sums: dict[Any, Any] = field(default_factory=dict, repr=False)  # memoized Σ values at this point


class Evaluator:
    """Numeric meaning of every expression softgrad shows, at one concrete point (complex floats)."""

    functions = _FUNCTIONS
    is_finite = staticmethod(cmath.isfinite)

    @staticmethod
    def number(value: sp.Expr) -> Any:
        return complex(value)

    def __init__(self, definitions: list[Definition]):
        self.definitions = definitions
        self._compiled: dict[sp.Basic, Callable[[Point, dict[Any, int]], Any]] = {}

    def real(self, point: Point) -> bool:
        """Whether every value at the point is a finite real number: the spec language is real, so a point
        where a definition is complex (the log or square root of a negative number) is outside its domain."""
        values = [v for values in point.vectors.values() for v in values] + list(point.scalars.values())
        return all(self.is_finite(v) and v.imag == 0 for v in values)

    def complete(self, point: Point, frozen: str | None = None) -> Point:
        """Compute every definition from the inputs (a `frozen` name keeps its given values)."""
        vectors, scalars = dict(point.vectors), dict(point.scalars)
        started = frozen is None
        for definition in self.definitions:
            if definition.name == frozen:
                started = True
                continue
            if not started and frozen is not None and definition.name in vectors | scalars:
                continue
            inner = Point(point.size, vectors, scalars)
            if definition.is_vector:
                vectors[definition.name] = [
                    self.value(definition.expr, inner, {definition.index: a}) for a in range(point.size)
                ]
            else:
                scalars[definition.name] = self.value(definition.expr, inner, {})
        return Point(point.size, vectors, scalars)

    def value(self, expr: sp.Basic, point: Point, indices: dict[Any, int]) -> Any:
        """expr's value at the point, with these index values."""
        evaluate = self._compiled.get(expr)
        if evaluate is None:
            evaluate = self._compiled[expr] = self._compile(expr)
        return evaluate(point, indices)

    def _compile(self, expr: sp.Basic) -> Callable[[Point, dict[Any, int]], Any]:
        """expr as a tree of closures, built once: the type dispatch and the constants' conversion are
        paid once per expression, not once per point, index pair and step (no text is generated or run)."""
        value = self.value
        if expr.is_Number or expr.is_NumberSymbol:  # 2, 1/2, π, e
            constant = self.number(expr)
            return lambda point, indices: constant
        if isinstance(expr, sp.Indexed):
            name, position = str(expr.base), expr.indices[0]
            index = self._index
            return lambda point, indices: point.vectors[name][int(index(position, indices))]
        if expr.is_Symbol:
            symbol, name = expr, str(expr)
            if expr == size_symbol:  # as a number of the evaluator's precision: 1/n is not a double in mpmath
                number = self.number
                return lambda point, indices: indices[symbol] if symbol in indices else number(sp.Integer(point.size))
            return lambda point, indices: indices[symbol] if symbol in indices else point.scalars[name]
        if expr.is_Add:
            terms = [self._compile(a) for a in expr.args]
            return lambda point, indices: sum(term(point, indices) for term in terms)
        if expr.is_Mul:
            factors = [self._compile(a) for a in expr.args]

            def product(point: Point, indices: dict[Any, int]) -> Any:
                result: Any = 1
                for factor in factors:
                    result *= factor(point, indices)
                return result
            return product
        if expr.is_Pow:
            base = self._compile(expr.base)
            if expr.exp.is_Integer:
                power = int(expr.exp)
                return lambda point, indices: base(point, indices) ** power
            exponent = self._compile(expr.exp)
            return lambda point, indices: base(point, indices) ** exponent(point, indices)
        if isinstance(expr, sp.KroneckerDelta):
            first, second = expr.args
            index = self._index
            return lambda point, indices: 1.0 if index(first, indices) == index(second, indices) else 0.0
        if isinstance(expr, sp.Sum):
            bound, body = expr.limits[0][0], expr.function
            free = sorted(expr.free_symbols, key=str)

            def total(point: Point, indices: dict[Any, int]) -> Any:
                key = (expr, tuple((str(s), indices[s]) for s in free if s in indices))
                if key not in point.sums:
                    point.sums[key] = sum(value(body, point, {**indices, bound: a}) for a in range(point.size))
                return point.sums[key]
            return total
        if isinstance(expr, sp.Product):  # exp(Σ x_k) = Π exp(x_k), as SymPy may write it
            bound, body = expr.limits[0][0], expr.function
            one = self.number(sp.S.One)

            def product_over(point: Point, indices: dict[Any, int]) -> Any:
                result = one
                for a in range(point.size):
                    result = result * value(body, point, {**indices, bound: a})
                return result
            return product_over
        if isinstance(expr, SumExcept):
            bound, summand, skip = expr.bound, expr.summand, expr.skip
            index = self._index

            def total_except(point: Point, indices: dict[Any, int]) -> Any:
                skipped = index(skip, indices)
                return sum(value(summand, point, {**indices, bound: a}) for a in range(point.size) if a != skipped)
            return total_except
        function = self.functions.get(expr.func)
        if function is None:
            message = f"cannot evaluate {expr.func.__name__}"

            def unknown(point: Point, indices: dict[Any, int]) -> Any:
                raise TypeError(message)
            return unknown
        arguments = [self._compile(a) for a in expr.args]
        return lambda point, indices: function(*(argument(point, indices) for argument in arguments))

    @staticmethod
    def _index(index_expr: sp.Expr, indices: dict[sp.Symbol, int]) -> int:
        return indices[index_expr] if index_expr in indices else int(index_expr)


class WideEvaluator(Evaluator):
    """The same evaluation in mpmath complex numbers: no overflow for constants such as exp(1000).

    Use it inside `wide_precision()`, which sets mpmath's working precision and restores it after."""

    import mpmath as _mpmath

    functions = function_table(_mpmath)
    is_finite = staticmethod(_mpmath.isfinite)

    def complete(self, point: Point, frozen: str | None = None) -> Point:
        """As Evaluator.complete, with the inputs as mpmath numbers (exact copies of the sampled doubles), so
        that every definition computed from them is computed in extended precision too."""
        import mpmath

        vectors = {name: [mpmath.mpc(v) for v in values] for name, values in point.vectors.items()}
        scalars = {name: mpmath.mpc(v) for name, v in point.scalars.items()}
        return super().complete(Point(point.size, vectors, scalars), frozen)

    @staticmethod
    def number(value: sp.Expr) -> Any:
        import mpmath

        return mpmath.mpc(mpmath.mpf(sp.Float(sp.N(value, WIDE_DIGITS + 5), WIDE_DIGITS + 5)._mpf_))


def wide_precision() -> contextlib.AbstractContextManager[Any]:
    """mpmath's working precision for WideEvaluator, restored on exit (no global state changed)."""
    import mpmath

    context: contextlib.AbstractContextManager[Any] = mpmath.workdps(WIDE_DIGITS)
    return context
