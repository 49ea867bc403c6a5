"""Exact proofs of steps at concrete sizes: both sides written out for n = 1…4 and their difference
simplified to 0 by SymPy, independently of the rules that produced the step.

At a concrete n every Σ is a finite sum, every δ is 0 or 1, and ∂/∂x_j is SymPy's own diff of the
function written out entry by entry. Every exp(a + 2b) becomes E_a·E_b² with E_a = exp(a) a positive
symbol, so softmax-like expressions are rational functions of the E's; a root u^(1/q) becomes a
symbol s with s^q = u remembered. What is still not rational (log Σ E, erf, |u|, H(u), …) is an
independent symbol: a rational function that is 0 with its atoms independent is 0 whatever values they
take, so the proof stays sound; it is only less often found.

Why one index pair per pattern suffices: the spec language has no index arithmetic or index
constants, so every expression is equivariant under permuting the entries. The difference at
(i, j) = (2, 0) is the difference at (0, 1) with the inputs permuted, and an expression that is 0
for all inputs stays 0 when they are permuted. So each pattern of equal and distinct indices is
proved once, at the smallest representative values.
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import operator
import os
import pickle
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import sympy as sp
from sympy.core.function import ArgumentIndexError

from softgrad.derive.matrix import entries
from softgrad.derive.spec import Definition, Spec
from softgrad.derive.steps import Step
from softgrad.derive.symbols import Partial, SumExcept, sigmoid, softplus
from softgrad.derive.symbols import n as size_symbol

PROOF_SIZES = (1, 2, 3, 4)
#: With several ranges every range takes each size in turn (the cost grows with the product of the sizes).
ARRAY_PROOF_SIZES = (1, 2, 3)
#: The most entries the ranges of a several-index proof may span together (size ** ranges): multi-head attention
#: with its projections (7 ranges) or a 2-D convolution is proved at sizes 1 and 2, attention (4) up to 3.
LARGEST_PROOF_POINT = 500
#: Label inputs take every value at a size; past this many assignments the size is left to the smaller ones.
LARGEST_LABEL_ASSIGNMENTS = 16
#: A numerator with more terms than this is not expanded further: the step stays "checked numerically", and
#: a proof's cost stays bounded (it grows with the product of the denominators). The largest over the
#: catalog and the outside corpus has 192 terms; tanh(z) squared and normalised reaches 13,000 (4 s a step).
LARGEST_NUMERATOR = 20_000
#: A difference larger than this (nodes of its tree) is not simplified: the step stays "checked numerically".
#: (About 4000 SymPy operations; the largest over the catalog and the outside corpus has 1,409 nodes.)
LARGEST_DIFFERENCE = 10_000


class _Undefined(Exception):
    """A side of the step has no value at this size (1/0): nothing to prove or disprove there."""


class _Unprovable(Exception):
    """Something the prover does not write out (a form it cannot expand): fall back to the numeric check."""


def index_patterns(free: Sequence[sp.Symbol], size: int) -> Iterator[dict[sp.Symbol, int]]:
    """One assignment per pattern of equal and distinct indices (set partitions with ≤ size blocks),
    blocks numbered in order of first appearance: (i, j) → {i: 0, j: 0} and {i: 0, j: 1}."""
    def partitions(count: int) -> Iterator[list[int]]:
        if count == 0:
            yield []
            return
        for rest in partitions(count - 1):
            for block in range(max(rest, default=-1) + 2):
                if block < size:
                    yield [*rest, block]

    for blocks in partitions(len(free)):
        yield dict(zip(free, blocks))


class Prover:
    """Writes steps out at concrete sizes and asks SymPy whether the sides are identical.

    For a spec with several ranges, `axes` gives every array's ranges (inputs, definitions, the upstream
    gradient and the backward arrays) and `loss` the scalar whose derivatives are total: ∂C[a]/∂X[q] of
    any other expression is the derivative of its own formula, the arrays it reads held (the chain rule's
    factor). Every range then takes each size in turn, label inputs every value (class permutations do not
    cover them), and the equivariance argument holds range by range."""

    def __init__(self, spec: Spec, definitions: Sequence[Definition], inputs: Sequence[str],
                 axes: dict[str, tuple[str, ...]] | None = None, loss: sp.Symbol | None = None):
        self.spec = spec
        self.definitions = {d.name: d for d in definitions}
        self.inputs = set(inputs)
        self.axes = axes
        self.loss = loss
        self.added: list[tuple[Definition, tuple[str, ...]]] = []  # made since (sent to a background process)
        self._writers: dict[Any, _Writer] = {}
        self._names: dict[sp.Basic, frozenset[str]] = {}
        self._tree_sizes: dict[sp.Basic, int] = {}
        #: differences already decided: consecutive steps share forms, so about half recur
        self._decided: dict[sp.Expr, bool] = {}
        self._atomize = _Atomizer()

    def writer(self, size: int, constrained: bool, frozen: frozenset[str] = frozenset(),
               labels: tuple[tuple[str, tuple[int, ...]], ...] = ()) -> _Writer:
        """One writer per size (and frozen names, and label values): what it has written is reused by every
        later step."""
        key = (size, constrained, frozen, labels)
        if key not in self._writers:
            self._writers[key] = _Writer(self, size, constrained, frozen, labels)
        return self._writers[key]

    def add(self, definition: Definition, axes: tuple[str, ...] = ()) -> None:
        """A definition made during the derivation (a backward array dP, with its ranges): later steps read it."""
        self.definitions[definition.name] = definition
        if self.axes is not None:
            self.axes[definition.name] = axes
        self.added.append((definition, axes))

    def tree_size(self, expr: sp.Basic) -> int:
        """The nodes of expr's tree, a part counted wherever it occurs (as _larger_than counts), each part's
        count kept: the budgets are checked on every written sum and derivative, which share most parts."""
        pending = [expr]
        while pending:
            node = pending[-1]
            if node in self._tree_sizes:
                pending.pop()
                continue
            unknown = [a for a in node.args if a not in self._tree_sizes]
            if unknown:
                pending.extend(unknown)
            else:
                self._tree_sizes[node] = 1 + sum(self._tree_sizes[a] for a in node.args)
                pending.pop()
        return self._tree_sizes[expr]

    def names_in(self, expr: sp.Basic) -> frozenset[str]:
        """The names of expr's free symbols (kept: the writers ask for them for every part they write)."""
        if expr not in self._names:
            self._names[expr] = frozenset(str(s) for s in expr.free_symbols)
        return self._names[expr]

    def prove(self, step: Step, free: Sequence[sp.Symbol], equal: tuple[sp.Symbol, sp.Symbol] | None,
              distinct: tuple[sp.Symbol, sp.Symbol] | None,
              ranges: dict[sp.Symbol, str] | None = None) -> list[int]:
        """The sizes at which every form of the step equals its left-hand side exactly (all patterns; with
        several ranges, `ranges` names each free index's range, and every range takes the size)."""
        proved = []
        for size in (PROOF_SIZES if self.axes is None else ARRAY_PROOF_SIZES):
            if self.axes is not None and size > 2 and size ** len(self.spec.base_sizes()) > LARGEST_PROOF_POINT:
                break  # the smaller sizes stand
            try:
                if ranges is None:
                    candidates: Iterator[dict[sp.Symbol, int]] = index_patterns(free, size)
                else:  # patterns range by range: entries of different ranges are permuted independently
                    by_range = [[s for s in free if ranges[s] == r] for r in dict.fromkeys(ranges[s] for s in free)]
                    candidates = ({k: v for part in parts for k, v in part.items()} for parts in
                                  itertools.product(*(list(index_patterns(group, size)) for group in by_range)))
                patterns = [p for p in candidates
                            if not (equal and p[equal[0]] != p[equal[1]])
                            and not (distinct and p[distinct[0]] == p[distinct[1]])]
                if not patterns:
                    continue
                label_values = list(self._label_values(size))
                if len(label_values) > LARGEST_LABEL_ASSIGNMENTS:  # 3 rows of 3 classes: 27 written-out steps
                    break  # the smaller sizes stand
                if all(self._identical(step, form, size, pattern, labels)
                       for labels in label_values
                       for form in step.forms for pattern in patterns):
                    proved.append(size)
                else:
                    return []  # a difference that did not simplify to 0: no claim at any size
            except _Undefined:
                continue  # no value at this size (a variance over n − 1 at n = 1): the other sizes decide
            except _TooLarge:  # with several ranges: past the budget at this size, the smaller sizes stand
                break
            except _Unprovable:
                return []
        return proved

    def _label_values(self, size: int) -> Iterator[tuple[tuple[str, tuple[int, ...]], ...]]:
        """Every assignment of classes to the label inputs' entries at this size (one, empty, without labels)."""
        names = sorted(self.spec.labels) if self.axes is not None else []
        entries = [size ** len(self.axes[name]) for name in names] if self.axes is not None else []
        choices = [list(itertools.product(range(size), repeat=count)) for count in entries]
        for values in itertools.product(*choices):
            yield tuple(zip(names, values))

    def _identical(self, step: Step, form: sp.Expr, size: int, pattern: dict[sp.Symbol, int],
                   labels: tuple[tuple[str, tuple[int, ...]], ...] = ()) -> bool:
        writer = self.writer(size, bool(step.assumes) or self.axes is not None, labels=labels)
        left = writer.write(step.lhs, pattern)
        # with several ranges, a side past the budget of a difference refuses the step at this size (the smaller
        # sizes stand) as soon as it is known: the left side written (the right side of ∂l/∂X through multi-head
        # attention, written out at size 2, took a third of its proofs to be refused), then in exp form (kept: the
        # step's other forms and the next steps share it), then the right side written, before its exp form
        if self.axes is not None and (self.tree_size(left) > LARGEST_DIFFERENCE or
                                      self.tree_size(writer.finished(left)) > LARGEST_DIFFERENCE):
            raise _TooLarge
        right = writer.matrix_entry(form, step, pattern) if isinstance(form, sp.MatrixExpr) else \
            writer.write(form, pattern)
        if self.axes is not None and \
                self.tree_size(writer.finished(left)) + self.tree_size(right) > LARGEST_DIFFERENCE:
            raise _TooLarge
        difference = writer.finished(left) - writer.finished(right)  # each side once: forms share the left
        if difference.has(sp.zoo, sp.nan):  # a side has no value here (1/0): no claim either way at this size
            raise _Undefined
        if difference not in self._decided:
            if self.tree_size(difference) > LARGEST_DIFFERENCE:  # counted from its sides' counts, kept above
                if self.axes is not None:
                    raise _TooLarge
                self._decided[difference] = False
            else:
                self._decided[difference] = _is_zero(difference, self._atomize,
                                                     undecided_when_large=self.axes is not None, counted=True)
        return self._decided[difference]


