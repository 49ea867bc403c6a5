"""Algebra on expressions with several index ranges: sums of several limits, sifting products of Kronecker
deltas, renaming bound indices, and rewriting results in the spec's defined names.

These generalise `algebra` (one class axis) to arrays with any number of indices. A sum carries its
range in its limits (k from 0 to n_c − 1), so renaming or sifting never mixes ranges.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from typing import Any

import sympy as sp

from softgrad.derive.algebra import cost, expanded, inversions, tidy
from softgrad.derive.spec import Definition
from softgrad.derive.symbols import Bracket, Masked, index, names_in


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


def fresh(taken: set[str], preferred: Iterable[str]) -> sp.Symbol:
    for letter in [*preferred, *(f"k{number}" for number in range(1, 999))]:
        if letter not in taken:
            taken.add(letter)
            return index(letter)
    raise ValueError("no fresh index")  # pragma: no cover


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


def substitute(expr: sp.Expr, pattern: sp.Expr, value: sp.Expr) -> sp.Expr:
    """expr with pattern replaced by value, sums matched whatever their indices are called."""
    for pattern_sum in pattern.atoms(sp.Sum):
        for found in expr.atoms(sp.Sum):
            if found != pattern_sum and same_sum(found, pattern_sum):
                expr = expr.xreplace({found: pattern_sum})
    # SymPy's subs does not look inside a sum for what involves its index; the summand is substituted here
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
    if len(definition.indices) < 1:
        return None
    numerator, denominator = sp.fraction(sp.together(definition.expr), exact=True)  # exp(−x) a numerator
    if not isinstance(denominator, sp.Sum) or len(denominator.limits) != 1:
        return None
    bound = denominator.limits[0][0]
    for free in definition.indices:
        if free in denominator.free_symbols:
            continue
        if sp.simplify(denominator.function.xreplace({bound: free}) - numerator) == 0:
            return free
    return None


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
