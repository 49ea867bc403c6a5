"""Algebra on index-notation expressions that SymPy does not do by itself.

Sifting (Σ_k f(k) δ_kj = f(j)), distributing and factoring sums, inlining definitions, and
back-substitution: rewriting a result in the function's own outputs (exp(x_i)/Σ → y_i) by inverting
each definition structurally. Nothing here knows any catalog entry by name.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Collection

import sympy as sp

from softgrad.derive.spec import Definition, Spec
from softgrad.derive.symbols import SumExcept, class_sum, fresh_index, names_in, sigmoid, softplus


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


def distribute_sums(expr: sp.Expr) -> sp.Expr:
    """Σ(a + b) → Σa + Σb and Σ c·f(k) → c Σ f(k): what is constant in k leaves the sum."""

    def split(total: sp.Sum) -> sp.Expr:
        bound = total.limits[0][0]
        pieces = []
        for term in sp.Add.make_args(expanded(total.function)):
            constant, varying = term.as_independent(bound, as_Add=False)
            pieces.append(constant * (class_sum(varying, bound) if varying != 1 else class_sum(1, bound)))
        return sp.Add(*pieces)

    return expr.replace(lambda e: isinstance(e, sp.Sum), split)


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
    expr = sums_of_constants(distribute_sums(expr))
    for total, value in defined_sums(spec):
        expr = expr.replace(lambda e, total=total: isinstance(e, sp.Sum) and alpha_equal(e, total),
                            lambda e, value=value: value)
    return tidy(sums_of_constants(expr))


def expand_sum_except(expr: sp.Expr) -> sp.Expr:
    """Σ_{k≠j} f(k) → Σ_k f(k) − f(j)."""
    return expr.replace(lambda e: isinstance(e, SumExcept), lambda e: e.as_full_sum())


def rename_bound(expr: sp.Expr, avoid: set[str], reserved: Collection[str] = ()) -> sp.Expr:
    """Rename every summation index that clashes with `avoid`, so inlined text stays readable; the new
    names avoid `reserved` too (the names of definitions, which inlining replaces wherever they are free)."""

    def rename(total: sp.Sum) -> sp.Sum:
        bound = total.limits[0][0]
        if str(bound) not in avoid:
            return total
        new = fresh_index(avoid | set(reserved) | names_in(total), preferred="klmpqrsuvw")
        return class_sum(total.function.subs(bound, new), new)

    return expr.replace(lambda e: isinstance(e, sp.Sum), rename)


def instantiate(definition: Definition, at: sp.Symbol | None, reserved: Collection[str] = ()) -> sp.Expr:
    """A vector definition's right-hand side at index `at` (bound indices renamed away from it, and from
    `reserved`)."""
    if definition.index is None:
        return definition.expr
    body = rename_bound(definition.expr, {str(at)} - {str(definition.index)}, reserved)
    return body.subs(definition.index, at)


def inline(expr: sp.Expr, definitions: list[Definition]) -> sp.Expr:
    """Replace every defined name by its definition, repeatedly, until only inputs remain."""
    by_name = {d.name: d for d in definitions}
    for _ in range(len(definitions) + 1):
        replacements = {}
        for item in expr.atoms(sp.Indexed):
            if str(item.base) in by_name:
                replacements[item] = instantiate(by_name[str(item.base)], item.indices[0], by_name)
        for item in expr.free_symbols:  # a summation index is never a definition's name
            if str(item) in by_name and not by_name[str(item)].is_vector:
                replacements[item] = by_name[str(item)].expr
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
        elif body.is_Pow and not varies(body.exp) and varies(body.base):
            body, target = body.base, target ** (1 / body.exp)
        else:
            break
        if body.is_Symbol or body.is_Number:
            break
        pairs.append((body, target))
    return pairs


def _substitute(expr: sp.Expr, pattern: sp.Expr, value: sp.Expr) -> sp.Expr:
    """expr with pattern replaced by value, matching sums whatever their summation index is called."""
    for pattern_sum in pattern.atoms(sp.Sum):
        for found in expr.atoms(sp.Sum):
            if found != pattern_sum and alpha_equal(found, pattern_sum):
                expr = expr.xreplace({found: pattern_sum})
    return expr.subs(pattern, value)


def alpha_equal(first: sp.Sum, second: sp.Sum) -> bool:
    """Two sums over the class axis that differ only in the name of their index."""
    a, b = first.limits[0][0], second.limits[0][0]
    return bool(first.limits[0][1:] == second.limits[0][1:] and first.function.subs(a, b) == second.function)


def outputs_sum_to_one(definition: Definition) -> bool:
    """y_i = N_i / Σ_k N_k: the outputs are normalised (a structural fact, checked like any step)."""
    if definition.index is None:
        return False
    numerator, denominator = sp.fraction(sp.together(definition.expr))
    if not isinstance(denominator, sp.Sum):
        return False
    bound = denominator.limits[0][0]
    return bool(sp.simplify(denominator.function.subs(bound, definition.index) - numerator) == 0)


#: Beyond this size (SymPy operations) a result is not also tried written wholly in the inputs.
LARGEST_INLINED_START = 80


def back_substitute(expr: sp.Expr, spec: Spec, upto: Definition | None = None) -> sp.Expr:
    """Rewrite expr in the spec's defined names wherever that makes it simpler.

    Entries are replaced at free indices and inside sums; what a sum then has as a constant factor leaves
    it. Where the result still mixes a defined vector with the inputs it is made of, expr is also tried
    written wholly in the inputs, where such terms can cancel (g·x²/Σx² − g·y² = 0 for y = x/√Σx²)."""
    definitions = spec.definitions if upto is None else spec.definitions[: spec.definitions.index(upto) + 1]
    vectors = [d for d in definitions if d.is_vector]
    best = _in_names(tidy(_same_sums(expr)), definitions)
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
    written = tidy(_same_sums(distribute_sums(inline(definition.expr, vectors))))
    return [definition] if written == definition.expr else [definition, dataclasses.replace(definition, expr=written)]


def _same_sums(expr: sp.Expr) -> sp.Expr:
    """Sums that differ only in their index's name written as one (the first met), so that they cancel:
    1 − Σ_l e^(z_l)/Σ_k e^(z_k) is 0."""
    kept: list[sp.Sum] = []
    renamed: dict[sp.Sum, sp.Sum] = {}
    for total in sorted(expr.atoms(sp.Sum), key=sp.default_sort_key):
        same = next((first for first in kept if alpha_equal(total, first)), None)
        if same is None:
            kept.append(total)
        else:
            renamed[total] = same
    return expr.xreplace(renamed) if renamed else expr


def _in_names(start: sp.Expr, definitions: list[Definition]) -> sp.Expr:
    """start rewritten by every inversion of every definition (latest first), each kept where it is lighter."""
    best = start
    for definition in (form for latest in reversed(definitions) for form in _forms(latest, definitions)):
        for pattern, value in inversions(definition):
            # the definition's own sums stay whole (x_k in Σ x_k² is not rewritten as y_k·√Σx²)
            own = [] if pattern.atoms(sp.Sum) else list(definition.expr.atoms(sp.Sum))
            masks = {found: sp.Dummy("sum") for found in best.atoms(sp.Sum)
                     if any(alpha_equal(found, total) for total in own)}
            trial = best.xreplace(masks)
            positions: list[sp.Symbol | None] = [None]
            if definition.index is not None:
                positions = sorted({s for s in trial.free_symbols if s.is_integer and s.name != "n"}
                                   | {total.limits[0][0] for total in trial.atoms(sp.Sum)}, key=str)
            for at in positions:
                if at is None:
                    trial = _substitute(trial, pattern, value)
                else:
                    trial = _substitute(trial, pattern.subs(definition.index, at),
                                        value.subs(definition.index, at))
            trial = trial.xreplace({dummy: total for total, dummy in masks.items()})
            trial = tidy(distribute_sums(trial)) if trial != best else best
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


def affine_in(expr: sp.Expr, name: str) -> bool:
    """Whether expr is affine in the entries of the input `name` (as a loss is in its targets): they are
    reached only through sums and products with at most one factor that reads them."""
    def degree(e: sp.Expr) -> int | None:  # 0: does not read it, 1: affine, None: anything else
        if not any(str(entry.base) == name for entry in e.atoms(sp.Indexed)):
            return 0
        if isinstance(e, sp.Indexed):
            return 1
        if isinstance(e, sp.Sum):
            return degree(e.function)
        if e.is_Add or e.is_Mul:
            degrees = [degree(a) for a in e.args]
            known = [d for d in degrees if d is not None]
            if len(known) < len(degrees):
                return None
            total = max(known) if e.is_Add else sum(known)
            return total if total <= 1 else None
        return None

    return degree(expr) == 1
