"""Algebra on index-notation expressions that SymPy does not do by itself, for arrays of any number of index
ranges (a one-index spec is one whose row range is implicit): a sum carries its range in its limits (k from 0 to
n_c − 1), so renaming or sifting never mixes ranges.

Sifting products of Kronecker deltas (Σ_k f(k) δ_kj = f(j)), distributing, factoring and collecting sums,
renaming bound indices, inlining definitions, and rewriting a result in the spec's own names (exp(x_i)/Σ → y_i)
by inverting each definition structurally. Nothing here knows any catalog entry by name.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Collection, Iterable
from typing import Any

import sympy as sp

from softgrad.derive.spec import Definition, Spec
from softgrad.derive.symbols import Bracket, Masked, SumExcept, fresh_index, names_in, sigmoid, softplus


def exp_of_sums(expr: sp.Expr) -> sp.Expr:
    """Π_k exp(f) written back as exp(Σ_k f): SymPy's expand, cancel and factor turn exp(Σ) into a product,
    which no textbook step, check or code generator here uses."""
    if not expr.has(sp.Product):
        return expr
    return expr.replace(lambda e: isinstance(e, sp.Product) and isinstance(e.function, sp.exp),
                        lambda e: sp.exp(sp.Sum(e.function.args[0], *e.limits)))


def expanded(expr: sp.Expr, **hints: bool) -> sp.Expr:
    """sp.expand, except that exp(Σ_k f) stays exp(Σ_k f)."""
    return exp_of_sums(sp.expand(expr, **hints))


def sums_of_constants(expr: sp.Expr) -> sp.Expr:
    """Σ_k c = c·n for c that does not depend on k."""
    return expr.replace(lambda e: isinstance(e, sp.Sum) and e.limits[0][0] not in e.function.free_symbols,
                        lambda e: e.function * (e.limits[0][2] + 1))


def defined_sums(spec: Spec) -> list[tuple[sp.Sum, sp.Expr]]:
    """(Σ_k f_k, its value) for each scalar definition s = c·Σ_k f_k: Σ_k f_k = s/c (a mean: Σ_k x_k = n·m);
    and the same sum with the spec's arrays written out, its factors free of k taken outside: for
    L = Σ_i dy_i·y_i with y_i = e^{x_i}/Σ_k e^{x_k}, Σ_i dy_i·e^{x_i} = L·Σ_k e^{x_k}."""
    pairs = []
    vectors = [d for d in spec.definitions if d.is_vector]
    for definition in spec.definitions:
        if definition.is_vector:
            continue
        constant, varying = definition.expr.as_independent(*definition.expr.atoms(sp.Sum), as_Add=False)
        if isinstance(varying, sp.Sum) and constant != 0 and not varying.free_symbols & {
                s for s in varying.free_symbols if s.is_integer and s.name != "n"}:
            pairs.append((varying, definition.symbol / constant))
            written = inline(varying, vectors)
            if written != varying and isinstance(written, sp.Sum) and len(written.limits) == 1:
                bound = written.limits[0][0]
                outside, inside = written.function.as_independent(bound, as_Add=False)
                if outside != 1:
                    pairs.append((sp.Sum(inside, *written.limits), definition.symbol / (constant * outside)))
    return pairs


def simplify_with_definitions(expr: sp.Expr, spec: Spec) -> sp.Expr:
    """Sums split term by term, Σ_k c = c·n, and every sum the spec names replaced by its name: what is
    left of Σ_k (x_k − m) for a mean m is n·m − n·m = 0."""
    expr = distribute(expr)  # Σ(a + b) = Σa + Σb, constants out, Σ_k c = c·n
    for total, value in defined_sums(spec):
        expr = expr.replace(lambda e, total=total: isinstance(e, sp.Sum) and same_sum(e, total),
                            lambda e, value=value: value)
    return tidy(sums_of_constants(expr))


def expand_sum_except(expr: sp.Expr) -> sp.Expr:
    """Σ_{k≠j} f(k) → Σ_k f(k) − f(j)."""
    return expr.replace(lambda e: isinstance(e, SumExcept), lambda e: e.as_full_sum())


def rename_clashing(expr: sp.Expr, avoid: set[str], reserved: Collection[str] = ()) -> sp.Expr:
    """Each sum whose index clashes with `avoid` renamed to the next free letter (k, l, m, …; avoiding `reserved`
    too, the names of definitions, which inlining replaces wherever they are free), each sum on its own: what
    a tutorial writes when it inlines one row's definition into another (rename_bound gives every sum of an
    expression an index of its own, numbered after its range's letter, as several ranges need)."""

    def rename(total: sp.Sum) -> sp.Sum:
        bound = total.limits[0][0]
        if str(bound) not in avoid:
            return total
        new = fresh(avoid | set(reserved) | names_in(total), "klmpqrsuvw")
        return sp.Sum(total.function.xreplace({bound: new}), (new, *total.limits[0][1:]))

    return expr.replace(lambda e: isinstance(e, sp.Sum) and len(e.limits) == 1, rename)


def instantiate(definition: Definition, at: sp.Symbol | None, reserved: Collection[str] = ()) -> sp.Expr:
    """A vector definition's right-hand side at index `at` (bound indices renamed away from it, and from
    `reserved`)."""
    if definition.index is None:
        return definition.expr
    body = rename_clashing(definition.expr, {str(at)} - {str(definition.index)}, reserved)
    return body.subs(definition.index, at)


