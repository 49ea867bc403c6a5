"""The machine check of every step of every derivation: both sides evaluated entry by entry.

Every range takes size 1 once, then small, different sizes (so that a transposed index or a sum over the
wrong axis shows); a spec of one range (y[i] = …) is checked at n = 1, 2, 3, 5. The inputs get random
values at three scales (labels random classes, facts honoured, targets under a declared constraint rows that
satisfy it for the steps that assume it, and rows that need not for the others). A written-out derivative
∂ℓ/∂X[q] is computed from the forward function by a complex step (exact to rounding, independent of the
rules that produced the right-hand side). Where doubles overflow, or a mismatch is within rounding, the
points are evaluated again in mpmath; a spec whose value depends on the precision is refused.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from typing import Any, cast

import numpy as np
import sympy as sp

from softgrad import tolerances
from softgrad.derive.algebra import positive_inputs
from softgrad.derive.check.numbers import (
    COMPLEX_STEP,
    DOUBLES,
    LARGEST_FLOAT,
    ONE_RANGE,
    ONE_RANGE_SIZES,
    PROBE,
    WIDE,
    WIDE_DIGITS,
    Evaluator,
    Frame,
    Point,
    as_integers,
    one_range_view,
    wide_precision,
)
from softgrad.derive.check.proof import ProofMarks, Prover
from softgrad.derive.matrix import entries
from softgrad.derive.spec import Definition, Spec, spec_text
from softgrad.derive.steps import Step
from softgrad.derive.symbols import Partial
from softgrad.derive.symbols import n as size_symbol
from softgrad.errors import SpecError, StepCheckFailed

#: The standard deviation of the signed inputs at each point of a size assignment: ordinary values, values
#: up to about 10, values near 0.
INPUT_SCALES = (1.0, 4.0, 0.005)
POINTS = len(INPUT_SCALES)


class StepChecker(Evaluator):
    """Evaluates forward definitions, the derivation's named backward arrays and each step's forms, for
    every spec (one range, its row implicit, or several)."""

    def __init__(self, spec: Spec, axes: dict[str, tuple[str, ...]] | None, surrogate: Definition | None,
                 seed: int = 0, wide: bool = False, prove: bool = False,
                 total_derivatives: bool = False, sizes: Sequence[int] = ()):
        """prove: also prove each checked step exactly at small sizes (softgrad.derive.check.proof). wide: evaluate
        in mpmath complex numbers (inside numbers.wide_precision()), where doubles would overflow; the points'
        arrays then hold mpmath numbers. A checker made without it widens by itself the first time doubles
        overflow (exp(x + 1000)), at the same points.

        axes None: a spec of one range, its row implicit (y[i] = …), checked as the spec of that one range n.
        total_derivatives: ∂C/∂X of any expression C is the total derivative, everything computed from X
        recomputed (the tutorial voice: ∂y_i/∂x_j through every intermediate); else ∂C[a]/∂X[q] of anything
        but the loss is the derivative of C's own formula, the arrays it reads held (the adjoint voice's
        chain-rule factors). sizes: the sizes n a spec of one range is checked at (ONE_RANGE_SIZES if none)."""
        self.one_range = one_range = axes is None
        positive = positive_inputs(spec.definitions, spec.inputs)  # drawn positive: under a log or a root
        if axes is None:
            spec, axes = one_range_view(spec, surrogate)
        # axes: shared with the engine: every array's ranges: inputs, definitions, upstream and adjoints
        super().__init__(spec, axes, list(spec.definitions) + ([surrogate] if surrogate is not None else []), DOUBLES)
        self.backward: list[Definition] = []  # named adjoints, appended as they are derived
        self._definitions = {d.name: d for d in self.forward}
        self.loss = sp.Symbol(surrogate.name) if surrogate is not None else sp.Symbol(spec.output.name)
        self.positive, self.seed, self.total_derivatives = positive, seed, total_derivatives
        given = [name for name in axes if name not in self._definitions]  # the inputs and the upstream gradient
        self.given = given
        self.prover: Prover | None = None
        self.marks: ProofMarks | None = None
        if prove and total_derivatives:  # the prover's own meaning of ∂ is then the one-range (total) one
            self.prover = Prover(spec, self.forward, given)
            self.marks = ProofMarks(self.prover, True, lambda sizes: f"identical at n = {', '.join(map(str, sizes))}")
        elif prove:
            self.prover = Prover(spec, self.forward, given, axes=axes, loss=self.loss)
            self.marks = ProofMarks(self.prover, True, lambda sizes: "identical at every range of size "
                                    f"{', '.join(map(str, sizes))}")
        self.checked = 0
        ranges = spec.base_sizes()  # a range a shifted read reaches (n_s = n_t + n_k − 1) follows from these
        # every range of size 1 once (a softmax over one class, a batch of one), then small different sizes
        # (so that a transposed index or a sum over the wrong axis shows)
        self.assignments = [[1] * len(ranges)] + [_within_budget([2 + (position + shift) % 3
                                                                  for position in range(len(ranges))])
                                                  for shift in (0, 1)]
        if one_range:
            self.assignments = [[size] for size in sizes or ONE_RANGE_SIZES]
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
        self.use(WIDE if wide else DOUBLES)
        self.undefined = 0  # points where the spec has no finite value (a variance over n − 1 at n = 1)
        self.rescaled = 0  # points drawn at a smaller scale, where doubles overflow at their own
        #: where the spec declares a constraint (rows of T sum to 1), a step that assumes it is checked at points
        #: that satisfy it and every other step at points that need not (p·Σt − t is not p − t), as by hand
        self.points = self._draw(np.random.default_rng(self.seed), wide, constrained=True)
        self.free_points = (self._draw(np.random.default_rng(self.seed + 1), wide, constrained=False)
                            if self.spec.constraints else self.points)

    def _draw(self, rng: np.random.Generator, wide: bool, constrained: bool) -> list[Point]:
        """A point per size assignment and input scale, where the spec has a finite value."""
        points: list[Point] = []
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
                                point = self._point(size_of, by_name, self.positive, rng, smaller, constrained)
                        except (OverflowError, ZeroDivisionError):  # cmath.exp raises where doubles overflow
                            continue
                        if self._finite_output(point):
                            break
                    else:
                        raise ZeroDivisionError
                    if not self._real(point):  # the log or root of a negative number: outside the spec's domain
                        self.undefined += constrained
                        continue
                    self.rescaled += smaller != scale and constrained
                    points.append(point)
                    continue
                try:
                    kept: Point | None = self._point(size_of, by_name, self.positive, rng, scale, constrained)
                except (ZeroDivisionError, ValueError, OverflowError):  # OverflowError: beyond even mpmath
                    kept = None
                if kept is None or not self._finite_output(kept) or not self._real(kept):
                    self.undefined += constrained
                else:
                    points.append(kept)
        if not points:
            raise SpecError(f"{self.spec.output.name} has no finite real value at any point sampled (a division by 0, "
                            "or the logarithm or square root of 0 or of a negative number, whatever the inputs): "
                            "there is nothing to check a step against")
        return points

    @property
    def sizes_text(self) -> str:
        """The size assignments that have points to check at, as the summary says them."""
        base = self.spec.base_sizes()
        return self._sizes_text(*[sizes for sizes in self.assignments
                                  if any([p.sizes[self.spec.sizes[name]] for name in base] == sizes
                                         for p in self.points)])

    def summary(self) -> str:
        """What a derivation's last line says of its checks: the steps proved and at which sizes, where every
        step was checked numerically, and what of the spec's points and facts the checks drew."""
        proved = ""
        if self.marks is not None and self.marks.proved:
            sizes = self.marks.proved_sizes
            smallest, largest = min(sizes), max(sizes)
            span = f"{smallest} to {largest}" if largest > smallest else str(smallest)
            proved = (f"{self.marks.proved} of {self.checked} steps proved exactly "
                      + (f"at n = {span}; all " if self.one_range else f"with every range of size {span}; all "))
        text = (f"{proved or f'{self.checked} steps '}checked numerically, every entry, at {self.sizes_text} "
                f"({POINTS} random points each: inputs near 0, of order 1 and of order 4)")
        spec = self.spec
        if spec.carried:
            text += (f"; {spec.carried} is carried by every array and crossed by no sum, so one row is derived (its "
                     f"index implicit, as vmap lifts a per-example function) and holds for every {spec.carried}")
        text += spec.facts_drawn
        if spec.derived_sizes:  # a range that shifted reads reach: its size follows from the others
            text += "; " + ", ".join(f"n_{name} = {spec_text(size)}" for name, size in spec.derived_sizes.items()) + (
                " (what shifted reads reach)")
        return text + self.points_said

    @property
    def points_said(self) -> str:
        """What a derivation's summary says of the points beyond their sizes: those drawn smaller, those left out."""
        said = ""
        if self.rescaled:
            said += (f"; {self.rescaled} point{'s' * (self.rescaled != 1)} drawn at a smaller scale, where doubles "
                     "overflow at their own")
        if self.undefined:
            said += (f"; {self.undefined} sampled point{'s' * (self.undefined != 1)} where {self.spec.output.name} "
                     "has no finite real value left out")
        return said

    def _sizes_text(self, *assignments: list[int]) -> str:
        """n = 1, 2, 3, 5 for one range; n_b = 2, n_c = 3 and n_b = 3, n_c = 4 for several."""
        if self.one_range:
            return f"{ONE_RANGE} = " + ", ".join(str(sizes[0]) for sizes in assignments)
        return " and ".join(", ".join(f"n_{name} = {size}" for name, size in zip(self.spec.base_sizes(), sizes))
                            for sizes in assignments)

    def _finite_output(self, point: Point) -> bool:
        """Whether the spec's value at the point is finite (in mpmath: within any float format's range)."""
        output = self.spec.output.name
        values = point.arrays[output].ravel() if output in point.arrays else [point.scalars[output]]
        if not self.wide:  # doubles: finite is within range (a NumPy number cannot be compared with 10^4932)
            return bool(np.all(np.isfinite(np.asarray(values, dtype=complex))))
        import mpmath

        return all(mpmath.isfinite(v) and abs(v) <= LARGEST_FLOAT for v in values)

    def _real(self, point: Point) -> bool:
        """Whether every definition of the spec is real at the point: the spec language is real, so a point
        where one is complex (the log or square root of a negative number) is outside its domain."""
        for definition in self.spec.definitions:
            values = point.value(definition.name)
            if self.wide:
                if any(v.imag != 0 for v in np.ravel(values)):
                    return False
            elif np.any(np.imag(values) != 0):
                return False
        return True

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
        """Mark the step proved where both sides are identical at every range size of ARRAY_PROOF_SIZES."""
        if self.marks is None:  # made without prove
            return
        sides = [step.lhs, *[f for f in step.forms if not isinstance(f, sp.MatrixExpr)]]
        free = sorted({s for e in sides for s in _free_indices(e)}, key=str)
        ranges = {s: self._range_of(s, step) for s in free}
        equal = step.equal if step.equal and set(step.equal) <= set(free) else None
        distinct = step.distinct if step.distinct and set(step.distinct) <= set(free) else None
        self.marks.submit(step, free, equal, distinct, ranges)

    def _point(self, size_of: dict[sp.Symbol, int], by_name: dict[str, int], positive: set[str],
               rng: np.random.Generator, scale: float, constrained: bool = True) -> Point:
        defined = {d.name for d in self.spec.definitions}
        given = [name for name in self.axes if name not in defined]  # the inputs and the upstream gradient
        arrays, scalars = sample_inputs(self.spec, self.axes, given, by_name, positive, rng, scale, constrained)
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

    def _derivative(self, partial: Partial, point: Point, frame: Frame) -> Any:
        """∂ℓ/∂X[q] by a complex step on X[q], everything computed from X recomputed; ∂C[a]/∂X[q] for a
        definition C is the derivative of C's own formula, and ∂(formula)/∂X[q] that of the formula, the
        arrays they read held (the chain rule's factors). Every entry q the frame reaches is stepped at once:
        one copy of the point per entry, side by side along a first axis, each with its own entry moved."""
        target, var = partial.expr, partial.var
        name = str(var.base) if isinstance(var, sp.Indexed) else str(var)
        shape = frame.shape
        at = [np.broadcast_to(as_integers(self.compiled(p)(point, frame)), shape) for p in getattr(var, "indices", ())]
        inside = np.ones(shape, dtype=bool)
        for where, size in zip(at, point.arrays[name].shape if at else ()):
            inside &= (where >= 0) & (where < size)  # X[q] outside X (a shifted position): nothing moves
        entries = tuple(sorted(set(zip(*(where[inside] for where in at))))) if at else ((),)
        if not entries:
            return np.zeros(shape, dtype=object if self.wide else complex)
        probed, steps = self._probed(point, name, entries, target)
        values = self.array(target, probed, Frame(((PROBE, 0, len(entries)), *frame.axes), frame.fixed))
        derivatives = _imaginary(values) / steps.reshape((-1,) + (1,) * len(shape))
        copy = np.zeros(shape, dtype=np.int64)  # which copy moved the entry each frame position reads
        if at:
            extent = point.arrays[name].shape
            number = np.zeros(int(np.prod(extent)), dtype=np.int64)
            number[np.ravel_multi_index(tuple(np.array(entries).T), extent)] = np.arange(len(entries))
            clipped = tuple(np.clip(where, 0, size - 1) for where, size in zip(at, extent))
            copy = np.where(inside, number[np.ravel_multi_index(clipped, extent)], 0)
        picked = np.take_along_axis(derivatives, copy[None], axis=0)[0]
        return np.where(inside, picked, 0)

    def _probed(self, point: Point, name: str, entries: tuple[tuple[int, ...], ...],
                target: sp.Expr) -> tuple[Point, Any]:
        """The point copied once per entry of X (or a scalar X), each copy with its entry moved by a complex
        step, and the steps; with everything computed from X recomputed when the target is the loss, or only
        the target's own definition from its formula (the other arrays held), made once per point. A step is far
        below the entry's own magnitude: a probability of 1e-32 under a log is not moved by 1e-30."""
        definition = self._definitions.get(str(target.base) if isinstance(target, sp.Indexed) else str(target))
        recompute = target == self.loss or self.total_derivatives
        key = (name, entries, "all" if recompute else definition.name if definition is not None else None)
        cached = point.derivatives.get(key)
        if cached is not None:
            return cast(tuple[Point, Any], cached)
        count = len(entries)
        is_array = name in point.arrays and name not in point.scalars
        original = point.arrays[name] if is_array else np.asarray(point.scalars[name])
        magnitudes = np.array([float(abs(original[entry])) for entry in entries])
        steps = np.where(magnitudes > 1e-250, COMPLEX_STEP * np.minimum(1.0, magnitudes), COMPLEX_STEP)
        copies = np.array(np.broadcast_to(original, (count, *original.shape)), dtype=original.dtype)
        for position, entry in enumerate(entries):
            copies[(position, *entry)] = copies[(position, *entry)] + steps[position] * 1j
        probed = Point(point.sizes, dict(point.arrays), dict(point.scalars), probe=count, probed=frozenset({name}))
        if is_array:
            probed.arrays[name] = copies
        else:
            probed.scalars[name] = copies
        if recompute:  # a definition moved (∂y/∂m): it keeps its moved values, those reading it follow
            self.complete(probed, self.forward, after=name if name not in self.spec.inputs else None, reading=name)
        elif definition is not None:
            self.complete(probed, [definition])
        point.derivatives[key] = (probed, steps)
        return probed, steps

    def entries(self, expr: sp.Expr, point: Point, free: list[sp.Symbol]) -> Any:
        """expr's values at the point for every value of the free indices (of a spec of one range: each runs
        over n), one array axis per index, in the checker's precision; NaN or inf where it has no value."""
        frame = Frame(tuple((symbol, 0, point.sizes[size_symbol]) for symbol in free))
        with self._precision(), np.errstate(all="ignore"):
            return self.array(expr, point, frame)

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
        self._prove(step)  # sent to the prover first: it works on the step while the numbers are checked here
        self._check_numerically(step)
        self.checked += 1
        return step

    def _check_numerically(self, step: Step) -> Step:
        if not self.wide:
            try:
                with np.errstate(all="ignore"):
                    return self._check(step)
            except (OverflowError, ZeroDivisionError):
                self._widen()
            except StepCheckFailed:
                doubles = (self.points, self.free_points, self.functions, self.number, self._compiled,
                           self.undefined)
                if self._wide_points is None:  # sampled in mpmath once, reused by every later step that needs it
                    self._widen()
                    self._wide_points = (self.points, self.free_points, self.functions, self.number,
                                         self._compiled, self.undefined)
                else:
                    (self.points, self.free_points, self.functions, self.number, self._compiled,
                     self.undefined) = self._wide_points
                    self.wide = True
                try:
                    return self._check_wide(step)
                finally:
                    (self.points, self.free_points, self.functions, self.number, self._compiled,
                     self.undefined) = doubles
                    self.wide = False
        return self._check_wide(step)

    def _check_wide(self, step: Step) -> Step:
        """The check in mpmath; a failure there is the spec's own where its value depends on the precision."""
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
        given = set(self.given)
        for point in self.free_points:
            finer = Point(point.sizes, {name: values for name, values in point.arrays.items() if name in given},
                          {name: value for name, value in point.scalars.items() if name in self.spec.parameters})
            with mpmath.workdps(2 * WIDE_DIGITS):
                self.complete(finer, self.spec.definitions)
            coarse, fine = np.ravel(point.value(output)), np.ravel(finer.value(output))
            if any(abs(a - b) > 1e-12 * max(abs(b), 1) for a, b in zip(coarse, fine)):
                raise SpecError(f"{output} has no stable value at the points sampled: with {WIDE_DIGITS} and with "
                                f"{2 * WIDE_DIGITS} digits it comes out different (a division by something that is "
                                "0 whatever the inputs?)")

    def _check(self, step: Step) -> Step:
        free = sorted({s for e in [step.lhs, *[f for f in step.forms if not isinstance(f, sp.MatrixExpr)]]
                       for s in _free_indices(e)}, key=str)
        ranges = {s: self._range_of(s, step) for s in free}
        compared: dict[tuple[int, ...], int] = {}  # comparisons by size assignment
        points = self.points if step.assumes else self.free_points
        base = [self.spec.sizes[name] for name in self.spec.base_sizes()]
        for number, point in enumerate(points):
            full = Point(point.sizes, dict(point.arrays), dict(point.scalars), point.derivatives)
            self.complete(full, self.backward)
            frame = Frame(tuple((s, 0, full.sizes[self.spec.sizes[ranges[s]]]) for s in free))
            claimed = np.ones(frame.shape, dtype=bool)
            # a case restriction applies where both of its indices are still free (in the case i = j the step
            # is usually written with j replaced by i, and then every entry it has is in the case)
            for pair, same in ((step.distinct, False), (step.equal, True)):
                if pair and set(pair) <= set(free):
                    claimed = claimed & np.broadcast_to((frame.values(pair[0]) == frame.values(pair[1])) == same,
                                                        frame.shape)
            sizes = tuple(full.sizes[symbol] for symbol in base)
            compared.setdefault(sizes, 0)
            if not claimed.any():
                continue
            expected = self.array(step.lhs, full, frame)
            for position, form in enumerate(step.forms):
                if isinstance(form, sp.MatrixExpr):
                    matrix = self.matrix_value(form, full)
                    got = np.empty(frame.shape, dtype=object if self.wide else complex)
                    for entry in np.ndindex(*frame.shape):
                        row, column = [entry[free.index(a)] if a in free else 0 for a in step.matrix_axes][:2] + [
                            0, 0][len(step.matrix_axes):]
                        got[entry] = matrix[row][column if len(matrix[row]) > 1 else 0]
                else:
                    got = self.array(form, full, frame)
                if not self.wide and not (np.all(np.isfinite(got[claimed])) and np.all(np.isfinite(expected[claimed]))):
                    raise OverflowError  # doubles overflowed where the spec is finite: every check goes to mpmath
                judged = claimed
                if self.wide:  # a form with no value where the left-hand side has one, even in mpmath, is a removable
                    # singularity of how it is written (γ(1 − p)^(γ−1)·log p at p = 1 for γ < 1): not compared there
                    judged = claimed & ~(_finite(expected) & ~_finite(got))
                compared[sizes] += int(judged.sum())
                size = abs(expected)
                holds = np.asarray(abs(got - expected) <= tolerances.STEP * np.where(size > 1, size, 1), dtype=bool)
                wrong = np.argwhere(judged & ~holds)
                if len(wrong):
                    entry = tuple(wrong[0])
                    where = ", ".join([self._sizes_text(list(sizes)), *(f"{s} = {v}" for s, v in zip(free, entry))])
                    got_value, expected_value = float(complex(got[entry]).real), float(complex(expected[entry]).real)
                    raise StepCheckFailed(
                        f"step '{step.rule}' does not hold: form {position + 1} is {got_value:.6g}, "
                        f"the left-hand side {expected_value:.6g} (at {where}, point {number + 1})")
        checked_at = [list(sizes) for sizes, count in compared.items() if count]
        if not checked_at:  # never "checked" on nothing (a case i ≠ j where every range has size 1)
            raise StepCheckFailed(f"step '{step.rule}' had no entry to compare at {self.sizes_text}: it cannot be "
                                  "called checked")
        step.checked = True
        step.check_detail = (f"every entry at {self._sizes_text(*checked_at)} ({POINTS} random points each, "
                             f"{sum(compared.values())} comparisons)")
        step.check_sizes = tuple(sorted({size for sizes in checked_at for size in sizes}))
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


