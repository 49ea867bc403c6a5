"""The machine check of every step of a tensor derivation: both sides evaluated entry by entry.

The ranges get small, different sizes (so that a transposed index or a sum over the wrong axis shows),
in two assignments; the inputs get random values (labels random classes, constrained targets rows that
satisfy the constraint). A written-out derivative ∂ℓ/∂X[q] is computed from the forward function by a
complex step (exact to rounding, independent of the rules that produced the right-hand side).
"""

from __future__ import annotations

import contextlib
import itertools
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import sympy as sp

from softgrad import tolerances
from softgrad.derive.check import LARGEST_FLOAT, Evaluator, WideEvaluator, wide_precision
from softgrad.derive.matrix import entries
from softgrad.derive.proof import ProofMarks, Prover
from softgrad.derive.spec import Definition, Spec
from softgrad.derive.steps import Step
from softgrad.derive.symbols import Partial
from softgrad.errors import SpecError, StepCheckFailed

COMPLEX_STEP = 1e-30
#: The standard deviation of the signed inputs at each point of a size assignment: ordinary values, values
#: up to about 10, values near 0 (as the one-index sampler's ranges).
INPUT_SCALES = (1.0, 4.0, 0.005)
POINTS = len(INPUT_SCALES)


@dataclass
class Point:
    sizes: dict[sp.Symbol, int]
    arrays: dict[str, Any]
    scalars: dict[str, complex]
    derivatives: dict[tuple[Any, ...], tuple[Point, float]] = field(default_factory=dict)  # perturbed copies and steps

    def value(self, name: str) -> Any:
        """An array's values, or a scalar's (a loss, a scalar input's gradient dT) as a 0-d array."""
        return self.arrays[name] if name in self.arrays else np.asarray(self.scalars[name])