def inline(expr: sp.Expr, definitions: list[Definition], taken: set[str] | None = None) -> sp.Expr:
    """Replace every defined name by its definition at the entry read, repeatedly, until only inputs remain.
    The definitions' own summation indices are kept apart from what they land in: renamed to the next free
    letter where they clash (one row, as a tutorial writes it), or, given `taken`, numbered apart from it
    (rename_bound: several ranges, where b1 says which range an index runs over)."""
    by_name = {d.name: d for d in definitions}
    for _ in range(len(definitions) + 1):
        replacements: dict[Any, Any] = {}
        for entry in expr.atoms(sp.Indexed):
            definition = by_name.get(str(entry.base))
            if definition is not None:
                replacements[entry] = instantiate(definition, entry.indices[0], by_name) if taken is None else \
                    at(definition, tuple(entry.indices), taken | names_in(expr))
        for symbol in expr.free_symbols:  # a summation index is never a definition's name
            if str(symbol) in by_name and not by_name[str(symbol)].is_vector:
                replacements[symbol] = by_name[str(symbol)].expr
        if not replacements:
            return expr
        expr = expr.xreplace(replacements)
    return expr


def depends_on(expr: sp.Expr, names: set[str]) -> bool:
    """Whether expr mentions any of the given vector or scalar names."""
    return bool({str(b.label) for b in expr.atoms(sp.IndexedBase)} & names) or bool(
        {str(s) for s in expr.atoms(sp.Symbol)} & names
    )


@functools.lru_cache(maxsize=4096)  # the same forms are weighed again in every back-substitution trial
def cost(expr: sp.Expr) -> int:
    """How heavy an expression reads: operations, with sums and inputs inside functions weighted up."""
    sums = len(expr.atoms(sp.Sum))
    functions = len([f for f in expr.atoms(sp.Function) if not isinstance(f, sp.KroneckerDelta)])
    return int(sp.count_ops(expr)) + 6 * sums + 2 * functions


@functools.lru_cache(maxsize=4096)  # back-substitution tries the same expressions again and again
def tidy(expr: sp.Expr) -> sp.Expr:
    """The most readable of a few equivalent forms (cancelled, factored, expanded).

    Constants such as exp(1000) are held as opaque symbols meanwhile: SymPy's polynomial algorithms
    would read exp(1000) as e¹⁰⁰⁰, a polynomial of degree 1000 in e."""
    expr = sp.sympify(expr)
    constants = {e: sp.Dummy(positive=True) for e in expr.atoms(sp.exp) if e.is_number}
    if constants:
        masked = _tidy(expr.xreplace(constants))
        return masked.xreplace({dummy: constant for constant, dummy in constants.items()})
    return _tidy(expr)


#: Beyond this size (SymPy operations) tidy does not try cancel(), whose polynomial gcds grow faster than the
#: expression (over 30 s for a 1,150-operation VJP); factor(), which cancels too, is still tried. The
#: largest expression tidied over the catalog and the outside corpus has 269.
LARGEST_CANCELLED = 300


def _tidy(expr: sp.Expr) -> sp.Expr:
    candidates = [expr]
    try:
        if sp.count_ops(expr) <= LARGEST_CANCELLED:
            candidates.append(sp.cancel(expr))
        candidates += [sp.factor(expr), sp.factor_terms(expanded(expr))]
        if expr.has(sp.exp):
            # exponentials combined (e^a·e^b → e^(a+b)); integer powers of a base combine anyway (over the catalog,
            # the examples and the outside corpus, roots alone never read shorter powsimp'd: not tried for them)
            candidates.append(sp.powsimp(expanded(expr, power_exp=True, mul=False, log=False)))
        # (the cancelled powers, powsimp'd or factored, won once over the catalog and the outside corpus, on
        # a trial that did not change any result: a sixth of tidy's time, not tried)
    except (sp.PolynomialError, TypeError, ValueError):
        pass
    return lightest([exp_of_sums(c) for c in candidates])


def lightest(candidates: list[sp.Expr]) -> sp.Expr:
    """The candidate of least cost, ties broken by the shorter printed form (printed only for ties)."""
    costs = [cost(e) for e in candidates]
    tied = [e for e, c in zip(candidates, costs) if c == min(costs)]
    return tied[0] if len(tied) == 1 else min(tied, key=lambda e: len(str(e)))


def inversions(definition: Definition) -> list[tuple[sp.Expr, sp.Expr]]:
    """Pairs (pattern, value) with pattern = value whenever the definition holds.

    y_i = N_i / D gives N_i = y_i D; z_i = x_i − C gives x_i = z_i + C; L = log S gives S = exp(L).
    Only what depends on the definition's own index (or, for a scalar, on an input) is peeled.
    """
    target = definition.symbol
    body = definition.expr
    own = set(definition.indices)  # an array's indices, all of them (one for a vector)

    def varies(e: sp.Expr) -> bool:
        if own:
            return bool(own <= e.free_symbols)
        return bool(e.atoms(sp.Indexed))

    pairs = [(body, target)]
    for _ in range(8):
        if body.is_Add or body.is_Mul:
            varying = [a for a in body.args if varies(a)]
            fixed = [a for a in body.args if not varies(a)]
            if not varying or not fixed or (len(varying) != 1 and body.is_Add):
                break
            if body.is_Add:
                body, target = varying[0], target - sp.Add(*fixed)
            else:  # a masked numerator ([j ≤ i]·exp(S_ij)) is peeled whole
                body, target = sp.Mul(*varying), target / sp.Mul(*fixed)
        elif isinstance(body, sp.exp):
            body, target = body.args[0], sp.log(target)
        elif isinstance(body, sp.log):
            body, target = body.args[0], sp.exp(target)
        elif body.is_Pow and not varies(body.exp) and varies(body.base) and (1 / body.exp).is_Integer:
            # z = u^(1/k) gives u = z^k; z = u² does not give u = √z (u may be negative), nor z = u³ u = ∛z
            # (the principal cube root of a negative z is not real)
            body, target = body.base, target ** (1 / body.exp)
        else:
            break
        if body.is_Symbol or body.is_Number:
            break
        pairs.append((body, target))
    return pairs