def _finite(values: Any) -> Any:
    """Which values (mpmath numbers in an object array) are finite."""
    import mpmath

    return np.asarray(np.frompyfunc(mpmath.isfinite, 1, 1)(values), dtype=bool)


def _imaginary(values: Any) -> Any:
    """The imaginary parts (what a complex step carries), in the numbers' own precision."""
    if isinstance(values, np.ndarray):
        return np.frompyfunc(lambda v: v.imag, 1, 1)(values) if values.dtype == object else np.imag(values)
    return values.imag if hasattr(values, "imag") else 0.0


def _free_indices(expr: sp.Expr) -> set[sp.Symbol]:
    bound = {limit[0] for total in expr.atoms(sp.Sum) for limit in total.limits}
    found = set()
    for entry in expr.atoms(sp.Indexed):
        for position in entry.indices:
            found |= {s for s in position.free_symbols if s.is_Symbol and s.is_integer
                      and not str(s).startswith("n_")}
    return {s for s in found if s not in bound and s in expr.free_symbols}


def sample_inputs(spec: Spec, axes: dict[str, tuple[str, ...]], names: list[str], sizes: dict[str, int],
                  positive: set[str], rng: np.random.Generator, scale: float = 1.0,
                  constrained: bool = True) -> tuple[dict[str, Any], dict[str, float]]:
    """Random arrays for `names` at the given range sizes, and the spec's parameters: labels random classes,
    inputs with a fact drawn where it holds (0 or 1; in (0, 1); positive), inputs under a log or root (and
    constrained ones) positive, others normal of the given scale;
    constrained inputs then satisfy their constraint (rows summing to its value) unless `constrained` is False."""
    normalised = {c.input_name for c in spec.constraints}  # drawn positive: a row sum must not come near 0
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
        elif name in positive or name in normalised or fact == "positive":
            arrays[name] = rng.uniform(0.2, 2.0, size=shape)
        else:
            arrays[name] = rng.normal(0, scale, size=shape)
    for constraint in spec.constraints if constrained else ():
        values = arrays[constraint.input_name]
        arrays[constraint.input_name] = (values / values.sum(axis=constraint.summed_axis, keepdims=True)
                                         * float(constraint.rhs))
    parameters = {name: float(rng.uniform(0.5, 2.0)) for name in spec.parameters}
    return arrays, parameters