class TensorChecker:
    """Evaluates forward definitions, the derivation's named backward arrays and each step's forms."""

    def __init__(self, spec: Spec, axes: dict[str, tuple[str, ...]], surrogate: Definition | None,
                 positive: set[str], seed: int = 0, wide: bool = False, prove: bool = False):
        """prove: also prove each checked step exactly at small sizes (softgrad.derive.proof). wide: evaluate
        in mpmath complex numbers (inside check.wide_precision()), where doubles would overflow; the points'
        arrays then hold mpmath numbers. A checker made without it widens by itself the first time doubles
        overflow (exp(x + 1000)), at the same points."""
        self.spec = spec
        self.axes = axes  # shared with the engine: every array's ranges: inputs, definitions, upstream and adjoints
        self.forward = list(spec.definitions) + ([surrogate] if surrogate is not None else [])
        self.backward: list[Definition] = []  # named adjoints, appended as they are derived
        self._definitions = {d.name: d for d in self.forward}
        self.loss = sp.Symbol(surrogate.name) if surrogate is not None else sp.Symbol(spec.output.name)
        self.positive, self.seed = positive, seed
        given = [name for name in axes if name not in self._definitions]  # the inputs and the upstream gradient
        self.prover = Prover(spec, self.forward, given, axes=axes, loss=self.loss) if prove else None
        self.marks = ProofMarks(self.prover, True, lambda sizes: "identical at every range of size "
                                f"{', '.join(map(str, sizes))}") if self.prover is not None else None
        self.checked = 0
        self._reader_sets: dict[str, set[str]] = {}
        ranges = spec.base_sizes()  # a range a shifted read reaches (n_s = n_t + n_k − 1) follows from these
        # every range of size 1 once (a softmax over one class, a batch of one), then small different sizes
        # (so that a transposed index or a sum over the wrong axis shows)
        self.assignments = [[1] * len(ranges)] + [_within_budget([2 + (position + shift) % 3
                                                                  for position in range(len(ranges))])
                                                  for shift in (0, 1)]
        self.wide = False
        #: the points drawn again in mpmath where a step failed in doubles (saturated P = 1), kept for later steps
        self._wide_points: tuple[Any, ...] | None = None
        if wide:
            self._sample(wide=True)
        else:
            try:
                self._sample(wide=False)
            except (OverflowError, ZeroDivisionError):  # exp(1000) in doubles, or 0/0 after an underflow
                self._widen()

    def _sample(self, wide: bool) -> None:
        """The points, drawn from the seed (the same points whatever the precision)."""
        self.wide = wide
        numbers = WideEvaluator if wide else Evaluator  # the step check's own functions and constants
        self.functions, self.number = numbers.functions, numbers.number
        self._compiled: dict[sp.Basic, Any] = {}
        rng = np.random.default_rng(self.seed)
        self.points: list[Point] = []
        self.undefined = 0  # points where the spec has no finite value (a variance over n − 1 at n = 1)
        self.rescaled = 0  # points drawn at a smaller scale, where doubles overflow at their own
        for sizes in self.assignments:
            size_of = self.spec.all_sizes({self.spec.sizes[name]: size
                                           for name, size in zip(self.spec.base_sizes(), sizes)})
            by_name = {name: size_of[symbol] for name, symbol in self.spec.sizes.items()}
            for scale in INPUT_SCALES:
                if not wide:  # an overflow or a 0/0 in doubles may be exp(±1000): mpmath decides
                    # a composition that overflows at this scale (exp of a product of products, as attention
                    # after its projections) is drawn at smaller ones first: doubles are 20–50× faster
                    for smaller in (scale, scale / 4, scale / 16):
                        try:
                            with np.errstate(all="ignore"):
                                point = self._point(size_of, by_name, self.positive, rng, smaller)
                        except (OverflowError, ZeroDivisionError):  # cmath.exp raises where doubles overflow
                            continue
                        if self._finite_output(point):
                            break
                    else:
                        raise ZeroDivisionError
                    self.rescaled += smaller != scale
                    self.points.append(point)
                    continue
                try:
                    kept: Point | None = self._point(size_of, by_name, self.positive, rng, scale)
                except (ZeroDivisionError, ValueError, OverflowError):  # OverflowError: beyond even mpmath
                    kept = None
                if kept is None or not self._finite_output(kept):
                    self.undefined += 1
                else:
                    self.points.append(kept)
        if not self.points:
            raise SpecError(f"{self.spec.output.name} has no finite value at any point sampled (a division by 0, "
                            "or the logarithm of 0, whatever the inputs): there is nothing to check a step against")

    @property
    def sizes_text(self) -> str:
        """The size assignments that have points to check at, as the summary says them."""
        base = self.spec.base_sizes()
        kept = [sizes for sizes in self.assignments
                if any([p.sizes[self.spec.sizes[name]] for name in base] == sizes for p in self.points)]
        return " and ".join(", ".join(f"n_{name} = {size}" for name, size in zip(base, sizes))
                            for sizes in kept)

    def _finite_output(self, point: Point) -> bool:
        """Whether the spec's value at the point is finite (in mpmath: within any float format's range)."""
        output = self.spec.output.name
        values = point.arrays[output].ravel() if output in point.arrays else [point.scalars[output]]
        if not self.wide:  # doubles: finite is within range (a NumPy number cannot be compared with 10^4932)
            return bool(np.all(np.isfinite(np.asarray(values, dtype=complex))))
        import mpmath

        return all(mpmath.isfinite(v) and abs(v) <= LARGEST_FLOAT for v in values)

    def _widen(self) -> None:
        with wide_precision():
            self._sample(wide=True)

    def _precision(self) -> contextlib.AbstractContextManager[Any]:
        return wide_precision() if self.wide else contextlib.nullcontext()

    def add_backward(self, definition: Definition) -> None:
        """A backward array the derivation named (dP): computed at every point, read by later steps."""
        self.backward.append(definition)
        if self.prover is not None:
            self.prover.add(definition, self.axes.get(definition.name, ()))

    def _prove(self, step: Step) -> None:
        """Mark the step proved where both sides are identical at every range size of TENSOR_PROOF_SIZES."""
        if self.marks is None:  # made without prove
            return
        sides = [step.lhs, *[f for f in step.forms if not isinstance(f, sp.MatrixExpr)]]
        free = sorted({s for e in sides for s in _free_indices(e)}, key=str)
        ranges = {s: self._range_of(s, step) for s in free}
        equal = step.equal if step.equal and set(step.equal) <= set(free) else None
        distinct = step.distinct if step.distinct and set(step.distinct) <= set(free) else None
        self.marks.submit(step, free, equal, distinct, ranges)

    def _point(self, size_of: dict[sp.Symbol, int], by_name: dict[str, int], positive: set[str],
               rng: np.random.Generator, scale: float) -> Point:
        defined = {d.name for d in self.spec.definitions}
        given = [name for name in self.axes if name not in defined]  # the inputs and the upstream gradient
        arrays, scalars = sample_inputs(self.spec, self.axes, given, by_name, positive, rng, scale)
        for name in [name for name in arrays if not self.axes[name]]:  # a scalar input (T) is read as a symbol
            scalars[name] = float(arrays.pop(name))
        if self.wide:
            import mpmath

            point = Point(size_of, {name: np.vectorize(mpmath.mpc, otypes=[object])(values.astype(float))
                                    for name, values in arrays.items()},
                          {name: mpmath.mpc(value) for name, value in scalars.items()})
        else:
            point = Point(size_of, {name: values.astype(complex) for name, values in arrays.items()},
                          {name: complex(value) for name, value in scalars.items()})
        self.complete(point, self.forward)
        return point

    # ------------------------------------------------------------ evaluation
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
            if definition.is_vector:
                ranges = self.axes[definition.name]
                shape = tuple(point.sizes[self.spec.sizes[r]] for r in ranges)
                values = np.empty(shape, dtype=object if self.wide else complex)
                for entry in itertools.product(*(range(s) for s in shape)):
                    values[entry] = self.value(definition.expr, point, dict(zip(definition.indices, entry)))
                point.arrays[definition.name] = values
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
        return self.compiled(expr)(point, env)

    def compiled(self, expr: sp.Basic) -> Any:
        """expr as a Python closure (point, env) → value, made once per expression: evaluating the same
        formulas at every entry of every point then costs no more SymPy dispatch."""
        function = self._compiled.get(expr)
        if function is None:
            function = self._compiled[expr] = self._compile(expr)
        return function

    def _compile(self, expr: sp.Basic) -> Any:
        if expr.is_Number or expr.is_NumberSymbol:
            constant = self.number(expr)
            return lambda point, env: constant
        if isinstance(expr, sp.Indexed):
            name = str(expr.base)
            positions = [self.compiled(i) for i in expr.indices]
            if all(i.is_Symbol or isinstance(i, sp.Indexed) for i in expr.indices):
                return lambda point, env: point.arrays[name][tuple(round(complex(p(point, env)).real)
                                                                   for p in positions)]

            def shifted(point: Point, env: dict[Any, int]) -> Any:  # an entry outside the array reads as 0
                values = point.arrays[name]
                at = tuple(round(complex(p(point, env)).real) for p in positions)
                inside = all(0 <= a < size for a, size in zip(at, values.shape))
                return values[at] if inside else 0j
            return shifted
        if expr.is_Symbol:
            key = str(expr)

            def symbol(point: Point, env: dict[Any, int]) -> Any:
                if expr in env:
                    return env[expr]
                if expr in point.sizes:
                    return point.sizes[expr]
                if key not in point.scalars:  # a scalar input given as a 0-d array (T)
                    return point.arrays[key][()]
                return point.scalars[key]
            return symbol
        if expr.is_Add:
            terms = [self.compiled(a) for a in expr.args]
            return lambda point, env: sum((t(point, env) for t in terms), 0j)
        if expr.is_Mul:
            factors = [self.compiled(a) for a in expr.args]

            def product(point: Point, env: dict[Any, int]) -> Any:
                result = 1 + 0j
                for factor in factors:
                    result *= factor(point, env)
                return result
            return product
        if expr.is_Pow:
            base, exponent = self.compiled(expr.base), self.compiled(expr.exp)
            exp, log = self.functions[sp.exp], self.functions[sp.log]

            def power(point: Point, env: dict[Any, int]) -> Any:
                b, e = base(point, env), exponent(point, env)
                if e.imag == 0 and e.real == int(e.real):
                    return b ** int(e.real)
                return exp(e * log(b))
            return power
        if isinstance(expr, sp.KroneckerDelta):
            first, second = (self.compiled(a) for a in expr.args)
            return lambda point, env: 1.0 if round(complex(first(point, env)).real) == round(
                complex(second(point, env)).real) else 0.0
        if isinstance(expr, sp.Sum):
            bounds = [limit[0] for limit in expr.limits]
            lows = [self.compiled(limit[1]) for limit in expr.limits]
            highs = [self.compiled(limit[2]) for limit in expr.limits]
            summand = self.compiled(expr.function)

            def total(point: Point, env: dict[Any, int]) -> Any:
                ranges = [range(int(low(point, env).real), int(high(point, env).real) + 1)
                          for low, high in zip(lows, highs)]
                result = 0j
                for entry in itertools.product(*ranges):
                    result += summand(point, {**env, **dict(zip(bounds, entry))})
                return result
            return total
        if isinstance(expr, Partial):
            return lambda point, env: self._derivative(expr, point, env)
        function = self.functions.get(expr.func)
        if function is not None:
            arguments = [self.compiled(a) for a in expr.args]
            return lambda point, env: function(*(a(point, env) for a in arguments))
        raise NotImplementedError(f"cannot evaluate {expr.func.__name__}")

    def _derivative(self, partial: Partial, point: Point, env: dict[Any, int]) -> Any:
        """∂ℓ/∂X[q] by a complex step on X[q], everything computed from X recomputed; ∂C[a]/∂X[q] for a
        definition C is the derivative of C's own formula, and ∂(formula)/∂X[q] that of the formula, the
        arrays they read held (the chain rule's factors)."""
        target = partial.expr
        if target == self.loss:
            moved, step = self._perturbed(point, partial.var, env, recompute=True)
            return self.value(target, moved, env).imag / step
        moved, step = self._perturbed(point, partial.var, env, recompute=False)
        definition = self._definitions.get(str(target.base) if isinstance(target, sp.Indexed) else str(target))
        if definition is None:
            return self.value(target, moved, env).imag / step
        at = {index: round(complex(self.value(p, point, env)).real)
              for index, p in zip(definition.indices, getattr(target, "indices", ()))}
        return self.value(definition.expr, moved, at).imag / step

    def _perturbed(self, point: Point, var: sp.Expr, env: dict[Any, int], recompute: bool) -> tuple[Point, float]:
        """The point with X[q] (or a scalar X) moved by a complex step, and the step, made once per entry: with
        everything computed from X recomputed (recompute) or not (the other arrays held). The step is far
        below the entry's own magnitude: a probability of 1e-32 under a log is not moved by 1e-30."""
        name = str(var.base) if isinstance(var, sp.Indexed) else str(var)
        entry = tuple(round(complex(self.value(i, point, env)).real) for i in getattr(var, "indices", ()))
        key = (name, entry, recompute)
        cached = point.derivatives.get(key)
        if cached is None:
            moved = Point(point.sizes, {k: v.copy() for k, v in point.arrays.items()}, dict(point.scalars))
            magnitude = float(abs(moved.arrays[name][entry] if isinstance(var, sp.Indexed) else moved.scalars[name]))
            step = COMPLEX_STEP * min(1.0, magnitude) if magnitude > 1e-250 else COMPLEX_STEP
            if isinstance(var, sp.Indexed):
                moved.arrays[name][entry] += step * 1j
            else:
                moved.scalars[name] += step * 1j
            if recompute:
                self.complete(moved, self.forward, after=name if name not in self.spec.inputs else None,
                              reading=name)
            cached = point.derivatives[key] = (moved, step)
        return cached

    def matrix_value(self, expr: Any, point: Point) -> Any:
        """A matrix form's entries at the point (rows; a vector as a column)."""
        def rows(name: str) -> Any:
            values = point.arrays[name]
            return (values.reshape(-1, 1) if values.ndim == 1 else values).tolist()

        try:
            return entries(expr, 0, None, lambda scalar: self.value(scalar, point, {}), 1.0, 0.0, arrays=rows,
                           dimension=lambda side: int(complex(self.value(side, point, {})).real))
        except TypeError as unknown:
            raise NotImplementedError(str(unknown)) from None

    # ------------------------------------------------------------ checking
    def check(self, step: Step) -> Step:
        """Every form of the step equals its left-hand side at every entry, at every point; or raise.

        Where doubles overflow (a backward array of exp(x + 1000)), this and every later check runs in mpmath;
        a mismatch in doubles is confirmed in mpmath before it is reported (terms of 1/√ε that cancel lose
        digits to rounding, not to a wrong step)."""
        self._check_numerically(step)
        self.checked += 1
        self._prove(step)
        return step

    def _check_numerically(self, step: Step) -> Step:
        if not self.wide:
            try:
                with np.errstate(all="ignore"):
                    return self._check(step)
            except (OverflowError, ZeroDivisionError):
                self._widen()
            except StepCheckFailed:
                doubles = (self.points, self.functions, self.number, self._compiled, self.undefined)
                if self._wide_points is None:  # sampled in mpmath once, reused by every later step that needs it
                    self._widen()
                    self._wide_points = (self.points, self.functions, self.number, self._compiled, self.undefined)
                else:
                    self.points, self.functions, self.number, self._compiled, self.undefined = self._wide_points
                    self.wide = True
                try:
                    with self._precision():
                        return self._check(step)
                finally:
                    self.points, self.functions, self.number, self._compiled, self.undefined = doubles
                    self.wide = False
        with self._precision():
            return self._check(step)

    def _check(self, step: Step) -> Step:
        free = sorted({s for e in [step.lhs, *[f for f in step.forms if not isinstance(f, sp.MatrixExpr)]]
                       for s in _free_indices(e)}, key=str)
        ranges = {s: self._range_of(s, step) for s in free}
        compared = 0
        for number, point in enumerate(self.points):
            full = Point(point.sizes, dict(point.arrays), dict(point.scalars), point.derivatives)
            self.complete(full, self.backward)
            matrices = [self.matrix_value(f, full) if isinstance(f, sp.MatrixExpr) else None for f in step.forms]
            sizes = [range(full.sizes[self.spec.sizes[ranges[s]]]) for s in free]
            for entry in checked_entries(sizes, self.seed + number):
                env = dict(zip(free, entry))
                if step.distinct and env.get(step.distinct[0]) == env.get(step.distinct[1]):
                    continue  # the step claims only the entries where these indices differ
                expected = self.value(step.lhs, full, env)
                for position, form in enumerate(step.forms):
                    matrix = matrices[position]
                    if matrix is not None:
                        axes = tuple(env[a] for a in step.matrix_axes)
                        got = matrix[axes[0]][axes[1] if len(axes) == 2 else 0]
                    else:
                        got = self.value(form, full, env)
                    compared += 1
                    if not (abs(got - expected) <= tolerances.STEP * max(1.0, abs(expected))):
                        where = ", ".join(f"{s} = {v}" for s, v in env.items())
                        raise StepCheckFailed(
                            f"step '{step.rule}' does not hold: form {position + 1} is {float(got.real):.6g}, "
                            f"the left-hand side {float(expected.real):.6g} (at {where or 'the scalar'}, "
                            f"point {number + 1})")
        step.checked = True
        every = all(math.prod(p.sizes[self.spec.sizes[ranges[s]]] for s in free) <= MOST_ENTRIES for p in self.points)
        step.check_detail = (f"{'every entry' if every else f'up to {MOST_ENTRIES} entries per point'} at "
                             f"{self.sizes_text} ({POINTS} random points each, {compared} comparisons)")
        step.check_sizes = tuple(sorted({size for p in self.points for size in p.sizes.values()}))
        return step

    def _range_of(self, symbol: sp.Symbol, step: Step) -> str:
        for expr in [step.lhs, *step.forms]:
            if isinstance(expr, sp.MatrixExpr):
                continue
            for entry in sp.preorder_traversal(expr):
                if isinstance(entry, sp.Indexed) and str(entry.base) in self.axes:
                    for axis, position in enumerate(entry.indices):
                        if position == symbol:
                            return self.axes[str(entry.base)][axis]
        raise StepCheckFailed(f"cannot tell the range of index {symbol} in step '{step.rule}'")