#: Beyond this size (SymPy operations) a result is not also tried written wholly in the inputs.
LARGEST_INLINED_START = 80


def back_substitute(expr: sp.Expr, spec: Spec, upto: Definition | None = None) -> sp.Expr:
    """Rewrite expr in the spec's defined names wherever that makes it simpler.

    Entries are replaced at free indices and inside sums; what a sum then has as a constant factor leaves
    it. Where the result still mixes a defined vector with the inputs it is made of, expr is also tried
    written wholly in the inputs, where such terms can cancel (g·x²/Σx² − g·y² = 0 for y = x/√Σx²)."""
    definitions = spec.definitions if upto is None else spec.definitions[: spec.definitions.index(upto) + 1]
    vectors = [d for d in definitions if d.is_vector]
    best = _in_names(tidy(unify_sums(expr)), definitions)
    if not _mixes_names_and_inputs(best, vectors):
        return best
    inlined = inline(expr, vectors)  # named scalars (m, v) stay
    if inlined == expr or sp.count_ops(inlined) > LARGEST_INLINED_START:
        return best
    return lightest([best, _in_names(tidy(inlined), definitions)])


def _mixes_names_and_inputs(expr: sp.Expr, vectors: list[Definition]) -> bool:
    """Whether expr reads a defined vector and also an input that vector is made of."""
    def arrays(e: sp.Expr) -> set[str]:
        return {str(b.label) for b in e.atoms(sp.IndexedBase)}

    used = arrays(expr)
    return any(d.name in used and used & arrays(inline(d.expr, vectors)) for d in vectors)


def _forms(definition: Definition, definitions: list[Definition]) -> list[Definition]:
    """The definition, and where it reads another vector, the same written in the inputs (sums that differ only
    in their index's name made one): y = p²/Σp² with p = softmax(z) is also y = e^(2z_i)/Σe^(2z_k), whose
    inversion finds y in a result written in z."""
    vectors = [d for d in definitions if d.is_vector and d.name != definition.name]
    if not definition.is_vector or not depends_on(definition.expr, {d.name for d in vectors}):
        return [definition]
    written = tidy(unify_sums(distribute(inline(definition.expr, vectors))))
    return [definition] if written == definition.expr else [definition, dataclasses.replace(definition, expr=written)]


def _in_names(start: sp.Expr, definitions: list[Definition]) -> sp.Expr:
    """start rewritten by every inversion of every definition (latest first), each kept where it is lighter."""
    best = start
    for definition in (form for latest in reversed(definitions) for form in _forms(latest, definitions)):
        for pattern, value in inversions(definition):
            # the definition's own sums stay whole (x_k in Σ x_k² is not rewritten as y_k·√Σx²)
            own = [] if pattern.atoms(sp.Sum) else list(definition.expr.atoms(sp.Sum))
            masks = {found: sp.Dummy("sum") for found in best.atoms(sp.Sum)
                     if any(same_sum(found, total) for total in own)}
            trial = best.xreplace(masks)
            positions: list[sp.Symbol | None] = [None]
            if definition.index is not None:
                positions = sorted({s for s in trial.free_symbols if s.is_integer and s.name != "n"}
                                   | {total.limits[0][0] for total in trial.atoms(sp.Sum)}, key=str)
            for at in positions:
                if at is None:
                    trial = substitute(trial, pattern, value, inside_sums=False)
                else:
                    trial = substitute(trial, pattern.subs(definition.index, at),
                                       value.subs(definition.index, at), inside_sums=False)
            trial = trial.xreplace({dummy: total for total, dummy in masks.items()})
            trial = tidy(distribute(trial)) if trial != best else best
            if cost(trial) < cost(best):
                best = trial
    return best


def positive_inputs(definitions: list[Definition], inputs: list[str]) -> set[str]:
    """Inputs whose values must be positive for the spec to be real: those read under a log, a square root
    or a fractional power, directly or through the definitions read there, except inside a part that is
    positive whatever its argument (exp, σ, softplus, |u|, an even power: a variance's squares), and scalar
    inputs declared positive. One rule for every spec, whatever its number of indices: the checks draw these
    inputs positive."""
    by_name = {d.name: d for d in definitions}

    def reads(expr: sp.Expr) -> set[str]:
        free = expr.replace(lambda e: isinstance(e, (sp.exp, sigmoid, softplus, sp.Abs))
                            or (e.is_Pow and e.exp.is_even is True), lambda e: sp.S.Half)
        return {str(i.base) for i in free.atoms(sp.Indexed)} | {str(s) for s in free.free_symbols}

    pending: list[str] = []
    for definition in definitions:
        arguments = [e.args[0] for e in definition.expr.atoms(sp.log)]
        arguments += [e.base for e in definition.expr.atoms(sp.Pow) if not e.exp.is_integer]
        for argument in arguments:
            pending += reads(argument)
    needed: set[str] = set()
    while pending:
        name = pending.pop()
        if name in needed:
            continue
        needed.add(name)
        if name in by_name:  # what must be positive reads its definition's inputs (outside the positive parts)
            pending += reads(by_name[name].expr)
    # a scalar input that was a parameter (a temperature T made learnable) keeps its symbol, declared positive
    declared = {str(s) for d in definitions for s in d.expr.free_symbols if s.is_positive and not s.is_number}
    return (needed | declared) & set(inputs)


#: Names that code and papers give targets; used only where the structure of a loss cannot tell its targets
#: from its other inputs (a hinge loss, a squared error).
TARGET_NAMES = frozenset({"t", "T", "target", "targets", "label", "labels", "y_true", "onehot", "truth", "Y"})


