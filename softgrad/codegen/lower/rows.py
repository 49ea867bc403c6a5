"""derive → lower: turn derived index-form results into per-row kernels.

Definitions are inlined down to the inputs; the stability rewrite shifts exponentiated inputs by their
row maximum wherever the shift cancels (softmax, log-sum-exp, log-softmax) ; every Σ that does not
depend on the output index becomes a reduction computed once per row (this is what makes a VJP O(n));
common subexpressions are shared. Nothing here knows the catalog's names.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import sympy as sp

from softgrad.codegen.lower.kernel import COLUMN, LOOP, Kernel, Output, Reduction, guarded_product, softplus
from softgrad.codegen.names import module_identifier, public_names
from softgrad.derive import algebra
from softgrad.derive.spec import Definition, Spec
from softgrad.derive.steps import Derivation
from softgrad.derive.symbols import n, sigmoid
from softgrad.errors import SoftgradError


def _maximum_symbol(name: str) -> sp.Symbol:
    """The row maximum of an input: in the generated code's own namespace (spec names never start with '_')."""
    return sp.Symbol(f"_max_{name}", real=True)


def stabilize(expr: sp.Expr, spec: Spec) -> tuple[sp.Expr, list[Reduction]]:
    """Shift every exponentiated input by its row maximum where the shift cancels out of exp().

    exp(x_i)/Σ exp(x_k) → exp(x_i − m)/Σ exp(x_k − m);  log Σ exp(x_k) → m + log Σ exp(x_k − m).
    Returns the rewritten expression and the max reductions it needs (none if nothing was rewritten).
    """
    reductions = []
    restore: list[tuple[sp.IndexedBase, sp.IndexedBase, sp.Expr]] = []
    for name in spec.inputs:
        base = sp.IndexedBase(name)
        if not any(any(i.base == base for i in e.atoms(sp.Indexed)) for e in expr.atoms(sp.exp)):
            continue
        maximum = _maximum_symbol(name)
        sign = exponent_sign(expr, base)  # exp(−x_i)/Σ exp(−x_k) (softmin) is shifted by max(−x)
        shifted_base = sp.IndexedBase(f"shifted_{name}")
        trial = expr.replace(lambda e: isinstance(e, sp.Indexed) and e.base == base,
                             lambda e: shifted_base[e.indices[0]] + sign * maximum)
        trial = trial.replace(lambda e: isinstance(e, sp.exp), lambda e: sp.exp(sp.expand(e.args[0])))
        trial = sp.expand(trial, power_exp=True, mul=False, multinomial=False, log=False, deep=True)
        trial = algebra.distribute(trial)
        trial = sp.expand(trial, power_base=True, power_exp=True, mul=False, multinomial=False, log=False)
        trial = algebra.distribute(sp.expand_log(trial, force=True))
        # exp(2m) and exp(m)² are one power of E = e^m: written so, they cancel where the expression is
        # scale-free (exp(x_i)²/Σ exp(2x_k)), which SymPy does not see with exponentials of different forms
        scale = sp.Dummy("E", positive=True)
        trial = trial.replace(lambda e: isinstance(e, sp.exp) and (e.args[0] / maximum).is_Integer,
                              lambda e: scale ** (e.args[0] / maximum))
        if trial.has(scale) and _independent_of(trial, scale):  # E·(a/E + b/E): E = 1 gives the same value
            trial = trial.xreplace({scale: sp.S.One})
        if trial.has(scale) or any(maximum in e.free_symbols for e in trial.atoms(sp.exp)) or any(
                maximum in e.free_symbols for e in trial.atoms(sp.log)):
            # exp(x_i) / (1 + Σ exp(x_k)): a row shift that stays, for a row reduction of exponentials only
            # (an entrywise exp(x_i)/(1 + exp(x_i)) is σ's business: a row shift would underflow it)
            row_sums = [total for total in expr.atoms(sp.Sum)
                        if any(power.has(base) for power in total.function.atoms(sp.exp))]
            floored = _floored_shift(expr, base, maximum) if row_sums else None
            if floored is None:
                continue
            expr = floored
        else:
            expr = trial  # shifted entries stay symbols until every input is done: a later expansion would
            restore.append((shifted_base, base, sign * maximum))  # split exp(x − m) and cancel its m again
        reductions.append(Reduction(maximum, "max", sign * base[LOOP]))
    for shifted_base, base, shift in restore:
        expr = expr.replace(lambda e, shifted_base=shifted_base: isinstance(e, sp.Indexed) and e.base == shifted_base,
                            lambda e, base=base, shift=shift: base[e.indices[0]] - shift)
    return expr, reductions


def _independent_of(expr: sp.Expr, symbol: sp.Symbol) -> bool:
    """Whether expr, a rational function of symbol, does not depend on it (its derivative cancels to 0)."""
    try:
        return bool(sp.cancel(sp.together(sp.diff(expr, symbol))) == 0)
    except (sp.PolynomialError, ValueError):
        return False


