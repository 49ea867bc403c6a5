"""The numeric meaning of the spec language: its functions in complex doubles (cmath) and in mpmath, and an
evaluator of every expression softgrad shows at concrete sizes and values, whole arrays at a time.

The step checker (softgrad.derive.check.numeric) is this evaluator with derivatives, sampled points and checks; the
verifier's 40-digit reference for per-row code evaluates derived results with it in mpmath.
"""

from __future__ import annotations

import cmath
import contextlib
import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import sympy as sp
from sympy.codegen.cfunctions import log1p

from softgrad.derive.spec import Definition, Spec
from softgrad.derive.symbols import Bracket, Edge, Partial, SumExcept, sigmoid, softplus
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


#: Digits of the mpmath numbers that take over where double precision overflows (exp(1000) in a spec).
WIDE_DIGITS = 30


@dataclass(frozen=True)
class Numbers:
    """A precision to evaluate in: the spec language's functions, constants as numbers, and whether the numbers
    are mpmath's (held in object arrays) rather than complex doubles."""

    functions: dict[Any, Callable[..., Any]]
    number: Callable[[sp.Expr], Any]
    wide: bool


def mpmath_numbers(digits: int, real: bool = False) -> Numbers:
    """mpmath complex numbers (real ones where `real`: a reference of real inputs, whose infinities stay real
    infinities rather than complex ones with a NaN part), constants to `digits` (and 5 more); evaluate inside
    mpmath.workdps(digits)."""
    import mpmath

    def number(value: sp.Expr) -> Any:
        constant = mpmath.mpf(sp.Float(sp.N(value, digits + 5), digits + 5)._mpf_)
        return constant if real else mpmath.mpc(constant)

    return Numbers(function_table(mpmath), number, True)


#: Complex doubles (cmath), in which complex-step derivatives are exact to rounding; and mpmath at WIDE_DIGITS.
DOUBLES = Numbers(function_table(cmath), complex, False)
WIDE = mpmath_numbers(WIDE_DIGITS)


def wide_precision() -> contextlib.AbstractContextManager[Any]:
    """mpmath's working precision for WIDE, restored on exit (no global state changed)."""
    import mpmath

    context: contextlib.AbstractContextManager[Any] = mpmath.workdps(WIDE_DIGITS)
    return context


@dataclass
class Point:
    sizes: dict[sp.Symbol, int]
    arrays: dict[str, Any]
    scalars: dict[str, Any]  # numbers (a probed copy's: one per copy)
    derivatives: dict[tuple[Any, ...], Any] = field(default_factory=dict)  # probed copies, kept per point
    #: a probed copy: this many copies of the point side by side, along a first axis of the arrays in `probed`
    #: (each copy with one entry moved by a complex step), evaluated in frames whose first axis is PROBE
    probe: int = 0
    probed: frozenset[str] = frozenset()

    def value(self, name: str) -> Any:
        """An array's values, or a scalar's (a loss, a scalar input's gradient dT) as a 0-d array."""
        return self.arrays[name] if name in self.arrays else np.asarray(self.scalars[name])