def targets_of_loss(spec: Spec, candidates: list[str]) -> list[str]:
    """The candidates that look like targets of the spec's scalar output (none for an array output):
    constrained, or entering the loss linearly where other inputs do not, or, when the structure cannot tell
    (hinge, squared error), named like targets. A scalar input declared learnable (input T) never is."""
    if spec.output.is_vector:
        return []
    constrained = {c.input_name for c in spec.constraints}
    definitions = spec.definitions[:-1]
    affine = {name for name in candidates if affine_in(spec.output.expr, name, definitions)}
    if affine == set(candidates) or not affine:
        affine = {name for name in candidates if name in TARGET_NAMES}
    return [name for name in candidates if (name in constrained or name in affine) and spec.axes.get(name) != ()]


def affine_in(expr: sp.Expr, name: str, definitions: Collection[Definition] = ()) -> bool:
    """Whether expr is affine in the entries of the input `name` (as a loss is in its targets): they are
    reached only through sums and products with at most one factor that reads them — through the definitions
    expr reads, each looked at once (not inlined: the written-out loss of a two-layer classifier took a tenth of
    a second to build, before its first step could be proved)."""
    return _Degree(name, definitions).of(expr) == 1


class _Degree:
    """The degree of expressions in the entries of one input: 0 (not read), 1 (affine), None (anything else),
    through the definitions they read."""

    def __init__(self, name: str, definitions: Collection[Definition]):
        self.name = name
        self.by_name = {d.name: d for d in definitions}
        self.known: dict[str, int | None] = {}

    def of_definition(self, defined: str) -> int | None:
        if defined not in self.known:
            self.known[defined] = 0  # the parser refuses a definition that reads itself: this ends a recursion
            self.known[defined] = self.of(self.by_name[defined].expr)
        return self.known[defined]

    def reads(self, e: sp.Basic) -> bool:
        names = {str(entry.base) for entry in e.atoms(sp.Indexed)} | {str(s) for s in e.free_symbols}
        return self.name in names or any(self.of_definition(n) != 0 for n in names if n in self.by_name)

    def of(self, e: sp.Basic) -> int | None:
        if not self.reads(e):
            return 0
        if isinstance(e, sp.Indexed):
            if any(self.reads(position) for position in e.indices):
                return None
            return 1 if str(e.base) == self.name else self.of_definition(str(e.base))
        if isinstance(e, sp.Symbol):
            return 1 if str(e) == self.name else self.of_definition(str(e))
        if isinstance(e, sp.Sum):
            return self.of(e.function)
        if e.is_Add or e.is_Mul:
            degrees = [self.of(a) for a in e.args]
            found = [d for d in degrees if d is not None]
            if len(found) < len(degrees):
                return None
            total = max(found) if e.is_Add else sum(found)
            return total if total <= 1 else None
        return None


def bound_indices(expr: sp.Basic) -> set[sp.Symbol]:
    return {limit[0] for total in expr.atoms(sp.Sum) for limit in total.limits}


def index_symbols(expr: sp.Basic) -> set[sp.Symbol]:
    """Free index symbols of expr: the integer symbols it holds — in an entry's positions, a delta, a bracket
    or used as a number (j − i) — but not the sizes n_k."""
    return {s for s in expr.free_symbols if isinstance(s, sp.Symbol) and s.is_integer and not str(s).startswith("n_")}


def index_ranges(expr: sp.Expr, axes: dict[str, tuple[str, ...]], sizes: dict[str, sp.Symbol],
                  known: dict[sp.Symbol, str] | None = None) -> dict[sp.Symbol, str]:
    """The range (by name) of every index of expr: a summation index by its limits, any other by the axis of
    an array it indexes; `known` ranges (a definition's own indices) are kept."""
    by_size = {size: name for name, size in sizes.items()}
    ranges = dict(known or {})
    for total in expr.atoms(sp.Sum):
        for bound, _, high in total.limits:
            ranges[bound] = by_size[high + 1]
    for entry in expr.atoms(sp.Indexed):
        for axis, position in enumerate(entry.indices):
            if isinstance(position, sp.Symbol) and str(entry.base) in axes:
                ranges.setdefault(position, axes[str(entry.base)][axis])
    return ranges


def divided_sizes(definitions: Iterable[Definition], sizes: dict[str, sp.Symbol]) -> list[str]:
    """The ranges (of `sizes`, in its order) whose size the definitions divide by: a mean over b, 1/√size(e).
    A size in a sum's bounds only (1/Σ_k e^x[k]) divides by the sum, not by the size. Differentiating divides by
    no new size, so the definitions tell it for the gradients too."""
    by_symbol = {symbol: name for name, symbol in sizes.items()}
    found: set[str] = set()
    for definition in definitions:
        for power in definition.expr.atoms(sp.Pow):
            if power.exp.is_negative:
                base = power.base.replace(lambda e: isinstance(e, sp.Sum), lambda e: sp.S.One)
                found |= {by_symbol[s] for s in base.free_symbols if s in by_symbol}
    return [name for name in sizes if name in found]


def definition_ranges(definition: Definition, axes: dict[str, tuple[str, ...]],
                      sizes: dict[str, sp.Symbol]) -> dict[sp.Symbol, str]:
    """The range of every index of a definition's right-hand side, its own indices by its array's axes."""
    return index_ranges(definition.expr, axes, sizes, dict(zip(definition.indices, axes.get(definition.name, ()))))


def fresh(taken: set[str], preferred: Iterable[str]) -> sp.Symbol:
    """fresh_index, the name then added to `taken` (so that the next one differs)."""
    symbol = fresh_index(taken, preferred)
    taken.add(str(symbol))
    return symbol