def without_removable_divisions(expr: sp.Expr, free: set[sp.Symbol]) -> sp.Expr:
    """The expression with divisions by an entry cancelled where they cancel exactly: (1 − p)·p²/(1 − p) is
    0·inf = NaN at p = 1 in floating point, p² after cancelling (focal losses have such terms)."""
    def divisions(e: sp.Expr) -> int:
        return sum(1 for power in e.atoms(sp.Pow) if power.exp.is_negative
                   and any(set(entry.indices) & free for entry in power.base.atoms(sp.Indexed)))

    if not divisions(expr):
        return expr
    try:
        cancelled = sp.cancel(expr)
    except (sp.PolynomialError, ValueError):
        return expr
    if divisions(cancelled) >= divisions(expr):
        return expr
    factored = sp.factor_terms(cancelled)
    return factored if divisions(factored) <= divisions(cancelled) else cancelled


def exponent_coefficients(expr: sp.Expr, base: sp.IndexedBase) -> list[sp.Expr]:
    """The coefficient of each entry of the input in each exponential's argument (−1 in exp(−x_i))."""
    return [sp.expand(power.args[0]).coeff(entry) for power in expr.atoms(sp.exp)
            for entry in power.args[0].atoms(sp.Indexed) if entry.base == base]


def exponent_sign(expr: sp.Expr, base: sp.IndexedBase) -> int:
    """−1 where the input enters every exponential with a negative coefficient (exp(−x)), else 1."""
    coefficients = exponent_coefficients(expr, base)
    return -1 if coefficients and all(c.is_negative for c in coefficients) else 1


def _expand(expr: sp.Expr) -> sp.Expr:
    """Products multiplied out, exponentials left whole: exp(x − M) stays one shifted exponential."""
    return sp.expand(expr, power_exp=False, power_base=False, log=False)


def _floored_shift(expr: sp.Expr, base: sp.IndexedBase, maximum: sp.Symbol) -> sp.Expr | None:
    """The same expression with every exp(u) of the input written E·exp(u − M), M = max(0, max x), and
    E = exp(M) cancelled between numerator and denominator: what is left of E must be negative powers,
    exp(−M) ≤ 1, which cannot overflow (a log(c + E·s) becomes M + log(c·exp(−M) + s)).
    None where E does not cancel that way (the expression is not scale-free in the exponentials)."""
    floor = sp.Max(0, maximum)
    scale = sp.Dummy("E", positive=True)

    def reads(e: sp.Expr) -> bool:
        return any(entry.base == base for entry in e.atoms(sp.Indexed))

    def split(power: sp.Expr) -> sp.Expr:
        """exp(u) = E^c · exp(u − c·M) for u = c·x_k + (what does not read the input), c a positive integer:
        exp(2x_k) must be shifted by 2M to stay ≤ 1 where x_k ≤ M. Any other exp(u) (exp(−x_k): two-sided
        rows) is E · exp(u − M), exact too, and at most e^u where the input is large and positive."""
        argument = sp.expand(power.args[0])
        coefficients = {argument.coeff(entry) for entry in argument.atoms(sp.Indexed) if entry.base == base}
        coefficient = coefficients.pop() if len(coefficients) == 1 else sp.S.One
        if not (coefficient.is_Integer and coefficient > 0):
            coefficient = sp.S.One
        return scale**coefficient * _shifted_exp(argument, coefficient)  # held whole: SymPy would split it

    def logarithm(log: sp.Expr) -> sp.Expr:
        argument = _expand(log.args[0])
        degree = sp.degree(argument, scale) if argument.has(scale) else 0
        # every power of E left in the argument is ≤ 0 now: exp(−k·M) ≤ 1, safe to write out at once
        return degree * floor + sp.log(_expand(argument / scale**degree).xreplace({scale: sp.exp(floor)}))

    try:
        written = expr.replace(lambda e: isinstance(e, sp.exp) and reads(e), split)
        written = algebra.distribute(written)  # E leaves the sums: Σ_k E·exp(x_k − M) = E·Σ_k exp(x_k − M)
        written = written.replace(lambda e: isinstance(e, sp.log) and e.has(scale), logarithm)
        numerator, denominator = sp.fraction(sp.cancel(sp.together(written)))
        top = sp.degree(denominator, scale) if denominator.has(scale) else 0
        if (sp.degree(numerator, scale) if numerator.has(scale) else 0) > top:
            return None
        written = _expand(numerator / scale**top) / _expand(denominator / scale**top)
    except (sp.PolynomialError, ValueError):
        return None
    written = written.xreplace({scale: sp.exp(floor)})
    return written.replace(lambda e: isinstance(e, _shifted_exp), lambda e: sp.exp(e.args[0] - e.args[1] * floor))


