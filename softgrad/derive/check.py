"""The machine check of every step: both sides evaluated at concrete sizes and random points.

The left-hand side of a step is a derivative written out (Partial); its true value comes from the
forward function by complex-step differentiation (exact to rounding, and independent of the rules
that produced the right-hand side). Every form in the step's chain must match it at n = 1, 2, 3, 5,
for every index pair the step claims, at several random points.
"""

from __future__ import annotations

import cmath
import contextlib
import itertools
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sympy as sp
from sympy.codegen.cfunctions import log1p

from softgrad import tolerances
from softgrad.derive.algebra import positive_inputs
from softgrad.derive.matrix import entries
from softgrad.derive.proof import ProofMarks, Prover
from softgrad.derive.spec import Definition, Spec
from softgrad.derive.steps import Step
from softgrad.derive.symbols import Bracket, Edge, Partial, SumExcept, sigmoid, softplus
from softgrad.derive.symbols import n as size_symbol
from softgrad.errors import SpecError, StepCheckFailed

SIZES = (1, 2, 3, 5)
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
        self._perturbed: dict[tuple[Any, ...], Point] = {}  # (point id, vector, entry) → point with that entry + ih
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
                sizes = {size: self.number(sp.Integer(size)) for size in SIZES}  # converted once, not per use
                number = self.number
                return lambda point, indices: indices[symbol] if symbol in indices else (
                    sizes[point.size] if point.size in sizes else number(sp.Integer(point.size)))
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
        if isinstance(expr, Partial):
            partial = self._partial
            return lambda point, indices: partial(expr, point, indices)
        function = self.functions.get(expr.func)
        if function is None:
            message = f"cannot evaluate {expr.func.__name__}"

            def unknown(point: Point, indices: dict[Any, int]) -> Any:
                raise TypeError(message)
            return unknown
        arguments = [self._compile(a) for a in expr.args]
        return lambda point, indices: function(*(argument(point, indices) for argument in arguments))

    def matrix(self, form: sp.MatrixExpr, point: Point) -> list[list[Any]]:
        """A matrix form's entries at the point (rows of numbers), in the evaluator's numbers."""
        return entries(form, point.size, lambda name: point.vectors[name], lambda e: self.value(e, point, {}),
                       self.number(sp.S.One), self.number(sp.S.Zero))

    @staticmethod
    def _index(index_expr: sp.Expr, indices: dict[sp.Symbol, int]) -> int:
        return indices[index_expr] if index_expr in indices else int(index_expr)

    def _partial(self, expr: Partial, point: Point, indices: dict[Any, int]) -> Any:
        """∂expr/∂var by the complex step: Im f(v + ih) / h, every definition downstream recomputed."""
        var = expr.var
        name, position = str(var.base), self._index(var.indices[0], indices)
        key = (id(point), name, position)
        perturbed = self._perturbed.get(key)
        if perturbed is None:
            vectors = {k: list(v) for k, v in point.vectors.items()}
            vectors[name][position] += 1j * COMPLEX_STEP
            is_definition = any(d.name == name for d in self.definitions)
            perturbed = self.complete(Point(point.size, vectors, point.scalars), frozen=name if is_definition else None)
            self._perturbed[key] = perturbed
        return self.value(expr.expr, perturbed, indices).imag / COMPLEX_STEP


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


#: The ranges inputs are drawn from, one per point at each size: ordinary values, values up to magnitude
#: 10, and values near 0. Inputs the spec takes a log or root of are drawn positive.
SIGNED_RANGES = ((-2.0, 2.0), (-10.0, 10.0), (-0.01, 0.01))
POSITIVE_RANGES = ((0.2, 1.2), (0.05, 10.0), (0.001, 0.02))
POINTS = len(SIGNED_RANGES)


def sample_points(spec: Spec, inputs: list[str], size: int, rng: random.Random, constrained: bool,
                  positive: set[str] | frozenset[str] = frozenset(), scale: int = 0) -> Point:
    """Random inputs from each input's domain: signed, or positive for those in `positive` (under a log or a
    square root, or targets a constraint normalises); constrained inputs rescaled to their sum. `scale`
    picks the range (see SIGNED_RANGES)."""
    def draw(name: str) -> complex:
        fact = spec.facts.get(name)
        if fact == "binary":  # given t in {0, 1}
            return complex(rng.randint(0, 1))
        if fact == "unit":  # given 0 <= p <= 1
            return complex(rng.uniform(0.02, 0.98))
        low, high = (POSITIVE_RANGES if name in positive or fact == "positive" else SIGNED_RANGES)[scale]
        return complex(rng.uniform(low, high))

    vectors = {name: [draw(name) for _ in range(size)] for name in inputs}
    if constrained:
        for constraint in spec.constraints:
            values = vectors[constraint.input_name]
            factor = complex(float(constraint.rhs)) / sum(values)
            vectors[constraint.input_name] = [v * factor for v in values]
    scalars = {name: complex(rng.uniform(0.5, 2.0)) for name in spec.parameters}
    return Point(size, vectors, scalars)