def rename_bound(expr: sp.Expr, taken: set[str]) -> sp.Expr:
    """Every summation index renamed to a letter not in `taken` (which grows), so that substituting free
    indices into the expression can never capture one."""
    def rename(total: sp.Sum) -> sp.Expr:
        function, limits = total.function, []
        for bound, low, high in total.limits:
            if str(bound) in taken:
                new = fresh(taken, [f"{bound}{number}" for number in range(1, 9)])
                function = function.xreplace({bound: new})
                bound = new
            taken.add(str(bound))
            limits.append((bound, low, high))
        return sp.Sum(function, *limits)

    return expr.replace(lambda e: isinstance(e, sp.Sum), rename)


def at(definition: Definition, positions: tuple[sp.Expr, ...], taken: set[str]) -> sp.Expr:
    """A definition's right-hand side at the given index positions, bound indices kept apart from them."""
    body = rename_bound(definition.expr, set(taken) | {str(p) for p in positions} - set(map(str, definition.indices)))
    return body.xreplace(dict(zip(definition.indices, positions)))


class _real_abs(sp.Function):
    """|u| for a real u, whose derivative SymPy knows to be sign(u)·u' (it does not for an array entry,
    which it cannot assume real)."""

    nargs = 1

    def fdiff(self, argindex: int = 1) -> sp.Expr:
        return sp.sign(self.args[0])


def derivative(expr: sp.Expr, var: sp.Expr) -> sp.Expr:
    """∂expr/∂var for real entries: sp.diff, with |u|' = sign(u)·u' (a kink at 0, where sign(0) = 0 is used,
    as frameworks do)."""
    if not expr.has(sp.Abs):
        return sp.diff(expr, var)
    real = expr.replace(lambda e: isinstance(e, sp.Abs), lambda e: _real_abs(e.args[0]))
    return sp.diff(real, var).replace(lambda e: isinstance(e, _real_abs), lambda e: sp.Abs(e.args[0]))


def exact_numbers(expr: sp.Expr) -> sp.Expr:
    """Floats that calculus made from the spec's own (1.0·v, 0.5) written as the small rationals they are;
    the spec's constants such as 1e-5 stay as written."""
    def simple(value: sp.Float) -> sp.Expr:
        rational = sp.Rational(str(value)).limit_denominator(16)
        return rational if float(rational) == float(value) and rational.q <= 16 and abs(rational.p) <= 64 else value

    return expr.replace(lambda e: isinstance(e, sp.Float), simple)


def _powers_of_deltas(expr: sp.Expr) -> sp.Expr:
    return expr.replace(lambda e: e.is_Pow and isinstance(e.base, sp.KroneckerDelta) and e.exp.is_positive,
                        lambda e: e.base)


def _expanded(expr: sp.Expr) -> sp.Expr:
    """expanded(), except that exp(x + b) of two arrays stays one exponential (a softmax of x + b is read
    back as its own name); a constant in an exponent still leaves it (exp(x + 1000) = e¹⁰⁰⁰·exp(x))."""
    def constant_apart(e: sp.exp) -> sp.Expr:
        constant, rest = e.args[0].as_independent(*e.args[0].free_symbols, as_Add=True)
        return sp.exp(constant) * sp.exp(rest) if constant != 0 and rest != 0 else e

    kept = expanded(expr, power_exp=False)
    if not any(e.args[0].is_Add for e in kept.atoms(sp.exp)):
        return kept
    return kept.replace(lambda e: isinstance(e, sp.exp) and e.args[0].is_Add, constant_apart)


def _solved(delta: sp.KroneckerDelta, bound: sp.Symbol) -> tuple[sp.Expr, bool] | None:
    """The value of `bound` where δ is 1, and whether it came from a shifted position (δ(s, t + k) → t = s − k),
    for a delta that holds the bound on one side with coefficient ±1; None otherwise."""
    sides = [a for a in delta.args if bound in a.free_symbols]
    if len(sides) != 1:
        return None
    side = sides[0]
    other = delta.args[1] if delta.args[0] is side else delta.args[0]
    if side == bound:
        return other, False
    coefficient = side.coeff(bound)
    rest = sp.expand(side - coefficient * bound)
    if coefficient not in (1, -1) or bound in rest.free_symbols or not side.is_Add:
        return None
    return sp.expand((other - rest) / coefficient), True


def _flattened(expr: sp.Expr) -> sp.Expr:
    """Σ_a f·Σ_k g → Σ_a Σ_k f·g where a shifted delta (δ(s, t + k)) lies inside: the chain rule's outer
    indices are then sifted first, so that the backward of a convolution sums over the kernel
    (Σ_k w[k]·g[s − k]), not over the output positions."""
    def shifted(e: sp.Expr) -> bool:
        return any(not (a.is_Symbol or isinstance(a, sp.Indexed)) for d in e.atoms(sp.KroneckerDelta) for a in d.args)

    def merge(total: sp.Sum) -> sp.Expr:
        terms = []
        for term in sp.Add.make_args(sp.expand(total.function, deep=False, power_base=False, power_exp=False,
                                               log=False, multinomial=False)):
            inner = [f for f in sp.Mul.make_args(term) if isinstance(f, sp.Sum) and shifted(f)]
            if len(inner) != 1:
                terms.append(sp.Sum(term, *total.limits))
                continue
            rest = term / inner[0]
            terms.append(sp.Sum(rest * inner[0].function, *total.limits, *inner[0].limits))
        return sp.Add(*terms)

    if not shifted(expr):
        return expr
    return expr.replace(lambda e: isinstance(e, sp.Sum) and e.function.has(sp.Sum), merge)