class _shifted_exp(sp.Function):
    """exp(u − c·M) for the floored row shift M, kept as one opaque factor (u, c) while E is cancelled."""

    nargs = 2


def _one_plus_exp(e: sp.Expr) -> sp.Expr | None:
    """u where e is 1 + exp(u), else None."""
    if e.is_Add and len(e.args) == 2 and sp.S.One in e.args:
        other = e.args[0] if e.args[1] == 1 else e.args[1]
        if isinstance(other, sp.exp):
            return other.args[0]
    return None


def _ratios_as_sigmoids(product: sp.Expr) -> sp.Expr:
    """exp(u)/(1 + exp(u)) → σ(u) within one product: both sides overflow for large u (inf/inf), σ not."""
    factors = list(sp.Mul.make_args(product))
    changed = False
    for position, factor in enumerate(factors):
        u = _one_plus_exp(factor.base) if factor.is_Pow and factor.exp == -1 else None
        numerator = next((k for k, f in enumerate(factors) if isinstance(f, sp.exp) and f.args[0] == u), None)
        if u is not None and numerator is not None:
            factors[position], factors[numerator] = sigmoid(u), sp.S.One
            changed = True
    return sp.Mul(*factors) if changed else product


def _reciprocal_as_sigmoid(power: sp.Expr) -> sp.Expr:
    """1/(1 + exp(u)) → σ(−u)."""
    u = _one_plus_exp(power.base)
    assert u is not None, "called on 1/(1 + exp(u)) only"
    return sigmoid(-u)


def stable_logs(expr: sp.Expr) -> sp.Expr:
    """Forms that stay finite where the naive ones overflow: log(exp(u)) = u, log(1 + exp(u)) = softplus(u),
    exp(u)/(1 + exp(u)) = σ(u), 1/(1 + exp(u)) = σ(−u); log σ(u) = −softplus(−u) and
    log(1 − σ(u)) = −softplus(u), finite where σ rounds to 0 or 1."""
    expr = expr.replace(lambda e: isinstance(e, sp.log) and isinstance(e.args[0], sp.exp), lambda e: e.args[0].args[0])
    expr = expr.replace(lambda e: isinstance(e, sp.log) and _one_plus_exp(e.args[0]) is not None,
                        lambda e: softplus(_one_plus_exp(e.args[0])))
    expr = expr.replace(lambda e: e.is_Mul, _ratios_as_sigmoids)
    expr = expr.replace(lambda e: e.is_Pow and e.exp == -1 and _one_plus_exp(e.base) is not None,
                        _reciprocal_as_sigmoid)
    expr = expr.replace(lambda e: isinstance(e, sp.log) and isinstance(e.args[0], sigmoid),
                        lambda e: -softplus(-e.args[0].args[0]))
    return expr.replace(
        lambda e: isinstance(e, sp.log) and e.args[0].is_Add and len(e.args[0].args) == 2 and 1 in e.args[0].args
        and isinstance(-(e.args[0] - 1), sigmoid),
        lambda e: -softplus((-(e.args[0] - 1)).args[0]))


def log_sum_parts(expr: sp.Expr) -> tuple[sp.Expr, sp.Sum] | None:
    """(c, Σ_k exp(E)) for log(c + Σ_k exp(E)), c a constant ≥ 0 (0: log Σ exp); else None."""
    if not isinstance(expr, sp.log):
        return None
    terms = sp.Add.make_args(expr.args[0])
    sums = [term for term in terms if isinstance(term, sp.Sum) and isinstance(term.function, sp.exp)]
    offset = sp.Add(*[term for term in terms if term not in sums])
    if len(sums) != 1 or not (offset.is_number and offset.is_nonnegative):
        return None
    return offset, sums[0]


def guard_products(expr: sp.Expr, spec: Spec, wrt: str, shifts: set[sp.Symbol] | frozenset[sp.Symbol] = frozenset()
                   ) -> sp.Expr:
    """t·log(…) and t·(x − m) → guarded products, so that t = 0 against a masked class gives 0, not NaN.
    shifts: the row maxima the stabilization subtracted (the m of x − m)."""
    others = {sp.IndexedBase(name) for name in spec.inputs if name != wrt}

    def can_be_infinite(e: sp.Expr) -> bool:
        """An entrywise log, softplus or shifted input: ±inf for a masked or saturated entry."""
        def has_entry(f: sp.Expr) -> bool:  # an index free in f: it reads one entry, not a whole row
            return any(s.is_integer and s != n for s in f.free_symbols)

        entrywise = [f for f in e.atoms(sp.log, softplus) if has_entry(f)]
        shifted = bool(e.free_symbols & set(shifts)) and has_entry(e)
        return bool(entrywise) or shifted

    def guard(e: sp.Mul) -> sp.Expr:
        weights = [f for f in e.args if isinstance(f, sp.Indexed) and f.base in others]
        rest = [f for f in e.args if f not in weights]
        if len(weights) != 1 or not can_be_infinite(sp.Mul(*rest)):
            return e
        return guarded_product(weights[0], sp.Mul(*rest))

    return expr.replace(lambda e: e.is_Mul, guard)