#: Entries compared per point and step: every one up to this many, else this many — the diagonal ones (every index
#: equal, where cases meet) and a seeded sample of the others. A wrong step is wrong at most entries; checking
#: every entry of an eight-range spec (multi-head attention with its projections) costs minutes.
MOST_ENTRIES = 64


#: The most entries a point's ranges may span together (the product of their sizes): a spec of many ranges
#: (a 2-D convolution: b, o, c, i, j, p, q) is checked at smaller sizes, every one still 2 or more.
LARGEST_POINT = 200


def _within_budget(sizes: list[int]) -> list[int]:
    """The sizes with the largest lowered by one, in turn, until their product is within LARGEST_POINT."""
    sizes = list(sizes)
    while math.prod(sizes) > LARGEST_POINT and max(sizes) > 2:
        largest = max(range(len(sizes)), key=lambda position: (sizes[position], position))  # the last: a sum
        sizes[largest] -= 1
    return sizes


def checked_entries(sizes: list[range], seed: int) -> list[tuple[int, ...]]:
    """The entries a step is compared at: all of them, or MOST_ENTRIES of them (see MOST_ENTRIES)."""
    count = math.prod(len(r) for r in sizes)
    if count <= MOST_ENTRIES:
        return list(itertools.product(*sizes))
    diagonal = [tuple(min(k, len(r) - 1) for r in sizes) for k in range(max(len(r) for r in sizes))]
    rng = np.random.default_rng(seed)
    chosen = dict.fromkeys(diagonal)
    while len(chosen) < MOST_ENTRIES:
        chosen.setdefault(tuple(int(rng.integers(len(r))) for r in sizes))
    return list(chosen)