def sift(expr: sp.Expr, edges: bool = False) -> sp.Expr:
    """Σ_k f(k) δ(k, a) = f(a) for every limit of every sum; what is constant in a limit leaves it, and
    Σ_k c = c·n_k. A shifted delta, Σ_t f(t) δ(s, t + k), keeps the edges where t = s − k is in t's range
    as Iverson brackets: f(s − k)·[0 ≤ s − k]·[s − k ≤ n_t − 1]. `edges`: a plain δ(i, s) keeps them too
    (a spec with shifted reads, where x[i] reads an axis longer than i's range)."""
    def one(total: sp.Sum) -> sp.Expr:
        pieces = []
        for term in sp.Add.make_args(_expanded(_powers_of_deltas(total.function))):
            limits = list(total.limits)
            changed = True
            while changed:
                changed = False
                for limit in limits:
                    bound = limit[0]
                    found = next(((f, solved) for f in sp.Mul.make_args(term) if isinstance(f, sp.KroneckerDelta)
                                  for solved in [_solved(f, bound)] if solved is not None), None)
                    if found is None:
                        continue
                    delta, (value, shifted) = found
                    term = _powers_of_deltas((term / delta).xreplace({bound: value}))
                    if shifted or edges:
                        term *= Bracket(value - limit[1]) * Bracket(limit[2] - value)
                    limits.remove(limit)
                    changed = True
                    break
            pieces.append(factor_out(term, limits))
        return sp.Add(*pieces)

    return simplify_brackets(_flattened(expr).replace(lambda e: isinstance(e, sp.Sum), one), {})


def simplify_brackets(expr: sp.Expr, highest: dict[sp.Symbol, sp.Expr]) -> sp.Expr:
    """Iverson brackets that hold (or fail) for every value of their indices made 1 (or 0): an index runs
    from 0 to its highest value (a sum's limit, or `highest` for free indices); others are left."""
    if not expr.has(Bracket):
        return expr

    def within(e: sp.Expr, known: dict[sp.Symbol, sp.Expr]) -> sp.Expr:
        if isinstance(e, sp.Sum):
            inner = {**known, **{limit[0]: limit[2] for limit in e.limits if limit[1] == 0}}
            return sp.Sum(within(e.function, inner), *e.limits)
        if isinstance(e, Bracket):
            argument = sp.expand(e.args[0])
            lowest, largest = argument, argument
            for symbol in argument.free_symbols & set(known):
                coefficient = argument.coeff(symbol)
                if not coefficient.is_number:
                    return e
                low, high = (0, known[symbol]) if coefficient > 0 else (known[symbol], 0)
                lowest = lowest - coefficient * symbol + coefficient * low
                largest = largest - coefficient * symbol + coefficient * high
            lowest, largest = sp.expand(lowest), sp.expand(largest)
            if lowest.free_symbols & set(known) or largest.free_symbols & set(known):
                return e
            if lowest.is_nonnegative:
                return sp.S.One
            if largest.is_negative:
                return sp.S.Zero
            return e
        if not e.args or not e.has(Bracket):
            return e
        return e.func(*[within(a, known) for a in e.args])

    return within(expr, dict(highest))


def collapse_deltas(expr: sp.Expr) -> sp.Expr:
    """δ(c, label_b)·f(c) = δ(c, label_b)·f(label_b): where the delta is not zero its two sides are equal,
    so an index that meets a label's entry takes the entry's value in the rest of the product."""
    def one(product: sp.Mul) -> sp.Expr:
        for delta in [f for f in product.args if isinstance(f, sp.KroneckerDelta)]:
            first, second = delta.args
            if isinstance(first, sp.Symbol) and not isinstance(second, sp.Symbol):
                index, value = first, second
            elif isinstance(second, sp.Symbol) and not isinstance(first, sp.Symbol):
                index, value = second, first
            else:
                continue
            rest = product / delta
            if index in rest.free_symbols:
                return delta * rest.xreplace({index: value})
        return product

    return expr.replace(lambda e: e.is_Mul and any(isinstance(f, sp.KroneckerDelta) for f in e.args), one)


def factor_out(term: sp.Expr, limits: list[tuple[sp.Expr, ...]]) -> sp.Expr:
    """Σ over `limits` of one product: factors that do not depend on a limit's index leave the sum, and a
    limit nothing depends on becomes a factor n_k."""
    if not limits:
        return term
    bounds = {limit[0] for limit in limits}
    outside = sp.Mul(*[f for f in sp.Mul.make_args(term) if not f.free_symbols & bounds])
    inside = sp.Mul(*[f for f in sp.Mul.make_args(term) if f.free_symbols & bounds])
    used = [limit for limit in limits if limit[0] in inside.free_symbols]
    for limit in limits:
        if limit not in used:
            outside *= limit[2] - limit[1] + 1
    return outside * (sp.Sum(inside, *used) if used else inside)


def distribute(expr: sp.Expr) -> sp.Expr:
    """Σ(a + b) → Σa + Σb, each with its constant factors outside."""
    def one(total: sp.Sum) -> sp.Expr:
        terms = sp.Add.make_args(_expanded(total.function))
        return sp.Add(*[factor_out(term, list(total.limits)) for term in terms])

    return expr.replace(lambda e: isinstance(e, sp.Sum), one)


def same_sum(first: sp.Sum, second: sp.Sum) -> bool:
    """Two sums equal up to the names (and order) of their summation indices."""
    if len(first.limits) != len(second.limits):
        return False
    for order in itertools.permutations(second.limits):
        if [limit[1:] for limit in first.limits] != [limit[1:] for limit in order]:
            continue
        renaming = {b: a[0] for a, b in zip(first.limits, [limit[0] for limit in order])}
        if second.function.xreplace(renaming) == first.function:
            return True
    return False