def guard_weighted_logs(expr: sp.Expr, normalised: set[str], inputs: set[str]) -> sp.Expr:
    """w·log P[…] or w·log q[…] → a guarded product (w an input's entry, P a normalised exponential, q any entry):
    0 where w = 0, so that a class masked by a −inf logit (P = 0) with target 0 adds 0 to a loss, not
    0·(−inf) = NaN, and KL divergence's q·log q is 0 at q = 0 — the convention 0·log 0 = 0 that
    guard_products keeps in the one-row kernels."""
    def guard(product: sp.Mul) -> sp.Expr:
        weights = [f for f in product.args if isinstance(f, sp.Indexed) and str(f.base) in inputs]
        if len(weights) != 1:
            return product
        rest = product / weights[0]
        if not any(isinstance(logarithm.args[0], sp.Indexed) for logarithm in rest.atoms(sp.log)):
            return product  # no log of an entry: nothing −inf where the weight may be 0
        return guarded_product(weights[0], rest)

    return split_logs(expr, normalised).replace(lambda e: e.is_Mul, guard)


def split_logs(expr: sp.Expr, normalised: set[str]) -> sp.Expr:
    """log(q/P) → log q − log P (P a normalised exponential, q one other entry): log P is the log-softmax the
    forward makes, finite where P underflows (KL divergence's q·log(q/p) at a logit far below the others),
    and q·log q is 0·log 0 = 0 once guarded. The same value wherever the quotient's log has one: P > 0."""
    def split(logarithm: sp.log) -> sp.Expr:
        factors = [(f.base, f.exp) if f.is_Pow else (f, sp.Integer(1)) for f in sp.Mul.make_args(logarithm.args[0])]
        if len(factors) < 2 or not all(isinstance(base, sp.Indexed) and power in (1, -1) for base, power in factors):
            return logarithm
        others = [base for base, _ in factors if str(base.base) not in normalised]
        if len(others) > 1 or len(others) == len(factors):
            return logarithm
        return sp.Add(*(power * sp.log(base) for base, power in factors))

    return expr.replace(lambda e: isinstance(e, sp.log), split)


def cancelled_divisions(expr: sp.Expr) -> sp.Expr:
    """(A + B/p)·p·g as A·p·g + B·g, p an array entry: the division by p, which is 0 where a probability
    underflows (focal loss's Σ … t/p · p), never happens."""
    def cancel(product: sp.Expr) -> sp.Expr:
        factors = list(product.args)
        for position, factor in enumerate(factors):
            if not factor.is_Add:
                continue
            divisors = {f.base for term in factor.args for f in sp.Mul.make_args(term)
                        if f.is_Pow and f.exp.is_negative and isinstance(f.base, sp.Indexed)}
            multiplier = next((f for f in factors if f in divisors), None)
            if multiplier is not None:
                rest = [f for k, f in enumerate(factors) if k != position]
                rest.remove(multiplier)
                return sp.Mul(sp.Add(*[term * multiplier for term in factor.args]), *rest)
        return product
    return expr.replace(lambda e: e.is_Mul, cancel)


def stable_array_forms(expr: sp.Expr, spec: Spec, normalised: set[str]) -> sp.Expr:
    """A statement of a spec with several indices in the forms that stay finite: 0·log 0 = 0 for a weighted
    log P (guard_weighted_logs), the log of an elementwise array written out so that stable_logs finds
    log σ(u) = −softplus(−u) and log(1 − σ(u)) = −softplus(u), and no division by an entry it multiplies."""
    expr = guard_weighted_logs(expr, normalised, set(spec.inputs))
    elementwise = {d.name: d for d in spec.definitions if d.is_vector and not d.expr.atoms(sp.Sum)}
    names = {str(s) for s in expr.free_symbols}

    def written_out(logarithm: sp.Expr) -> sp.Expr:
        return logarithm.xreplace({e: algebra.at(elementwise[str(e.base)], e.indices, names)
                                   for e in logarithm.atoms(sp.Indexed) if str(e.base) in elementwise})

    expr = expr.replace(lambda e: isinstance(e, sp.log), written_out)
    return cancelled_divisions(stable_logs(expr))