class Evaluator:
    """Every expression softgrad shows, evaluated at a point: definitions computed in order, whole arrays at a
    time. A derivative ∂C/∂X (Partial) is the step checker's to evaluate (softgrad.derive.check.numeric)."""

    def __init__(self, spec: Spec, axes: dict[str, tuple[str, ...]], definitions: list[Definition],
                 numbers: Numbers):
        """spec: its ranges' size symbols (spec.sizes); axes: every array's ranges; definitions: the forward
        definitions, in order."""
        self.spec, self.axes, self.forward = spec, axes, definitions
        self._reader_sets: dict[str, set[str]] = {}
        self.use(numbers)

    def use(self, numbers: Numbers) -> None:
        """Evaluate in these numbers from now on."""
        self.functions, self.number, self.wide = numbers.functions, numbers.number, numbers.wide
        self._compiled: dict[sp.Basic, Any] = {}

    def complete(self, point: Point, definitions: list[Definition], after: str | None = None,
                 reading: str | None = None) -> None:
        """Compute `definitions` in order at the point (all of them, or those after `after`; with `reading`,
        only those that read that name, directly or through others: a moved input changes nothing else)."""
        started = after is None
        changed = self._readers(reading) if reading is not None else None
        for definition in definitions:
            if not started:
                started = definition.name == after
                continue
            if changed is not None and definition.name not in changed:
                continue
            probe = ((PROBE, 0, point.probe),) if point.probe else ()  # a probed copy: every copy at once
            if point.probe:
                point.probed |= {definition.name}
            if definition.is_vector:
                ranges = self.axes[definition.name]
                frame = Frame((*probe, *((index, 0, point.sizes[self.spec.sizes[r]])
                                         for index, r in zip(definition.indices, ranges))))
                point.arrays[definition.name] = self.array(definition.expr, point, frame)
            elif point.probe:
                point.scalars[definition.name] = self.array(definition.expr, point, Frame(probe))
            else:
                point.scalars[definition.name] = self.value(definition.expr, point, {})

    def _readers(self, name: str) -> set[str]:
        """The forward definitions that read `name`, directly or through other definitions."""
        readers = self._reader_sets.get(name)
        if readers is None:
            readers = {name}
            for definition in self.forward:  # in order: a definition reads only those before it
                reads = {str(e.base) for e in definition.expr.atoms(sp.Indexed)} | {
                    str(s) for s in definition.expr.free_symbols}
                if reads & readers:
                    readers.add(definition.name)
            self._reader_sets[name] = readers
        return readers

    def value(self, expr: sp.Basic, point: Point, env: dict[Any, int]) -> Any:
        """expr's value at one point, its free indices bound by `env` (complex arithmetic)."""
        return _scalar(self.compiled(expr)(point, Frame((), tuple(env.items()))))

    def array(self, expr: sp.Basic, point: Point, frame: Frame) -> Any:
        """expr's values at every entry of the frame's ranges at once, as an array of the frame's shape."""
        values = self.compiled(expr)(point, frame)
        return np.array(np.broadcast_to(values, frame.shape), dtype=object if self.wide else complex)

    def compiled(self, expr: sp.Basic) -> Any:
        """expr as a Python closure (point, frame) → values, made once per expression: evaluating the same
        formulas at every point and step then costs no more SymPy dispatch, and every entry of a frame is
        computed by one NumPy operation per node of the expression, not one closure call per entry."""
        function = self._compiled.get(expr)
        if function is None:
            function = self._compiled[expr] = self._compile(expr)
        return function

    def _compile(self, expr: sp.Basic) -> Any:
        """The closure for one node: a scalar where the node reads no index of the frame, else an array with one
        axis per frame axis (of length 1 where the node does not depend on it), broadcasting as NumPy does."""
        if expr.is_Number or expr.is_NumberSymbol:
            constant = self.number(expr)
            return lambda point, frame: constant
        if isinstance(expr, sp.Indexed):
            return self._compile_read(expr)
        if expr.is_Symbol:
            key = str(expr)

            def symbol(point: Point, frame: Frame) -> Any:
                bound = frame.values(expr)
                if bound is not None:
                    return bound
                if expr in point.sizes:  # in the checker's precision: 1/n is not a double in mpmath
                    return self.number(sp.Integer(point.sizes[expr])) if self.wide else point.sizes[expr]
                if key not in point.scalars:  # a scalar input given as a 0-d array (T)
                    return point.arrays[key][()]
                if key in point.probed:  # one value per copy, along the frame's first axis (PROBE)
                    return point.scalars[key].reshape((-1,) + (1,) * (len(frame.axes) - 1))
                return point.scalars[key]
            return symbol
        if expr.is_Add:
            terms = [self.compiled(a) for a in expr.args]

            def add(point: Point, frame: Frame) -> Any:
                result = terms[0](point, frame)
                for term in terms[1:]:
                    result = result + term(point, frame)
                return result
            return add
        if expr.is_Mul:
            factors = [self.compiled(a) for a in expr.args]

            def product(point: Point, frame: Frame) -> Any:
                result = factors[0](point, frame)
                for factor in factors[1:]:
                    result = result * factor(point, frame)
                return result
            return product
        if expr.is_Pow:
            base, exponent = self.compiled(expr.base), self.compiled(expr.exp)
            exp, log = self._elementwise(sp.exp), self._elementwise(sp.log)

            def power(point: Point, frame: Frame) -> Any:
                b, e = base(point, frame), exponent(point, frame)
                if not isinstance(e, np.ndarray) and complex(e).imag == 0 and complex(e).real == int(complex(e).real):
                    return _integer_power(b, int(complex(e).real))  # by multiplication: exact for a complex step
                # 0^e is 0 for Re e > 0 (a focal loss's (1 − p)^γ at p = 1), where e·log 0 would give NaN
                zero = b == 0
                if not np.any(zero):
                    return exp(e * log(b))
                return np.where(zero, np.where(np.real(np.asarray(e, dtype=complex)) > 0, 0.0, np.inf),
                                exp(e * log(np.where(zero, 1.0, b))))
            return power
        if isinstance(expr, sp.KroneckerDelta):
            first, second = (self.compiled(a) for a in expr.args)
            return lambda point, frame: np.where(as_integers(first(point, frame)) == as_integers(second(point, frame)),
                                                 1.0, 0.0)
        if isinstance(expr, sp.Sum):
            return self._compile_sum(expr)
        if isinstance(expr, sp.Product):  # exp(Σ x_k) = Π exp(x_k), as SymPy may write it
            return self._compile_sum(expr, product=True)
        if isinstance(expr, SumExcept):
            return self.compiled(expr.as_full_sum())
        if isinstance(expr, Partial):
            return lambda point, frame: self._derivative(expr, point, frame)
        if expr.func in self.functions:
            function = self._elementwise(expr.func)
            arguments = [self.compiled(a) for a in expr.args]
            return lambda point, frame: function(*(a(point, frame) for a in arguments))
        raise NotImplementedError(f"cannot evaluate {expr.func.__name__}")

    def _compile_read(self, expr: sp.Indexed) -> Any:
        """An array read at positions computed from the frame's indices; an entry outside the array reads as 0."""
        name = str(expr.base)
        positions = [self.compiled(i) for i in expr.indices]
        plain = all(i.is_Symbol or isinstance(i, sp.Indexed) for i in expr.indices)

        def read(point: Point, frame: Frame) -> Any:
            values = point.arrays[name]
            at = [as_integers(p(point, frame)) for p in positions]
            # a probed array: each copy reads its own
            copies = (as_integers(frame.values(PROBE)),) if name in point.probed else ()
            if plain:
                return values[(*copies, *at)]
            shape = values.shape[len(copies):]
            inside = np.ones((), dtype=bool)
            for where, size in zip(at, shape):
                inside = inside & (where >= 0) & (where < size)
            clipped = tuple(np.clip(where, 0, size - 1) for where, size in zip(at, shape))
            return np.where(inside, values[(*copies, *clipped)], 0)
        return read

    def _compile_sum(self, expr: sp.Sum | sp.Product, product: bool = False) -> Any:
        """Σ (or Π) over each bound in turn: the bound becomes a new last axis of the frame, summed away after."""
        limits = [(limit[0], self.compiled(limit[1]), self.compiled(limit[2])) for limit in expr.limits]
        summand = self.compiled(expr.function)

        def total(point: Point, frame: Frame) -> Any:
            inner, masks = frame, []
            for bound, low, high in limits:
                first, last = as_integers(low(point, inner)), as_integers(high(point, inner))
                start, stop = int(np.min(first)), int(np.max(last))
                if stop < start:
                    return 1 if product else 0
                inner = inner.with_axis(bound, start, stop - start + 1)
                values = inner.values(bound)
                if np.ndim(first) or np.ndim(last):  # bounds that depend on an outer index: the rest masked off
                    masks.append((values >= first) & (values <= last))
            count, outer = len(inner.axes), len(frame.axes)

            def padded(values: Any) -> Any:  # one axis per axis of the frame inside the sum, the bounds' last
                values = np.asarray(values)
                return values.reshape(values.shape + (1,) * (count - values.ndim))
            parts = [padded(summand(point, inner)), *(padded(mask) for mask in masks)]
            # the outer axes only as long as the summand or a mask needs them: a sum that reads no outer index
            # is computed once, not once per entry of the frame (n³ mpmath terms for a Jacobian's Σ otherwise)
            shape = [max(part.shape[axis] for part in parts) for axis in range(outer)] + list(inner.shape[outer:])
            result = np.broadcast_to(parts[0], shape)
            for mask in parts[1:]:
                result = np.where(mask, result, 1 if product else 0)
            flat = np.reshape(result, (*shape[:outer], -1))
            return flat.prod(axis=-1) if product else flat.sum(axis=-1)
        return total

    def _elementwise(self, function: Any) -> Any:
        """A function of the spec language applied to arrays: NumPy's own where it computes the same complex
        values in doubles, else the scalar table's function entry by entry (mpmath, kinks decided by real parts)."""
        if not self.wide and function in _NUMPY_FUNCTIONS:
            return _NUMPY_FUNCTIONS[function]
        scalar = self.functions[function]

        def apply(*arguments: Any) -> Any:
            if not any(isinstance(a, np.ndarray) for a in arguments):
                return scalar(*arguments)
            values = np.frompyfunc(scalar, len(arguments), 1)(*arguments)
            return values if self.wide else values.astype(complex)
        return apply

    def _derivative(self, partial: Partial, point: Point, frame: Frame) -> Any:
        raise NotImplementedError(f"cannot evaluate {partial}: derivatives are the step checker's")