def combine_sums(expr: sp.Expr) -> sp.Expr:
    """c₁ Σ_b f + c₂ Σ_b g → Σ_b (c₁ f + c₂ g), its summand factored: one sum where a textbook writes one
    (in every sum of the expression, innermost first)."""
    return expr.replace(lambda e: e.is_Add and len([t for t in e.args if t.has(sp.Sum)]) > 1, _combine_one)


def _combine_one(expr: sp.Expr) -> sp.Expr:
    groups: dict[tuple[Any, ...], list[sp.Expr]] = {}
    rest = []
    for term in sp.Add.make_args(sp.expand(expr, power_base=False, power_exp=False, log=False, deep=False)):
        sums = [f for f in sp.Mul.make_args(term) if isinstance(f, sp.Sum)]
        if len(sums) != 1:
            rest.append(term)
            continue
        total = sums[0]
        # only sums over the same entries combine: one that has fewer free indices stays a smaller reduction
        key = (tuple((limit[1], limit[2]) for limit in total.limits),
               tuple(sorted(map(str, index_symbols(total) - {limit[0] for limit in total.limits}))))
        coefficient = term / total
        bounds = tuple(limit[0] for limit in total.limits)
        # a coefficient with an index the sum does not have would put O(n) work inside every entry
        if any(b in coefficient.free_symbols for b in bounds) or index_symbols(coefficient) - total.free_symbols:
            rest.append(term)
            continue
        groups.setdefault(key, []).append((bounds, coefficient * total.function, total.limits))
    for members in groups.values():
        if len(members) == 1:
            bounds, function, limits = members[0]
            rest.append(sp.Sum(function, *limits) if True else function)
            continue
        bounds, _, limits = members[0]
        summand = sp.Add(*[function.xreplace(dict(zip(other, bounds))) for other, function, _ in members])
        rest.append(sp.Sum(sp.factor_terms(summand), *limits))
    return sp.Add(*rest)


def unify_sums(expr: sp.Expr) -> sp.Expr:
    """Sums equal up to the names of their indices written one way, so that they cancel and collect."""
    representatives: list[sp.Sum] = []
    renaming = {}
    for total in sorted(expr.atoms(sp.Sum), key=lambda e: (sp.count_ops(e), sp.default_sort_key(e))):
        match = next((r for r in representatives if r != total and same_sum(r, total)), None)
        if match is None:
            representatives.append(total)
        else:
            renaming[total] = match
    return expr.xreplace(renaming) if renaming else expr


def substitute(expr: sp.Expr, pattern: sp.Expr, value: sp.Expr, inside_sums: bool = True) -> sp.Expr:
    """expr with pattern replaced by value, sums matched whatever their indices are called. inside_sums: also
    where the pattern involves a sum's index (SymPy's subs does not look there); a row's own definitions, tried
    at every index anyway, do not need it, and it would read Σ_k e^(x_k) as Σ_k y_k·Σ_l e^(x_l)."""
    for pattern_sum in pattern.atoms(sp.Sum):
        for found in expr.atoms(sp.Sum):
            if found != pattern_sum and same_sum(found, pattern_sum):
                expr = expr.xreplace({found: pattern_sum})
    if not inside_sums:
        return expr.subs(pattern, value)
    inside = expr.replace(lambda e: isinstance(e, sp.Sum) and e != pattern and not pattern.has(e),
                          lambda e: sp.Sum(e.function.subs(pattern, value), *e.limits))
    return inside.subs(pattern, value)


def _assignments(pattern: sp.Expr, definition: Definition, expr: sp.Expr) -> list[dict[sp.Symbol, sp.Expr]]:
    """Where a pattern might occur in expr: index assignments read off entries of the same arrays (each
    entry of the pattern that carries the definition's indices constrains them; all must agree)."""
    own = list(definition.indices)
    if not own:
        return [{}]
    anchors = [e for e in pattern.atoms(sp.Indexed) if set(own) & set(e.indices)]
    options: list[list[dict[sp.Symbol, sp.Expr]]] = []
    for anchor in sorted(anchors, key=sp.default_sort_key):
        found = []
        for entry in expr.atoms(sp.Indexed):
            if entry.base != anchor.base:
                continue
            assignment: dict[sp.Symbol, sp.Expr] = {}
            for mine, theirs in zip(anchor.indices, entry.indices):
                if mine in own and assignment.setdefault(mine, theirs) != theirs:
                    break
            else:
                if assignment not in found:
                    found.append(assignment)
        options.append(found)
    combined: list[dict[sp.Symbol, sp.Expr]] = []
    for choice in itertools.islice(itertools.product(*options), 256):
        merged: dict[sp.Symbol, sp.Expr] = {}
        if all(merged.setdefault(k, v) == v for part in choice for k, v in part.items()):
            if len(merged) == len(own) and merged not in combined:
                combined.append(merged)
    return combined


def _apart(pattern: sp.Expr, value: sp.Expr, avoid: set[str]) -> tuple[sp.Expr, sp.Expr]:
    """pattern and value with their summation indices renamed (the same way in both) away from `avoid`."""
    renaming = {}
    local = set(avoid)
    for bound in sorted(bound_indices(pattern) | bound_indices(value), key=str):
        if str(bound) in local:
            renaming[bound] = fresh(local, [f"{bound}{number}" for number in range(1, 9)])
        local.add(str(bound))
    return pattern.xreplace(renaming), value.xreplace(renaming)