def hoist_reductions(expr: sp.Expr, reductions: list[Reduction], free: set[sp.Symbol]) -> sp.Expr:
    """Replace each Σ that does not involve the free indices by a per-row reduction (innermost first)."""
    while True:
        innermost = sorted((s for s in expr.atoms(sp.Sum) if not s.function.atoms(sp.Sum)), key=sp.default_sort_key)
        if not innermost:
            return expr
        replacements = {}
        for total in innermost:
            bound = total.limits[0][0]
            if total.free_symbols & free:
                raise SoftgradError(
                    f"Σ_{bound} {sp.sstr(total.function)} depends on the output index: no O(n) kernel")
            body = total.function.subs(bound, LOOP)
            existing = next((r for r in reductions if r.op == "sum" and r.body == body), None)
            if existing is None:
                existing = Reduction(sp.Symbol(f"_sum{len([r for r in reductions if r.op == 'sum'])}", real=True),
                                     "sum", body)
                reductions.append(existing)
            replacements[total] = existing.symbol
        expr = expr.xreplace(replacements)


def merged_powers(expr: sp.Expr) -> sp.Expr:
    """b^e · b^k as b^(e + k) where e is not a number: SymPy writes the derivative of x^g as g·x^g/x,
    which is 0/0 at x = 0 where g·x^(g−1) is 0 (g > 1) or g (g = 1)."""
    def merge(product: sp.Expr) -> sp.Expr:
        groups: dict[sp.Expr, list[sp.Expr]] = {}
        for factor in product.args:
            base, exponent = (factor.base, factor.exp) if factor.is_Pow else (factor, sp.S.One)
            groups.setdefault(base, []).append(exponent)
        if not any(len(exponents) > 1 and any(not e.is_Number for e in exponents) for exponents in groups.values()):
            return product
        return sp.Mul(*[sp.Pow(base, sp.Add(*exponents)) for base, exponents in groups.items()])
    return expr.replace(lambda e: e.is_Mul, merge)


def _entry(expr: sp.Expr, spec: Spec, at: sp.Symbol, keep: set[str]) -> sp.Expr:
    """An index-form result at loop index `at`, written in the inputs (names in `keep` stay)."""
    definitions = [d for d in spec.definitions if d.name not in keep]
    return algebra.inline(expr, definitions)


class _Lowering:
    """What every kernel kind needs of one derivation, and `build`, which lowers its outputs."""

    def __init__(self, derivation: Derivation) -> None:
        self.derivation = derivation
        self.spec = derivation.spec
        self.wrt = derivation.wrt
        self.output = self.spec.output
        self.results = derivation.results
        self.inputs = [(name, f"the input {name}, (rows, n)")
                       for name in [self.wrt, *(n for n in self.spec.inputs if n != self.wrt)]]
        self.gradient, self.jacobian = derivation.output_names  # apart from the spec's names

    def build(self, kind: str, doc: str, inputs: list[tuple[str, str]],
              outputs: list[tuple[str, str, sp.Expr, str, str]],
              keep: frozenset[str] = frozenset(), upstream: str | None = None) -> Kernel:
        """A kernel whose outputs (name, shape, entry expression, doc, role) are written in its inputs, stabilized,
        with every Σ over a whole row made a per-row reduction."""
        spec = self.spec
        reductions: list[Reduction] = []
        lowered = []
        for out_name, shape, expr, out_doc, role in outputs:
            free = {LOOP} if shape == "vector" else ({LOOP, COLUMN} if shape == "matrix" else set())
            expr = without_removable_divisions(expr, free)
            expr = merged_powers(_entry(expr, spec, LOOP, set(keep)))
            expr, maxima = stabilize(expr, spec) if not keep else (expr, [])
            expr = stable_logs(expr)
            for maximum in maxima:
                if all(r.symbol != maximum.symbol for r in reductions):
                    reductions.append(maximum)
            expr = guard_products(expr, spec, self.wrt, {r.symbol for r in reductions if r.op == "max"})
            expr = hoist_reductions(expr, reductions, free)
            lowered.append(Output(out_name, shape, expr, out_doc, role))
        return hygienic(Kernel(f"{identifier(self.derivation)}_{kind}", kind, doc, inputs, list(spec.parameters),
                               reductions, lowered, upstream))


def _at_loop(expr: sp.Expr, *indices: sp.Symbol) -> sp.Expr:
    """A result's indices (in their roles' order) renamed to the kernel's loop indices (i, then j)."""
    return expr.subs(dict(zip(indices, (LOOP, COLUMN))), simultaneous=True)


def _forward(lowering: _Lowering) -> Kernel:
    output = lowering.output
    if output.is_vector:
        return lowering.build("forward", f"{output.name} = the function, row by row", lowering.inputs,
                              [(output.name, "vector", _at_loop(output.symbol, output.index),
                                f"{output.name}, (rows, n)", "value")])
    return lowering.build("forward", f"{output.name} per row", lowering.inputs,
                          [(output.name, "scalar", output.symbol, f"{output.name}, (rows,)", "value")])