#: The range of a spec of one range (y[i] = …), named as its size symbol n is, and the sizes it is checked at.
ONE_RANGE = "n"
ONE_RANGE_SIZES = (1, 2, 3, 5)


def one_range_view(spec: Spec, surrogate: Definition | None) -> tuple[Spec, dict[str, tuple[str, ...]]]:
    """A spec of one range as the checker reads any spec: its range n (the size symbol its sums run to) and
    every array's axes, the vectors' (inputs, definitions and an upstream gradient the surrogate reads) n."""
    vectors = {name for name in spec.inputs} | {d.name for d in spec.definitions if d.is_vector}
    if surrogate is not None:
        vectors |= {str(entry.base) for entry in surrogate.expr.atoms(sp.Indexed)}
    names = [*spec.inputs, *(d.name for d in spec.definitions),
             *sorted(vectors - set(spec.inputs) - {d.name for d in spec.definitions})]
    axes: dict[str, tuple[str, ...]] = {name: (ONE_RANGE,) if name in vectors else () for name in names}
    return dataclasses.replace(spec, sizes={ONE_RANGE: size_symbol}), axes


@dataclass(frozen=True)
class Frame:
    """Index symbols bound to whole ranges, one array axis each in order (first value, count), or to one value
    each (fixed): what an expression is evaluated over at once. A sum appends its bound as a last axis."""

    axes: tuple[tuple[sp.Symbol, int, int], ...] = ()
    fixed: tuple[tuple[sp.Symbol, int], ...] = ()

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(count for _, _, count in self.axes)

    def with_axis(self, symbol: sp.Symbol, first: int, count: int) -> Frame:
        return Frame((*self.axes, (symbol, first, count)), self.fixed)

    def values(self, symbol: sp.Symbol) -> Any:
        """The symbol's values along its axis (the newest binding: a sum's bound shadows an outer index), its
        fixed value, or None where the frame does not bind it."""
        for position in range(len(self.axes) - 1, -1, -1):
            bound, first, count = self.axes[position]
            if bound == symbol:
                shape = [1] * len(self.axes)
                shape[position] = count
                return np.arange(first, first + count, dtype=float).reshape(shape)
        for bound, value in self.fixed:
            if bound == symbol:
                return value
        return None