class StepChecker:
    """Checks steps of one derivation; extra definitions (e.g. a surrogate loss for VJPs) may be added."""

    def __init__(self, spec: Spec, extra_definitions: Sequence[Definition] = (), extra_inputs: Sequence[str] = (),
                 seed: int = 0, background_proofs: bool = False):
        """background_proofs: prove steps in another process while the caller goes on; their `proved`
        marks are then set by marks.finish() (else each step is proved as it is checked)."""
        self.spec = spec
        self.definitions = list(spec.definitions) + list(extra_definitions)
        self.inputs = list(spec.inputs) + list(extra_inputs)
        self.seed = seed
        self.wide = False  # True once double precision overflowed: every later check runs in mpmath
        try:
            self._sample(Evaluator)
            if self.undefined:  # a 0/0 or log 0 in doubles may be an underflow (exp(x − 1000)): mpmath decides
                undefined = self.undefined
                self._widen()
                if self.undefined == undefined:  # the same points: the spec itself is undefined there
                    self.wide = False
                    self._sample(Evaluator)
        except OverflowError:
            self._widen()
        if not any(self.points.values()):
            raise SpecError(f"{spec.output.name} is not a real number at any point sampled (a division by 0, or "
                            "the logarithm or square root of a negative number, whatever the inputs): there is "
                            "nothing to check a step against")
        self.checked = 0
        self.prover = Prover(spec, self.definitions, self.inputs)
        self.marks = ProofMarks(self.prover, background_proofs, lambda sizes: f"identical at n = "
                                f"{', '.join(map(str, sizes))}")
        self._explicit: dict[tuple[Any, ...], list[list[Any]]] = {}

    def _sample(self, evaluator_class: type[Evaluator]) -> None:
        self.evaluator = evaluator_class(self.definitions)
        rng = random.Random(self.seed)
        # targets that a constraint normalises stay positive (their sum must not come near 0)
        positive = positive_inputs(self.definitions, self.inputs) | {c.input_name for c in self.spec.constraints}
        #: (constrained, size, scale) of the points where the spec is not a real number: not points to check
        #: at (y = p²/Σp² for a centred p at n = 1, where every p is 0)
        self.undefined: set[tuple[bool, int, int]] = set()
        self.points: dict[bool, list[Point]] = {constrained: [] for constrained in (False, True)}
        for constrained in (False, True):
            for size in SIZES:
                for scale in range(POINTS):
                    drawn = sample_points(self.spec, self.inputs, size, rng, constrained, positive,
                                          scale % len(SIGNED_RANGES))
                    try:
                        point = self.evaluator.complete(drawn)
                    except (ZeroDivisionError, ValueError):  # 1/0, log 0 in cmath
                        point = None
                    except OverflowError:  # in doubles: widen (the caller); in mpmath: e^(e^(e^(e^10))) has no value
                        if evaluator_class is not WideEvaluator:
                            raise
                        point = None
                    if point is None or not self.evaluator.real(point) or not self._in_floats(point):
                        self.undefined.add((constrained, size, scale))
                    else:
                        self.points[constrained].append(point)

    def _in_floats(self, point: Point) -> bool:
        """Whether the spec's value at the point is one some floating-point format holds (see LARGEST_FLOAT)."""
        output = self.spec.output.name
        values = point.vectors.get(output) or [point.scalars[output]]
        return all(abs(value) <= LARGEST_FLOAT for value in values)

    @property
    def sizes(self) -> list[int]:
        """The sizes n that have points to check at."""
        return sorted({point.size for points in self.points.values() for point in points})

    def _widen(self) -> None:
        """Values beyond double precision (exp(1000)): check in mpmath from now on, at the same points."""
        self.wide = True
        with wide_precision():
            self._sample(WideEvaluator)

    def _precision(self) -> contextlib.AbstractContextManager[Any]:
        return wide_precision() if self.wide else contextlib.nullcontext()

    def check(self, step: Step) -> Step:
        """Mark the step checked, or raise StepCheckFailed with a concrete counterexample.

        A mismatch in double precision is confirmed in extended precision before it is reported: large
        terms that cancel (1/√ε in a normalisation at n = 1) lose digits to rounding, not to a wrong step."""
        free, equal, distinct = self._cases(step)
        self.marks.submit(step, free, equal, distinct)  # first: the prover works on it while the numbers are checked
        if not self.wide:
            try:
                return self._check(step)
            except (OverflowError, ZeroDivisionError, StepCheckFailed):
                self._widen()
        with self._precision():
            try:
                return self._check(step)
            except StepCheckFailed:
                self._refuse_if_unstable()
                raise

    def _refuse_if_unstable(self) -> None:
        """Raise SpecError where the spec's own value changes with the working precision (30 against 60
        digits): y = p/Σp for a centred p divides by a sum that is 0 whatever the inputs, and rounding
        decides its value. A step cannot be judged against that; the spec is at fault, not the step."""
        import mpmath

        output = self.spec.output.name
        finer_evaluator = WideEvaluator(self.definitions)
        for point in self.points[False]:
            inputs = Point(point.size, {name: point.vectors[name] for name in self.inputs},
                           {name: point.scalars[name] for name in self.spec.parameters})
            with mpmath.workdps(2 * WIDE_DIGITS):
                finer = finer_evaluator.complete(inputs)
            coarse = point.vectors.get(output) or [point.scalars[output]]
            fine = finer.vectors.get(output) or [finer.scalars[output]]
            if any(abs(a - b) > 1e-12 * max(abs(b), 1) for a, b in zip(coarse, fine)):
                raise SpecError(f"{output} has no stable value at the points sampled: with 30 and with 60 digits it "
                                "comes out different (a division by something that is 0 whatever the inputs?)")

    @staticmethod
    def _cases(step: Step) -> tuple[list[sp.Symbol], Any, Any]:
        """The step's free indices, and the case (i = j, i ≠ j) it is restricted to, if any."""
        free = sorted({s for e in [step.lhs, *step.forms] for s in _free_indices(e)}, key=str)
        # a case restriction applies where both of its indices are still free: in the case i = j the
        # step is usually written with j already replaced by i, and then every pair it has is in the case
        equal = step.equal if step.equal and set(step.equal) <= set(free) else None
        distinct = step.distinct if step.distinct and set(step.distinct) <= set(free) else None
        return free, equal, distinct

    def _check(self, step: Step) -> Step:
        free, equal, distinct = self._cases(step)
        comparisons: dict[int, int] = {}
        for point in self.points[bool(step.assumes)]:
            for values in itertools.product(range(point.size), repeat=len(free)):
                indices = dict(zip(free, values))
                if equal and indices[equal[0]] != indices[equal[1]]:
                    continue
                if distinct and indices[distinct[0]] == indices[distinct[1]]:
                    continue
                expected = self._finite(self.evaluator.value(step.lhs, point, indices))
                for form in step.forms:
                    got = self._finite(self._form_value(step, form, point, indices))
                    scale = max(abs(expected), 1.0)
                    if not abs(got - expected) <= tolerances.STEP * scale:
                        raise StepCheckFailed(
                            f"step '{step.rule}' failed its check at n = {point.size}, "
                            f"{_describe(indices)}: {sp.sstr(step.lhs)} = {float(expected.real):.12g} "
                            f"but {sp.sstr(form)} = {float(got.real):.12g}"
                        )
                    comparisons[point.size] = comparisons.get(point.size, 0) + 1
        if not comparisons:  # never "checked" on nothing
            raise StepCheckFailed(f"step '{step.rule}' had no index pair to compare at n = "
                                  f"{', '.join(map(str, SIZES))}: it cannot be called checked")
        step.checked = True
        sizes = sorted(comparisons)
        step.check_detail = f"{sum(comparisons.values())} comparisons at n = {', '.join(map(str, sizes))}"
        step.check_sizes = tuple(sizes)
        self.checked += 1
        return step

    def _finite(self, value: Any) -> Any:
        """The value, or OverflowError where double precision ran out (an inf or NaN from finite inputs)."""
        if self.wide:
            import mpmath

            if not mpmath.isfinite(value):
                raise StepCheckFailed("a step's value is not finite even in extended precision: "
                                      "the spec's constants are too large to check")
            return value
        if not cmath.isfinite(value):
            raise OverflowError("double precision overflowed")
        return value

    def _form_value(self, step: Step, form: sp.Expr, point: Point, indices: dict[sp.Symbol, int]) -> Any:
        if isinstance(form, sp.MatrixExpr):
            row, column = ([*list(step.matrix_axes), None, None])[:2]
            key = (id(point), form)
            if key not in self._explicit:
                self._explicit[key] = self.evaluator.matrix(form, point)
            explicit = self._explicit[key]
            return explicit[indices.get(row, 0)][indices.get(column, 0) if len(explicit[0]) > 1 else 0]
        return self.evaluator.value(form, point, indices)


def _free_indices(expr: sp.Basic) -> set[sp.Symbol]:
    if isinstance(expr, sp.MatrixExpr):
        return set()
    return {s for s in expr.free_symbols if s.is_integer and s != size_symbol}


def _describe(indices: dict[Any, int]) -> str:
    return ", ".join(f"{k} = {v}" for k, v in indices.items()) or "no index"