def _vjp_parts(lowering: _Lowering) -> tuple[str, sp.Expr, tuple[str, str, sp.Expr, str, str]]:
    if not lowering.output.is_vector:
        raise SoftgradError("vjp applies to vector functions; for a loss use loss_and_grad")
    result = lowering.results["vjp"]
    wrt = lowering.wrt
    expr = _at_loop(result.rhs, *result.indices)
    assert result.upstream is not None, "a VJP result names its upstream gradient"
    gradient = lowering.gradient
    return result.upstream, expr, (gradient, "vector", expr, f"{gradient} = ∂l/∂{wrt}, (rows, n)", "gradient")


def _vjp(lowering: _Lowering) -> Kernel:
    upstream, _, gradient = _vjp_parts(lowering)
    wrt, output = lowering.wrt, lowering.output
    return lowering.build("vjp", f"backward pass: {lowering.gradient} from {wrt} and the upstream gradient",
                          [*lowering.inputs, (upstream, f"upstream gradient ∂l/∂{output.name}, (rows, n)")],
                          [gradient], upstream=upstream)


def _vjp_from_output(lowering: _Lowering) -> Kernel:
    upstream, expr, gradient = _vjp_parts(lowering)
    wrt, output = lowering.wrt, lowering.output
    needs = _entry(expr, lowering.spec, LOOP, {output.name})  # named scalars (a variance) read the input too
    read = {str(b.label) for b in needs.atoms(sp.IndexedBase)}
    if wrt in read:
        raise SoftgradError(f"the vjp needs {wrt} itself, not only the saved output {output.name}")
    others = [(name, doc) for name, doc in lowering.inputs if name != wrt and name in read]  # y = g·x reads x
    return lowering.build("vjp_from_output", f"backward pass from the saved output {output.name} (Caffe style)",
                          [(output.name, f"the saved output {output.name}, (rows, n)"),
                           (upstream, f"upstream gradient ∂l/∂{output.name}, (rows, n)"), *others],
                          [gradient], keep=frozenset({output.name}), upstream=upstream)


def _jacobian(lowering: _Lowering) -> Kernel:
    if not lowering.output.is_vector:
        raise SoftgradError("jacobian applies to vector functions; for a loss use loss_and_grad")
    result = lowering.results["jacobian"]
    expr = _at_loop(result.rhs, *result.indices)  # (output entry, input entry) → (i, j)
    name, wrt = lowering.output.name, lowering.wrt
    return lowering.build("jacobian", "the explicit Jacobian of each row (for small n)", lowering.inputs,
                          [(lowering.jacobian, "matrix", expr,
                            f"{lowering.jacobian}[row, i, j] = ∂{name}_i/∂{wrt}_j, (rows, n, n)", "jacobian")])


def _loss_and_grad(lowering: _Lowering) -> Kernel:
    output, wrt, results = lowering.output, lowering.wrt, lowering.results
    if output.is_vector:
        raise SoftgradError("loss_and_grad applies to scalar functions (losses)")
    result = results.get("gradient_constrained") or results["gradient"]
    constraints = "; ".join(c.source for c in lowering.spec.constraints)
    note = f" (assumes {constraints})" if "gradient_constrained" in results else ""
    return lowering.build("loss_and_grad", f"{output.name} per row and its gradient{note}", lowering.inputs,
                          [(output.name, "scalar", output.symbol, f"{output.name}, (rows,)", "value"),
                           (lowering.gradient, "vector", _at_loop(result.rhs, *result.indices),
                            f"∂{output.name}/∂{wrt}, (rows, n)", "gradient")])


#: The kernel kinds: name → how to lower a derivation into it (a SoftgradError where it does not apply).
KERNEL_KINDS: dict[str, Callable[[_Lowering], Kernel]] = {
    "forward": _forward,
    "vjp": _vjp,
    "vjp_from_output": _vjp_from_output,
    "jacobian": _jacobian,
    "loss_and_grad": _loss_and_grad,
}
KERNELS = tuple(KERNEL_KINDS)


def lower(derivation: Derivation, kernel: str) -> Kernel:
    """The named kernel for a derivation, or a SoftgradError saying why it does not apply."""
    if kernel not in KERNEL_KINDS:
        raise SoftgradError(f"unknown kernel {kernel!r} (known: {', '.join(KERNELS)})")
    return KERNEL_KINDS[kernel](_Lowering(derivation))


def applicable_kernels(derivation: Derivation) -> list[str]:
    if derivation.spec.output.is_vector:
        names = ["forward", "vjp", "jacobian"]
        try:
            lower(derivation, "vjp_from_output")
            names.insert(2, "vjp_from_output")
        except SoftgradError:
            pass
        return names
    return ["forward", "loss_and_grad"]


def identifier(derivation: Derivation) -> str:
    """A C and Python identifier for the spec (its title, or its output's name): see names.module_identifier."""
    return module_identifier(derivation.spec.name or derivation.spec.output.name)