#: The axis of a probed point's copies (see Point.probe): first in every frame that evaluates one.
PROBE = sp.Symbol("_probe", integer=True)


def as_integers(values: Any) -> Any:
    """Positions and index values as integers (rounded real parts), from doubles, complex or mpmath numbers."""
    if isinstance(values, np.ndarray):
        if values.dtype == object:
            return np.frompyfunc(lambda v: round(complex(v).real), 1, 1)(values).astype(np.int64)
        return np.rint(np.real(values)).astype(np.int64)
    return round(complex(values).real)


def _scalar(values: Any) -> Any:
    """A frame without axes' value as one number."""
    return values.item() if isinstance(values, np.ndarray) else values


def _integer_power(base: Any, exponent: int) -> Any:
    """base ** exponent by repeated squaring: exact for a complex step, where the polar form of a negative
    base loses the step's 1e-30 to rounding."""
    if exponent < 0:
        return 1 / _integer_power(base, -exponent)
    result: Any = 1
    square = base
    while exponent:
        if exponent & 1:
            result = result * square
        exponent >>= 1
        if exponent:
            square = square * square
    return result


#: NumPy's functions that compute the spec language's functions in complex doubles as the scalar table does
#: (kinks decided by the real part); the others go entry by entry through that table.
_NUMPY_FUNCTIONS: dict[Any, Any] = {
    sp.exp: np.exp,
    sp.log: np.log,
    sp.tanh: np.tanh,
    sigmoid: lambda u: 1 / (1 + np.exp(-u)),
    sp.Abs: lambda u: np.where(np.real(u) >= 0, u, -u),
    sp.sign: lambda u: np.sign(np.real(u)).astype(complex),
    Bracket: lambda u: np.where(np.rint(np.real(u)) >= 0, 1.0, 0.0),
    Edge: lambda u: np.where(np.rint(np.real(u)) >= 0, 1.0, 0.0),
}