def _free_indices(expr: sp.Expr) -> set[sp.Symbol]:
    bound = {limit[0] for total in expr.atoms(sp.Sum) for limit in total.limits}
    found = set()
    for entry in expr.atoms(sp.Indexed):
        for position in entry.indices:
            found |= {s for s in position.free_symbols if s.is_Symbol and s.is_integer
                      and not str(s).startswith("n_")}
    return {s for s in found if s not in bound and s in expr.free_symbols}


def sample_inputs(spec: Spec, axes: dict[str, tuple[str, ...]], names: list[str], sizes: dict[str, int],
                  positive: set[str], rng: np.random.Generator,
                  scale: float = 1.0) -> tuple[dict[str, Any], dict[str, float]]:
    """Random arrays for `names` at the given range sizes, and the spec's parameters: labels random classes,
    inputs with a fact drawn where it holds (0 or 1; in (0, 1); positive), inputs under a log or root (and
    constrained ones) positive, others normal of the given scale;
    constrained inputs then satisfy their constraint (rows summing to its value)."""
    constrained = {c.input_name for c in spec.constraints}
    arrays: dict[str, Any] = {}
    for name in names:
        shape = tuple(sizes[r] for r in axes[name])
        fact = spec.facts.get(name)
        if name in spec.labels:
            arrays[name] = rng.integers(0, sizes[spec.labels[name]], size=shape)
        elif fact == "binary":  # given t in {0, 1}
            arrays[name] = rng.integers(0, 2, size=shape).astype(float)
        elif fact == "unit":  # given 0 <= p <= 1: inside, where logs of p and 1 − p are finite
            arrays[name] = rng.uniform(0.02, 0.98, size=shape)
        elif name in positive or name in constrained or fact == "positive":
            arrays[name] = rng.uniform(0.2, 2.0, size=shape)
        else:
            arrays[name] = rng.normal(0, scale, size=shape)
    for constraint in spec.constraints:
        values = arrays[constraint.input_name]
        arrays[constraint.input_name] = (values / values.sum(axis=constraint.summed_axis, keepdims=True)
                                         * float(constraint.rhs))
    parameters = {name: float(rng.uniform(0.5, 2.0)) for name in spec.parameters}
    return arrays, parameters