def _rewrite(expr: sp.Expr, definition: Definition, pattern: sp.Expr, value: sp.Expr,
             assignment: dict[sp.Symbol, sp.Expr], own: list[sp.Sum], taken: set[str]) -> sp.Expr:
    """expr with one instance of a definition's inversion substituted (its own sums protected)."""
    avoid = set(taken) | names_in(expr) | {str(v) for v in assignment.values()}
    local_pattern, local_value = _apart(pattern, value, avoid - set(map(str, definition.indices)))
    local_pattern, local_value = local_pattern.xreplace(assignment), local_value.xreplace(assignment)
    masks = {} if pattern.atoms(sp.Sum) else {
        found: sp.Dummy("sum") for found in expr.atoms(sp.Sum)
        if any(same_sum(found, total.xreplace(assignment)) for total in own)}
    trial = substitute(expr.xreplace(masks), local_pattern, local_value)
    return unify_sums(trial.xreplace({dummy: total for total, dummy in masks.items()}))


def in_names(expr: sp.Expr, definitions: list[Definition], taken: set[str]) -> sp.Expr:
    """expr rewritten in the spec's defined names wherever that makes it simpler (exp(S_ij)/Σ_k exp(S_ik) →
    P_ij): each definition inverted, tried at every place its arrays occur, kept when the cost drops.
    A definition's own sums stay whole (the x_k of Σ_k x_k² are not rewritten)."""
    best = tidy(exact_numbers(expr))
    for _ in range(2):
        start = best
        for definition in reversed(definitions):
            if not definition.is_vector and not definition.expr.atoms(sp.Indexed):
                continue
            own = list(definition.expr.atoms(sp.Sum))
            for pattern, value in inversions(definition):
                assignments = _assignments(pattern, definition, best)
                # each place alone, then every place at once (terms cancel only when all are rewritten)
                trials = [[assignment] for assignment in assignments]
                if len(assignments) > 1:
                    trials.append(assignments)
                for group in trials:
                    trial = best
                    for assignment in group:
                        trial = _rewrite(trial, definition, pattern, value, assignment, own, taken)
                    if trial == best:
                        continue
                    trial = exact_numbers(tidy(exact_numbers(unify_sums(distribute(trial)))))
                    if cost(trial) < cost(best):
                        best = trial
        collapsed = exact_numbers(tidy(collapse_deltas(expanded(best))))
        if cost(collapsed) < cost(best):
            best = collapsed
        if best == start:
            break
    return best


def outputs_sum_to_one(definition: Definition) -> sp.Symbol | None:
    """For P[…, c] = N(c)/Σ_k N(k): the index c whose sum of P is 1 (a structural fact), else None."""
    return _normalised_index(definition.expr, tuple(definition.indices))


@functools.lru_cache(maxsize=1024)  # asked of every definition each time a result's facts are applied
def _normalised_index(expr: sp.Expr, indices: tuple[sp.Symbol, ...]) -> sp.Symbol | None:
    if len(indices) < 1:
        return None
    numerator, denominator = sp.fraction(sp.together(expr), exact=True)  # exp(−x) a numerator
    if not isinstance(denominator, sp.Sum) or len(denominator.limits) != 1:
        return None
    bound = denominator.limits[0][0]
    for free in indices:
        if free in denominator.free_symbols:
            continue
        if sp.simplify(denominator.function.xreplace({bound: free}) - numerator) == 0:
            return free
    return None


def with_rows_of_ones(expr: sp.Expr, definition: Definition) -> sp.Expr:
    """expr with every Σ of a normalised definition over its normalised index (Σ_k P[b, k], Σ_k y_k) written 1:
    the structural fact outputs_sum_to_one finds. Unchanged where the definition is not normalised."""
    free = outputs_sum_to_one(definition)
    if free is None:
        return expr
    axis = definition.indices.index(free)

    def row_of_ones(e: sp.Expr) -> bool:
        if not (isinstance(e, sp.Sum) and len(e.limits) == 1 and isinstance(e.function, sp.Indexed)):
            return False
        bound, entry = e.limits[0][0], e.function
        return bool(str(entry.base) == definition.name and entry.indices[axis] == bound
                    and all(bound not in p.free_symbols for k, p in enumerate(entry.indices) if k != axis))

    return expr.replace(row_of_ones, lambda e: sp.S.One)


def with_constraint(expr: sp.Expr, constraint: Any) -> sp.Expr:
    """expr with every Σ the spec's constraint fixes (Σ_k T[b, k] = 1, Σ_k t_k = 1) written as its value."""
    axis = constraint.summed_axis

    def constrained(e: sp.Expr) -> bool:
        if not (isinstance(e, sp.Sum) and len(e.limits) == 1 and isinstance(e.function, sp.Indexed)):
            return False
        entry, bound = e.function, e.limits[0][0]
        return bool(entry.base == constraint.lhs.function.base and entry.indices[axis] == bound
                    and e.limits[0][1:] == constraint.lhs.limits[0][1:])

    return expr.replace(constrained, lambda e: constraint.rhs)


def normalised_exponential(definition: Definition) -> tuple[sp.Expr, sp.Symbol] | None:
    """For P[…, c] = exp(E_c)/Σ_k exp(E_k): (E, c), the exponent and the index the rows sum over — what
    generated code shifts by its maximum; else None. A masked numerator ([j ≤ i]·exp(S)) gives Masked(E, mask)."""
    free = outputs_sum_to_one(definition)
    if free is None:
        return None
    numerator, _ = sp.fraction(sp.together(definition.expr), exact=True)  # exp(−x) a numerator
    exponentials = [f for f in sp.Mul.make_args(numerator) if isinstance(f, sp.exp)]
    masks = [f for f in sp.Mul.make_args(numerator) if isinstance(f, Bracket)]
    if len(exponentials) != 1 or len(exponentials) + len(masks) != len(sp.Mul.make_args(numerator)):
        return None
    exponent = exponentials[0].args[0]  # a causal mask [j ≤ i]: the exponent is −∞ where it is 0
    return (Masked(exponent, sp.Mul(*masks)) if masks else exponent), free