class _Atomizer:
    """Non-rational parts as independent symbols (innermost first, so equal parts share a symbol):
    exp(a + 2b) = exp(a)·exp(b)², u^(p/q) = (u^(1/q))^p with the root remembered, |u| = a with a² = u².

    One atomizer serves every difference of a derivation: consecutive steps share most of their parts, and
    each part is rewritten once (rewriting rebuilds SymPy expressions: a third of a loss's proof)."""

    def __init__(self) -> None:
        self.atoms: dict[sp.Expr, sp.Symbol] = {}
        self.roots: dict[sp.Symbol, tuple[int, sp.Expr]] = {}  # s → (q, u) with s^q = u
        self.done: dict[sp.Expr, sp.Expr] = {}

    def atom(self, key: sp.Expr, positive: bool = False) -> sp.Symbol:
        if key not in self.atoms:
            self.atoms[key] = sp.Dummy("atom", positive=positive)
        return self.atoms[key]

    def __call__(self, expr: sp.Expr) -> sp.Expr:
        if expr.is_Atom:
            return expr
        if expr not in self.done:
            self.done[expr] = self._atomize(expr)
        return self.done[expr]

    def _atomize(self, expr: sp.Expr) -> sp.Expr:
        arguments = [self(a) for a in expr.args]
        rebuilt = expr if arguments == list(expr.args) else _rebuilt(expr, arguments)
        if rebuilt.is_Atom or rebuilt.is_Add or rebuilt.is_Mul or (rebuilt.is_Pow and rebuilt.exp.is_Integer):
            return rebuilt
        if isinstance(rebuilt, sp.exp):
            product = sp.S.One
            for term in sp.Add.make_args(sp.expand(rebuilt.args[0])):
                coefficient, rest = term.as_coeff_Mul()
                if term == rebuilt.args[0] and coefficient == 1:  # exp(u) itself: not built again
                    product *= self.atom(rebuilt, positive=True)
                elif coefficient.is_Integer:
                    product *= self.atom(sp.exp(rest), positive=True) ** coefficient
                elif coefficient.is_Rational:  # exp(p·u/q) = s^p with s = exp(u/q), s^q = exp(u): a mean's 1/n
                    root = self.atom(sp.exp(rest / coefficient.q), positive=True)
                    self.roots[root] = (int(coefficient.q), self.atom(sp.exp(rest), positive=True))
                    product *= root ** coefficient.p
                else:
                    product *= self.atom(sp.exp(term), positive=True)
            return product
        if rebuilt.is_Pow and rebuilt.exp.is_Rational:
            root = self.atom(rebuilt.base ** sp.Rational(1, rebuilt.exp.q))
            self.roots[root] = (int(rebuilt.exp.q), rebuilt.base)
            return root ** rebuilt.exp.p
        if isinstance(rebuilt, (sp.Abs, sp.sign)):  # |u| = a with a² = u², sign(u) = a/u (u ≠ 0)
            magnitude = self.atom(sp.Abs(rebuilt.args[0]))
            self.roots[magnitude] = (2, rebuilt.args[0] ** 2)
            return magnitude if isinstance(rebuilt, sp.Abs) else magnitude / rebuilt.args[0]
        return self.atom(rebuilt)  # log(…), erf(…), H(…)

    def roots_in(self, expr: sp.Expr) -> dict[sp.Symbol, tuple[int, sp.Expr]]:
        """The roots expr reads, and those their radicands read (a root inside a root)."""
        found: dict[sp.Symbol, tuple[int, sp.Expr]] = {}
        pending = [s for s in expr.free_symbols if s in self.roots]
        while pending:
            root = pending.pop()
            if root not in found:
                found[root] = self.roots[root]
                pending += [s for s in found[root][1].free_symbols if s in self.roots]
        return found