def hygienic(kernel: Kernel) -> Kernel:
    """The kernel with every name as the generated code prints it (see softgrad.codegen.names): public
    names (arguments, outputs) safe in C and Python, row maxima named after their (safe) input."""
    arrays = [name for name, _ in kernel.inputs]
    public = public_names(arrays + kernel.parameters)
    renamed_outputs = public_names([o.name for o in kernel.outputs], taken=public.values())
    replacements: dict[sp.Basic, sp.Basic] = {}
    for name in arrays:
        replacements[sp.IndexedBase(name)] = sp.IndexedBase(public[name])
    for name in kernel.parameters:
        replacements[sp.Symbol(name, positive=True)] = sp.Symbol(public[name], positive=True)
    for reduction in kernel.reductions:
        if reduction.op == "max":
            (entry,) = reduction.body.atoms(sp.Indexed)
            replacements[reduction.symbol] = sp.Symbol(f"_max_{public[str(entry.base)]}", real=True)

    def rename(expr: sp.Expr) -> sp.Expr:
        return expr.xreplace(replacements)

    def described(name: str, doc: str) -> str:
        return doc if public.get(name, renamed_outputs.get(name, name)) == name else f"{doc} (spec name {name})"

    return Kernel(
        kernel.name, kernel.kind, kernel.doc,
        [(public[name], described(name, doc)) for name, doc in kernel.inputs],
        [public[name] for name in kernel.parameters],
        [Reduction(rename(r.symbol), r.op, rename(r.body)) for r in kernel.reductions],
        [Output(renamed_outputs[o.name], o.shape, rename(o.expr), described(o.name, o.doc), o.role)
         for o in kernel.outputs],
        public.get(kernel.upstream) if kernel.upstream else None, kernel.steps_per_row,
        origin={printed: name for name, printed in [*public.items(), *renamed_outputs.items()]})


def _offset_ratios_read_through_logs(definitions: list[Definition], axes: dict[str, tuple[str, ...]],
                                     taken: set[str], added: list[Definition]) -> list[Definition]:
    """P[…, c] = exp(E_c) / (a + Σ_k exp(E_k)), a > 0 a constant (a softmax beside an implicit logit log a), as
    P = exp(E_c − P_lse[…]) with P_lse[…] = log(a + Σ_k exp(E_k)) a definition of its own (appended to `added`,
    its ranges to `axes`): the lowerings shift that log-sum by max(0, max E), so P stays finite where exp(E)
    overflows, and log P is E − P_lse."""
    rewritten = []
    for definition in definitions:
        numerator, denominator = sp.fraction(sp.together(definition.expr), exact=True)
        parts = log_sum_parts(sp.log(denominator, evaluate=False))
        if not isinstance(numerator, sp.exp) or parts is None or parts[0] == 0:
            rewritten.append(definition)
            continue
        bound = parts[1].limits[0][0]
        exponent = parts[1].function.args[0]
        positions = [s for s in definition.indices if exponent.xreplace({bound: s}) == numerator.args[0]]
        if len(parts[1].limits) != 1 or len(positions) != 1 or len(definition.indices) < 2 \
                or definition.name not in axes:  # a row index beside the class one: P_lse is an array
            rewritten.append(definition)
            continue
        free = tuple(s for s in definition.indices if s != positions[0])
        name = next(n for n in (f"{definition.name}_lse", *(f"{definition.name}_lse{k}" for k in range(2, 99)))
                    if n not in taken)
        taken.add(name)
        axes[name] = tuple(r for s, r in zip(definition.indices, axes[definition.name]) if s != positions[0])
        added.append(Definition(name, free[0], sp.log(denominator), "", 0, free))
        rewritten.append(dataclasses.replace(definition, expr=sp.exp(numerator.args[0] - sp.IndexedBase(name)[free])))
    return rewritten