def _is_zero(difference: sp.Expr, atomize: _Atomizer | None = None, undecided_when_large: bool = False,
             counted: bool = False) -> bool:
    """Whether difference is identically 0, its non-rational parts taken as independent symbols (with
    the relations s^q = u of the roots): a 'yes' is a proof; a 'no' only means not proved.
    undecided_when_large: a difference past the budgets raises _TooLarge instead of answering 'no'.
    counted: the caller has checked its size against LARGEST_DIFFERENCE already (Prover.tree_size)."""
    if difference == 0:
        return True
    if not counted and _larger_than(difference, LARGEST_DIFFERENCE):
        if undecided_when_large:
            raise _TooLarge
        return False
    atomize = atomize or _Atomizer()
    try:
        atomized = atomize(difference)
        roots = atomize.roots_in(atomized)
        numerator = _numerator_in_ring(atomized, roots)
        if numerator is not None:
            return bool(numerator == 0)
        # zero iff the numerator is: one fraction by together() is enough, cancel()'s gcd only costs time
        numerator, _ = sp.fraction(sp.together(atomized))
        numerator = sp.expand(numerator)
        for root, (degree, radicand) in roots.items():  # reduce modulo s^q − u: 0 wherever s^q = u
            # s^q − u is monic in s, so the remainder is s^k → s^(k mod q)·u^(k div q), repeated until no
            # power of s reaches q: what rem() computes, without building polynomials over every symbol
            while high := [p for p in numerator.atoms(sp.Pow)
                           if p.base == root and p.exp.is_Integer and p.exp >= degree]:
                numerator = sp.expand(numerator.xreplace(
                    {p: root ** (p.exp % degree) * radicand ** (p.exp // degree) for p in high}))
        return bool(numerator == 0)
    except _TooLarge:
        if undecided_when_large:
            raise
        return False
    except (sp.PolynomialError, RecursionError, ValueError, TypeError):
        return False


def _larger_than(expr: sp.Basic, limit: int) -> bool:
    """Whether expr's tree has more than `limit` nodes, counted until the limit (count_ops costs ten times more)."""
    pending, count = [expr], 0
    while pending:
        count += 1
        if count > limit:
            return True
        pending.extend(pending.pop().args)
    return False


class _TooLarge(Exception):
    """A numerator past LARGEST_NUMERATOR terms: the zero test gives up (not proved) rather than run on."""


class _NotPolynomial(Exception):
    """A part the ring cannot hold (a symbolic exponent): the slower SymPy route decides instead."""


def _add_into(total: dict[Any, Any], polynomial: Any) -> None:
    """total += polynomial, in place, monomial by monomial (a polynomial's + copies it: quadratic in a loop)."""
    for monomial, coefficient in polynomial.items():
        value = total.get(monomial, 0) + coefficient
        if value:
            total[monomial] = value
        else:
            total.pop(monomial, None)


def _numerator_in_ring(expr: sp.Expr, roots: dict[sp.Symbol, tuple[int, sp.Expr]]) -> Any:
    """The numerator of expr over one common denominator, as a sparse polynomial over ℚ with each root s
    reduced modulo s^q − u; None where expr is not a rational function of its symbols.

    Denominators are kept as products of factors with powers and combined by the largest power of each
    factor (what together() does), so a sum of fractions over the same Σ keeps one denominator; the
    polynomial arithmetic is SymPy's sparse one, far faster than expanding expressions."""
    from sympy.polys.domains import QQ
    from sympy.polys.rings import ring

    symbols = set(expr.free_symbols)
    for root, (_, radicand) in roots.items():
        symbols |= {root} | radicand.free_symbols
    generators = sorted(symbols, key=sp.default_sort_key) or [sp.Dummy()]
    polynomials, *_ = ring(generators, QQ)
    Fraction = tuple[Any, dict[Any, int]]  # numerator, {denominator factor: power}
    done: dict[sp.Expr, Fraction] = {}

    def factor_of(polynomial: Any) -> tuple[Any, Any]:
        """(constant, monic polynomial): equal factors up to a constant become one factor."""
        leading = polynomial.LC
        return leading, polynomial.quo_ground(leading)

    def bounded(polynomial: Any) -> Any:
        if len(polynomial) > LARGEST_NUMERATOR:
            raise _TooLarge
        return polynomial

    def fraction(e: sp.Expr) -> Fraction:
        if e in done:
            return done[e]
        if e.is_Add:
            parts = [fraction(a) for a in e.args]
            common: dict[Any, int] = {}
            for _, denominator in parts:
                for factor, power in denominator.items():
                    common[factor] = max(common.get(factor, 0), power)
            total: dict[Any, Any] = {}  # the terms added in place: p + q copies p, quadratic over many parts
            for part_numerator, denominator in parts:
                term = part_numerator
                for factor, power in common.items():
                    if power > denominator.get(factor, 0):
                        term = bounded(term * factor ** (power - denominator.get(factor, 0)))
                _add_into(total, term)
            result: Fraction = (polynomials.from_dict(total), common)
        elif e.is_Mul:
            numerator, common = polynomials.one, {}
            for a in e.args:
                part_numerator, denominator = fraction(a)
                numerator = bounded(numerator * part_numerator)
                for factor, power in denominator.items():
                    common[factor] = common.get(factor, 0) + power
            result = (numerator, common)
        elif e.is_Pow and e.exp.is_Integer:
            base_numerator, denominator = fraction(e.base)
            power = int(e.exp)
            if power >= 0:
                result = (bounded(base_numerator ** power), {f: p * power for f, p in denominator.items()})
            else:  # (N / Π f^p)^(−m) = Π f^(p·m) / N^m
                if base_numerator == 0:
                    raise ZeroDivisionError
                numerator = polynomials.one
                for factor, p in denominator.items():
                    numerator = numerator * factor ** (p * -power)
                constant, monic = factor_of(base_numerator)
                numerator = numerator.quo_ground(constant ** -power)
                result = (numerator, {monic: -power} if monic != polynomials.one else {})
        elif e.is_Symbol or e.is_Rational:
            result = (polynomials(e), {})
        else:
            raise _NotPolynomial(e)
        done[e] = bounded(result[0]), result[1]
        return result

    try:
        numerator, _ = fraction(expr)
        reductions = [(generators.index(root), degree, fraction(radicand))
                      for root, (degree, radicand) in roots.items()]
    except (_NotPolynomial, ZeroDivisionError, sp.CoercionFailed):
        return None
    for position, degree, (radicand, denominator) in reductions:  # s^k → s^(k mod q)·u^(k div q)
        if denominator:
            return None
        while any(monomial[position] >= degree for monomial in numerator.keys()):
            reduced: dict[Any, Any] = {}  # added in place, as in fraction()
            for monomial, coefficient in numerator.items():
                power = monomial[position]
                kept = (*monomial[:position], power % degree, *monomial[position + 1:])
                term = polynomials({kept: coefficient})
                if power >= degree:
                    term = bounded(term * radicand ** (power // degree))
                _add_into(reduced, term)
            numerator = polynomials.from_dict(reduced)
    return numerator


class _Writer:
    """One step's expressions written out at one size: Σ as finite sums, entries as symbols."""

    def __init__(self, prover: Prover, size: int, constrained: bool, frozen: frozenset[str] = frozenset(),
                 labels: tuple[tuple[str, tuple[int, ...]], ...] = ()):
        self.prover = prover
        self.size = size
        self.constrained = constrained
        self.frozen = frozen
        self.labels = labels
        #: label name → its classes by entry (row-major over its ranges)
        self.label_values = {name: dict(zip(self.positions(name), values)) for name, values in labels}
        self.cache: dict[Any, Any] = {}

    def positions(self, name: str) -> list[tuple[int, ...]]:
        """Every entry of an array, in row-major order: (0,), (1,), … for a vector of the class axis."""
        rank = len(self.prover.axes.get(name, ())) if self.prover.axes is not None else 1
        return list(itertools.product(range(self.size), repeat=rank))

    def entry(self, name: str, position: int | tuple[int, ...]) -> sp.Expr:
        if isinstance(position, tuple):
            if not position:
                return sp.Symbol(name, real=True)
            return sp.Symbol(f"{name}_{'_'.join(map(str, position))}", real=True)
        return sp.Symbol(f"{name}_{position}", real=True)

    def write(self, expr: sp.Basic, indices: dict[Any, int]) -> Any:
        """expr at these index values, written out (each part once: results are kept per writer)."""
        used = self.prover.names_in(expr)
        relevant = {str(k): v for k, v in indices.items() if str(k) in used}
        key = (expr, tuple(sorted(relevant.items())))
        if key not in self.cache:
            self.cache[key] = self._write(expr, relevant)
        return self.cache[key]

    def _write(self, expr: sp.Basic, indices: dict[str, int]) -> Any:
        if expr.is_Float:
            return _exact(expr)
        if expr.is_Number or expr.is_NumberSymbol:
            return expr
        if isinstance(expr, sp.Indexed):
            name = str(expr.base)
            positions = tuple(self._index(i, indices) for i in expr.indices)
            if self.prover.axes is not None and not all(i.is_Symbol or isinstance(i, sp.Indexed)
                                                        for i in expr.indices):
                shape = [self._extent(r) for r in self.prover.axes.get(name, ())]
                if not all(0 <= p < extent for p, extent in zip(positions, shape)):
                    return sp.S.Zero  # a shifted read outside the array: zero (padding, a convolution's edge)
            definition = self.prover.definitions.get(name)
            if definition is None or name in self.frozen:
                return self.entry(name, positions if self.prover.axes is not None else positions[0])
            return self.write(definition.expr, {str(i): p for i, p in zip(definition.indices, positions)})
        if expr.is_Symbol:
            if str(expr) in indices:
                return sp.Integer(indices[str(expr)])
            if expr == size_symbol:
                return sp.Integer(self.size)
            if self.prover.axes is not None and expr in self.prover.spec.sizes.values():
                return sp.Integer(self._extent(str(expr)[2:]))
            definition = self.prover.definitions.get(str(expr))
            if definition is not None and str(expr) not in self.frozen:
                return self.write(definition.expr, {})
            if self.prover.axes is not None and (definition is not None or str(expr) in self.prover.inputs):
                return self.entry(str(expr), ())  # a scalar definition held, or a scalar input (T)
            return expr
        if isinstance(expr, sp.KroneckerDelta):
            first, second = (self._index(a, indices) for a in expr.args)
            return sp.Integer(int(first == second))
        if isinstance(expr, sp.Sum):
            if self.prover.axes is None:
                bound = str(expr.limits[0][0])
                return sp.Add(*[self.write(expr.function, {**indices, bound: a}) for a in range(self.size)])
            bounds = [str(limit[0]) for limit in expr.limits]
            spans = [range(self._index(low, indices), self._index(high, indices) + 1) for _, low, high in expr.limits]
            return sp.Add(*[self.write(expr.function, {**indices, **dict(zip(bounds, values))})
                            for values in itertools.product(*spans)])
        if isinstance(expr, SumExcept):
            skip = self._index(expr.skip, indices)
            return sp.Add(*[self.write(expr.summand, {**indices, str(expr.bound): a})
                            for a in range(self.size) if a != skip])
        if isinstance(expr, Partial):
            return self._partial(expr, indices)
        if isinstance(expr, sp.MatrixExpr):
            raise _Unprovable("a matrix inside an expression")
        if expr.args:
            arguments = [self.write(a, indices) for a in expr.args]
            if expr.is_Mul and any(a is sp.S.Zero for a in arguments) and \
                    not any(a.has(sp.zoo, sp.nan, sp.oo, -sp.oo) for a in arguments):
                return sp.S.Zero  # δ_ij·f at i ≠ j: 0 where no factor is undefined (1/(n − 1) at n = 1 is, and
                # 0·zoo stays NaN), found by a walk for zoo rather than SymPy asking whether every factor is
                # finite, down each of them (a fifth of a classifier's proofs)
            return _rebuilt(expr, arguments)
        raise _Unprovable(f"cannot write out {expr.func.__name__}")

    def _extent(self, range_name: str) -> int:
        """A range's size here: the size being proved, or what a shifted read makes of it (n_t + n_k − 1)."""
        derived = self.prover.spec.derived_sizes.get(range_name)
        if derived is None:
            return self.size
        return int(derived.xreplace({symbol: self.size for symbol in self.prover.spec.sizes.values()}))

    def _index(self, index: sp.Expr, indices: dict[str, int]) -> int:
        if str(index) in indices:
            return indices[str(index)]
        if index.is_Integer:
            return int(index)
        if isinstance(index, sp.Indexed) and str(index.base) in self.label_values:  # p[b, label[b]]
            return self.label_values[str(index.base)][tuple(self._index(i, indices) for i in index.indices)]
        if self.prover.axes is not None and index.free_symbols:  # a bound such as n_k − 1
            value = self.write(index, indices)
            if value.is_Integer:
                return int(value)
        raise _Unprovable(f"index {index} has no value")

    def _partial(self, expr: Partial, indices: dict[str, int]) -> sp.Expr:
        """∂expr/∂var by SymPy's diff, with var's array held as symbols (a definition frozen, as the
        numeric check does), then everything downstream written out. With several ranges, only the loss's
        derivative is total: any other expression's is of its own formula, the arrays it reads held."""
        name = str(expr.var.base) if isinstance(expr.var, sp.Indexed) else str(expr.var)
        positions = tuple(self._index(i, indices) for i in getattr(expr.var, "indices", ()))
        held = {name} & set(self.prover.definitions)  # an input is an entry symbol already: nothing to hold
        target = expr.expr
        if self.prover.axes is not None and target != self.prover.loss:
            formula = target
            if isinstance(target, (sp.Indexed, sp.Symbol)) and str(getattr(target, "base", target)) in \
                    self.prover.definitions:
                definition = self.prover.definitions[str(getattr(target, "base", target))]
                formula = definition.expr
                indices = {**indices, **{str(i): self._index(p, indices) for i, p in
                                         zip(definition.indices, getattr(target, "indices", ()))}}
            held |= {n for n in self.prover.names_in(formula) if n in self.prover.definitions}
            target = formula
        inner = self.prover.writer(self.size, self.constrained, self.frozen | held, self.labels)
        written = inner.write(target, indices)
        variable = self.entry(name, positions if self.prover.axes is not None else positions[0])
        derivative = _derivative(written, variable, {})
        frozen_defined = [n for n in held if n in self.prover.definitions and n not in self.frozen]
        if frozen_defined:  # the held arrays put back in terms of the inputs
            values = {}
            for held_name in frozen_defined:
                definition = self.prover.definitions[held_name]
                for position in self.positions(held_name) if definition.indices else [()]:
                    symbol = self.entry(held_name, position if self.prover.axes is not None else position[0])
                    values[symbol] = self.write(definition.symbol if not definition.indices else
                                                sp.IndexedBase(held_name)[position], {})
            derivative = derivative.xreplace(values)
        return derivative

    def matrix_entry(self, form: sp.MatrixExpr, step: Step, indices: dict[Any, int]) -> sp.Expr:
        """Entry (row, column) of a matrix form, its vectors replaced by columns of entry symbols."""
        if self.prover.axes is not None:
            return self._array_matrix_entry(form, step, indices)
        key = ("matrix", form)
        if key not in self.cache:  # every index pattern reads an entry of the same explicit matrix
            try:
                self.cache[key] = entries(
                    form, self.size, lambda name: [self.write(sp.IndexedBase(name)[a], {}) for a in range(self.size)],
                    lambda scalar: scalar.subs(size_symbol, self.size), sp.S.One, sp.S.Zero)
            except TypeError as unknown:  # a kind of matrix node matrix.py does not write
                raise _Unprovable(str(unknown)) from unknown
        explicit = self.cache[key]
        row, column = ([*list(step.matrix_axes), None, None])[:2]
        at_row = indices.get(row, 0) if row is not None else 0
        at_column = indices.get(column, 0) if column is not None and len(explicit[0]) > 1 else 0
        return self.write(sp.sympify(explicit[at_row][at_column]), {})  # named scalars (m, v) written out too

    def _array_matrix_entry(self, form: sp.MatrixExpr, step: Step, indices: dict[Any, int]) -> sp.Expr:
        """Entry of a matrix form of arrays (AB, Aᵀ, ∘, v𝟙ᵀ), its arrays as matrices of entry symbols."""
        key = ("matrix", form)
        if key not in self.cache:
            try:
                self.cache[key] = entries(
                    form, self.size, None, lambda scalar: self.write(scalar, {}), sp.S.One, sp.S.Zero,
                    arrays=self._as_matrix, dimension=lambda side: int(self.write(side, {})))
            except TypeError as unknown:
                raise _Unprovable(str(unknown)) from unknown
        explicit = self.cache[key]
        axes = [indices[a] for a in step.matrix_axes]
        return sp.sympify(explicit[axes[0]][axes[1] if len(axes) == 2 else 0])

    def _as_matrix(self, name: str) -> list[list[sp.Expr]]:
        """An array of one or two ranges as rows of its written-out entries (a vector as a column)."""
        rank = len(self.prover.axes.get(name, ())) if self.prover.axes is not None else 1
        rows = [[self.write(sp.IndexedBase(name)[position], {}) for position in
                 itertools.product([row], range(self.size))] if rank == 2 else
                [self.write(sp.IndexedBase(name)[row], {})] for row in range(self.size)]
        return rows

    def finished(self, side: sp.Expr) -> sp.Expr:
        """finish() of one side of a step, kept: every form of a step, and the next step, meet the same sides."""
        key = ("finished", side)
        if key not in self.cache:
            self.cache[key] = self.finish(side)
        return self.cache[key]

    def finish(self, difference: sp.Expr) -> sp.Expr:
        """Functions in exp form, the constraint applied (decimals were made exact as they were written)."""
        if self.constrained:
            replacements: dict[sp.Basic, sp.Basic] = {}
            for constraint in self.prover.spec.constraints:
                name = constraint.input_name
                if self.prover.axes is None:
                    last = self.entry(name, self.size - 1)
                    others = sp.Add(*[self.entry(name, a) for a in range(self.size - 1)])
                    replacements[last] = self.write(constraint.rhs, {}) - others
                    continue
                axis = constraint.summed_axis  # along it, the last entry is the constant less the others
                for position in self.positions(name):
                    if position[axis] == self.size - 1:
                        others = sp.Add(*[self.entry(name, (*position[:axis], a, *position[axis + 1:]))
                                          for a in range(self.size - 1)])
                        replacements[self.entry(name, position)] = self.write(constraint.rhs, {}) - others
            difference = difference.xreplace(replacements)
        return self._exp_form(difference)

    def _exp_form(self, expr: sp.Expr) -> sp.Expr:
        """expr with σ, softplus, tanh and log in exp form (_in_exp_form), bottom-up as SymPy's replace does,
        each part rewritten once per writer: the sides of consecutive steps share most of their parts, and
        replace() walked each side whole (a fifth of a two-layer classifier's proofs)."""
        key = ("exp form", expr)
        if key not in self.cache:
            rebuilt = expr
            if expr.args and not expr.is_Atom:
                arguments = [self._exp_form(a) for a in expr.args]
                if any(new is not old for new, old in zip(arguments, expr.args)):
                    rebuilt = _rebuilt(expr, arguments)
            if isinstance(rebuilt, (sigmoid, softplus, sp.tanh, sp.log)):
                rebuilt = _in_exp_form(rebuilt)
            self.cache[key] = rebuilt
        return self.cache[key]


def _exact(decimal: sp.Float) -> sp.Rational:
    """A decimal as the exact number it spells to 15 digits (0.1 is 1/10, not the double nearest to it), so
    that 0.1·3 written out is 3/10 on both sides of a step, however each side computed it."""
    return sp.Rational(format(float(decimal), ".15g"))


def _derivative(expr: sp.Expr, symbol: sp.Symbol, done: dict[sp.Expr, sp.Expr]) -> sp.Expr:
    """d expr / d symbol by SymPy's own rules for sums, products, powers and functions (fdiff), without
    the `is_zero` question SymPy's diff asks of every partial result: on a written-out loss those
    questions were two thirds of its proof. Anything else is left to sp.diff."""
    if expr in done:
        return done[expr]
    if not _depends(expr, symbol, done):
        result: sp.Expr = sp.S.Zero
    elif expr == symbol:
        result = sp.S.One
    elif expr.is_Add:
        result = sp.Add(*[_derivative(a, symbol, done) for a in expr.args])
    elif expr.is_Mul:
        terms = []
        for position, factor in enumerate(expr.args):
            inner = _derivative(factor, symbol, done)
            if inner != 0:
                terms.append(functools.reduce(operator.mul, [*expr.args[:position], inner,
                                                              *expr.args[position + 1:]], sp.S.One))
        result = sp.Add(*terms)
    elif expr.is_Pow:
        base, exponent = expr.args
        of_exponent, of_base = _derivative(exponent, symbol, done), _derivative(base, symbol, done)
        # the zero parts left out, not multiplied by 0: 0·log(u) has SymPy ask whether u is finite, down the
        # whole written-out u (a fifth of a two-layer classifier's proofs)
        parts = ([of_exponent * sp.log(base)] if of_exponent != 0 else []) + \
            ([of_base * exponent / base] if of_base != 0 else [])
        result = expr * sp.Add(*parts) if parts else sp.S.Zero
    elif isinstance(expr, sp.Function) and type(expr)._eval_derivative is sp.Function._eval_derivative:
        terms = []
        for position, argument in enumerate(expr.args, start=1):
            inner = _derivative(argument, symbol, done)
            if inner != 0:
                try:
                    outer = expr.fdiff(position)
                except ArgumentIndexError:  # as SymPy does: ∂f/∂(argument) left unevaluated
                    outer = sp.Function.fdiff(expr, position)
                if outer != 0 or inner.has(sp.zoo, sp.nan):  # 0·zoo is NaN: an undefined inner part stays so
                    terms.append(outer * inner)
        result = sp.Add(*terms)
    else:
        result = sp.diff(expr, symbol)
    done[expr] = result
    return result


def _depends(expr: sp.Expr, symbol: sp.Symbol, done: dict[Any, Any]) -> bool:
    """Whether expr reads symbol, each shared part asked once (free_symbols walks the whole tree below every
    node it is asked of: on a written-out loss, half of the derivative's time)."""
    key = ("depends", expr)
    known = done.get(key)
    if known is None:
        known = done[key] = expr == symbol or any(_depends(a, symbol, done) for a in expr.args)
    return bool(known)


def _exp(argument: sp.Expr) -> sp.Expr:
    """exp(argument), evaluated only where SymPy's evaluation can change it (a number, a log inside): its
    eval builds an exp of every term of a written-out sum to look for logs (a fifth of a classifier's proofs)."""
    if argument.is_number or argument.has(sp.log):
        return sp.exp(argument)
    return sp.exp(argument, evaluate=False)


def _log(argument: sp.Expr) -> sp.Expr:
    """log(argument), evaluated only where SymPy's evaluation can change a real argument (a number, log of an
    exponential): its eval asks whether the argument is zero, down the whole written-out softmax inside."""
    if argument.is_number or isinstance(argument, sp.exp) or (argument.is_Pow and argument.base is sp.E):
        return sp.log(argument)
    return sp.log(argument, evaluate=False)


def _rebuilt(expr: sp.Expr, arguments: list[sp.Expr]) -> sp.Expr:
    """expr's node over new arguments, exp and log built as _exp and _log build them."""
    if isinstance(expr, sp.exp):
        return _exp(arguments[0])
    if isinstance(expr, sp.log) and len(arguments) == 1:
        return _log(arguments[0])
    return expr.func(*arguments)


def _in_exp_form(function: sp.Expr) -> sp.Expr:
    """σ, softplus and tanh through exp; log(a·b^k) → log a + k log b, log by log (one pass, bottom-up:
    expand_log over the whole difference costs far more)."""
    argument = function.args[0]
    if isinstance(function, sigmoid):
        return 1 / (1 + _exp(-argument))
    if isinstance(function, softplus):
        return _log(1 + _exp(argument))
    if isinstance(function, sp.tanh):
        return (1 - _exp(-2 * argument)) / (1 + _exp(-2 * argument))
    # expand_log's own pass first looks at every product inside for log(8)/log(2) (as_numer_denom of each:
    # a third of a loss's proof); the log hint alone is what is wanted here
    return function.expand(deep=True, log=True, mul=False, power_exp=False, power_base=False, multinomial=False,
                           basic=False, force=True)


class ProofMarks:
    """The proving side of a step checker, one index or several: each checked step is proved (in a background
    process where `background`, else at once) and marked with the sizes it was proved at; `detail` words
    them ("identical at n = 1, 2, 3, 4")."""

    def __init__(self, prover: Prover, background: bool, detail: Callable[[list[int]], str]):
        self.prover, self.detail = prover, detail
        self.proofs = BackgroundProofs(prover) if background else None
        self.proved = 0
        self.proved_sizes: set[int] = set()  # the sizes some step was proved at

    def submit(self, step: Step, free: Sequence[sp.Symbol], equal: tuple[sp.Symbol, sp.Symbol] | None,
               distinct: tuple[sp.Symbol, sp.Symbol] | None, ranges: dict[sp.Symbol, str] | None = None) -> None:
        if self.proofs is not None:
            self.proofs.submit(step, free, equal, distinct, ranges)
        else:
            self._mark(step, self.prover.prove(step, free, equal, distinct, ranges))

    def finish(self) -> None:
        """Mark the steps proved in the background (else they already are)."""
        if self.proofs is not None:
            proofs, self.proofs = self.proofs, None  # steps checked from now on are proved at once
            for (step, *_), sizes in zip(proofs.requests, proofs.results()):
                self._mark(step, sizes)

    def stop(self) -> None:
        """Stop proving in the background (the derivation failed or was interrupted)."""
        if self.proofs is not None:
            self.proofs.close()

    def _mark(self, step: Step, sizes: list[int]) -> None:
        if sizes:
            self.proved_sizes |= set(sizes)
            step.proved = True
            step.proof_detail = self.detail(sizes)
            self.proved += 1


class BackgroundProofs:
    """Steps proved in a forked process while the derivation goes on, so that a derivation takes about the
    longer of the two instead of their sum; elsewhere (one CPU, not Linux, threads running) or should that
    process fail, the steps are proved here when the results are asked for. The results are the same.

    Each step is sent as it is checked (pickled: its sides, assumptions and matrix axes); the answers, the
    sizes proved for each step, come back once, at the end."""

    def __init__(self, prover: Prover):
        self.prover = prover
        self.requests: list[tuple[Step, list[sp.Symbol], Any, Any, Any]] = []
        self._in_background = _may_fork()
        self._child: tuple[int, Any, Any] | None = None
        self._sent = len(prover.added)  # the prover's definitions the background process has

    def submit(self, step: Step, free: Sequence[sp.Symbol], equal: tuple[sp.Symbol, sp.Symbol] | None,
               distinct: tuple[sp.Symbol, sp.Symbol] | None, ranges: dict[sp.Symbol, str] | None = None) -> None:
        self.requests.append((step, list(free), equal, distinct, ranges))
        if self._in_background and self._child is None:
            self._in_background = False  # one process per derivation, started with its first step
            self._start()
        if self._child is not None:
            claim = Step(step.rule, step.lhs, step.forms, reason=None,  # type: ignore[arg-type]
                         assumes=step.assumes, matrix_axes=step.matrix_axes)
            added, self._sent = self.prover.added[self._sent:], len(self.prover.added)
            try:
                pickle.dump((claim, list(free), equal, distinct, ranges, added), self._child[1])
                self._child[1].flush()
            except (OSError, pickle.PicklingError, RecursionError):
                self.close()  # proved here instead

    def results(self) -> list[list[int]]:
        """The sizes proved for every submitted step, in order of submission."""
        answers = None
        if self._child is not None:
            _, requests, replies = self._child
            try:
                pickle.dump(None, requests)
                requests.close()
                answers = pickle.load(replies)
            except (OSError, EOFError, pickle.UnpicklingError):
                answers = None
            finally:
                self.close()
        if not isinstance(answers, list) or len(answers) != len(self.requests):
            answers = [self.prover.prove(*request) for request in self.requests]
        return answers

    def close(self) -> None:
        """Stop the background process (if any) and reap it."""
        if self._child is None:
            return
        pid, requests, replies = self._child
        self._child = None
        for stream in (requests, replies):
            with contextlib.suppress(OSError):
                stream.close()
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(OSError):
            os.waitpid(pid, 0)

    def _start(self) -> None:
        request_read, request_write = os.pipe()
        reply_read, reply_write = os.pipe()
        with contextlib.suppress(OSError, AttributeError):  # room for a derivation's steps without blocking
            import fcntl

            fcntl.fcntl(request_write, fcntl.F_SETPIPE_SZ, 1 << 20)
        try:
            pid = os.fork()
        except OSError:  # no process to be had (a process limit, memory): proved here instead
            for descriptor in (request_read, request_write, reply_read, reply_write):
                os.close(descriptor)
            return
        if pid == 0:  # the background process: prove what arrives, answer at the end, never return
            status = 1
            try:
                os.close(request_write)
                os.close(reply_read)
                with os.fdopen(request_read, "rb") as requests, os.fdopen(reply_write, "wb") as replies:
                    answers = []
                    while (request := pickle.load(requests)) is not None:
                        *claim, added = request
                        for definition, axes in added:
                            self.prover.add(definition, axes)
                        answers.append(self.prover.prove(*claim))
                    pickle.dump(answers, replies)
                status = 0
            finally:
                os._exit(status)
        os.close(request_read)
        os.close(reply_write)
        self._child = (pid, os.fdopen(request_write, "wb"), os.fdopen(reply_read, "rb"))


def _may_fork() -> bool:
    """Fork only where it is cheap and safe: Linux, a second CPU to run on, and no other thread (whose
    locks the copy would inherit held) — nor JAX, whose threads Python does not see."""
    if not sys.platform.startswith("linux") or threading.active_count() != 1 or "jax" in sys.modules:
        return False
    return len(os.sched_getaffinity(0)) >= 2