def hoisted_softmax_ratios(derivation: Derivation) -> Derivation:
    """The derivation with every inline ratio exp(E[…, p]) / Σ_k exp(E[…, k]) read through an array of its own,
    E_softmax[…, k] = exp(E[…, k]) / Σ_k' exp(E[…, k']), which the lowerings shift by its row maximum and whose
    log they write as E − logsumexp: a loss written as CLIP's is, −log(exp(S[i, i]) / Σ_k exp(S[i, k])),
    stays finite where exp(S) overflows, and so does its backward array (P − δ)/n. The derivation itself is
    untouched: this is how its formulas are computed."""
    spec, tensor = derivation.spec, derivation.tensor
    taken = {d.name for d in spec.definitions} | set(spec.inputs) | set(spec.parameters) | set(tensor.axes)
    hoisted: dict[sp.Expr, str] = {}  # the ratio, its indices renamed → its array
    added: list[Definition] = []
    axes = dict(tensor.axes)

    def range_of(symbol: sp.Symbol, expr: sp.Expr) -> str | None:
        for entry in expr.atoms(sp.Indexed):
            for axis, position in enumerate(entry.indices):
                if position == symbol and str(entry.base) in axes:
                    return str(axes[str(entry.base)][axis])
        return None

    def ratio(product: sp.Expr) -> sp.Expr:
        numerators = [f for f in product.args if isinstance(f, sp.exp)]
        totals = [f for f in product.args if f.is_Pow and f.exp == -1 and isinstance(f.base, sp.Sum)
                  and len(f.base.limits) == 1 and isinstance(f.base.function, sp.exp)]
        for total in totals:
            bound, low, high = total.base.limits[0]
            exponent = total.base.function.args[0]
            for numerator in numerators:
                at = [e.indices for e in exponent.atoms(sp.Indexed) if bound in e.indices]
                if not at:
                    continue
                axis = list(at[0]).index(bound)
                candidates = {e.indices[axis] for e in numerator.args[0].atoms(sp.Indexed)
                              if len(e.indices) > axis and str(e.base) in {str(x.base) for x in exponent.atoms(
                                  sp.Indexed)}}
                for position in candidates:
                    if exponent.xreplace({bound: position}) != numerator.args[0]:
                        continue
                    free = tuple(sorted(exponent.free_symbols - {bound} - set(spec.sizes.values()) -
                                        {sp.Symbol(p) for p in spec.parameters}, key=lambda s: str(s)))
                    free = tuple(s for s in free if range_of(s, exponent) is not None)
                    # one array per exponent and row range, whatever its indices are called
                    key = (total.base.function / total.base).xreplace(
                        {**{s: sp.Symbol(f"_free{k}") for k, s in enumerate(free)}, bound: sp.Symbol("_bound")})
                    if key not in hoisted:
                        base_name = str(next(iter(exponent.atoms(sp.Indexed))).base)
                        name = next(n for n in (f"{base_name}_softmax", *(f"{base_name}_softmax{k}"
                                                                            for k in range(2, 99))) if n not in taken)
                        taken.add(name)
                        ranges = tuple(range_of(s, exponent) for s in (*free, bound))
                        if any(r is None for r in ranges):
                            continue
                        axes[name] = tuple(str(r) for r in ranges)
                        hoisted[key] = name
                        used = {str(x) for x in exponent.free_symbols}
                        inner = sp.Symbol(next(n for n in ("k", "m", *(f"k{j}" for j in range(1, 99)))
                                               if n not in used), integer=True)
                        body = sp.exp(exponent) / sp.Sum(sp.exp(exponent.xreplace({bound: inner})), (inner, low, high))
                        added.append(Definition(name, free[0] if free else bound, body, "", 0, (*free, bound)))
                    rest = sp.Mul(*[f for f in product.args if f is not numerator and f is not total])
                    return rest * sp.IndexedBase(hoisted[key])[(*free, position)]
        return product

    def rewritten(expr: sp.Expr) -> sp.Expr:
        return expr.replace(lambda e: e.is_Mul, ratio)

    for definition in spec.definitions:  # a normalised exponential the spec names is read, not made again
        found = algebra.normalised_exponential(definition)
        if found is None:
            continue
        _, denominator = sp.fraction(sp.together(definition.expr), exact=True)
        if not isinstance(denominator.function, sp.exp):  # a masked softmax is read by its name only
            continue
        bound = denominator.limits[0][0]
        exponent = denominator.function.args[0]
        free = tuple(sorted(exponent.free_symbols - {bound} - set(spec.sizes.values()), key=lambda s: str(s)))
        if tuple(definition.indices) == (*free, found[1]):
            hoisted[(denominator.function / denominator).xreplace(
                {**{s: sp.Symbol(f"_free{k}") for k, s in enumerate(free)}, bound: sp.Symbol("_bound")})] = \
                definition.name
    normalised = {d.name for d in spec.definitions if algebra.normalised_exponential(d) is not None}
    definitions = [d if d.name in normalised else dataclasses.replace(d, expr=rewritten(d.expr))
                   for d in spec.definitions]
    backward = [dataclasses.replace(d, expr=rewritten(d.expr)) for d in tensor.backward]
    definitions = _offset_ratios_read_through_logs(definitions, axes, taken, added)
    if not added:
        return derivation
    for definition in added:  # before the first definition that reads it (the output stays last)
        readers = [k for k, d in enumerate(definitions) if definition.name in {str(e.base) for e in
                                                                               d.expr.atoms(sp.Indexed)}]
        definitions.insert(min([*readers, len(definitions) - 1]), definition)
    lowered_spec = dataclasses.replace(spec, definitions=definitions, axes={**spec.axes, **{
        d.name: axes[d.name] for d in added}})
    lowered_arrays = dataclasses.replace(tensor, backward=backward, axes=axes)
    return dataclasses.replace(derivation, spec=lowered_spec, tensor=lowered_arrays)
