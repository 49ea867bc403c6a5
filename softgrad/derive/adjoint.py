"""Derivations for specs with several index ranges (weights, batches, labels, attention): reverse mode
in index notation, every step checked.

For each array X that a requested gradient flows through, last definition first:

    ∂ℓ/∂X[q] = Σ_C Σ_a ∂ℓ/∂C[a] · ∂C[a]/∂X[q]       the chain rule over X's consumers C
             = …                                    ∂C/∂X from C's definition: products of Kronecker deltas
             = …                                    the deltas sifted out of the sums
             = …                                    rewritten in the spec's names (exp(S)/Σexp(S) → P)
             = …                                    row reductions moved through definitions (Σ P dP → Σ dO O)

ℓ is the loss (a scalar output) or Σ dO·O for an array output O with upstream gradient dO. An adjoint
that is a plain entrywise formula is substituted into the next step (as a textbook does with
∂L/∂P = −T/P); one that holds a sum stays a named array (dP, dS), which is also how the code computes
it: once, not per entry that reads it.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from typing import Any

import sympy as sp
from sympy.matrices.expressions import HadamardProduct, OneMatrix

from softgrad.derive import algebra
from softgrad.derive.algebra import cost, expanded
from softgrad.derive.algebra import tidy as _tidy
from softgrad.derive.check.numeric import StepChecker
from softgrad.derive.prose import prose, words
from softgrad.derive.spec import Definition, Spec
from softgrad.derive.steps import Derivation, Result, Section, Step
from softgrad.derive.symbols import Partial, fresh_name, names_in
from softgrad.errors import SoftgradError, SpecError


@dataclass
class Adjoint:
    """∂ℓ/∂X at indices `indices`: a named array (`name`) or an entrywise formula to substitute."""

    array: str
    name: str
    indices: tuple[sp.Symbol, ...]
    expr: sp.Expr
    named: bool
    #: what it was derived under (the targets' constraint): every step that reads it assumes it too
    assumes: tuple[str, ...] = ()

    def entry(self, positions: tuple[sp.Expr, ...]) -> sp.Expr:
        if self.named:
            return sp.IndexedBase(self.name)[positions] if positions else sp.Symbol(self.name)
        return self.expr.xreplace(dict(zip(self.indices, positions)))


@dataclass
class ArrayDerivation:
    """What codegen and verify need beyond the document: the backward arrays in order, and which of them
    is the gradient of each requested input."""

    backward: list[Definition] = field(default_factory=list)
    gradients: dict[str, str] = field(default_factory=dict)  # input → its adjoint array's name
    upstream: str | None = None  # dO for an array output
    axes: dict[str, tuple[str, ...]] = field(default_factory=dict)


def in_names(expr: sp.Expr, spec: Spec, taken: set[str]) -> sp.Expr:
    return tidy(algebra.in_names(expr, spec.definitions, taken))


def tidy(expr: sp.Expr) -> sp.Expr:
    """The most readable form, with the floats calculus makes (1.0·v) written as the rationals they are."""
    return algebra.exact_numbers(_tidy(algebra.exact_numbers(expr)))


def default_inputs(spec: Spec) -> tuple[list[str], str]:
    """Every input a gradient is wanted for, and why: labels never; for a loss, not its targets
    (constrained, or entering it linearly where other inputs do not, or named like targets)."""
    candidates = [name for name in spec.inputs if name not in spec.labels]
    if spec.output.is_vector:
        return candidates, "every input" + (" (labels are class indices)" if spec.labels else "")
    targets = algebra.targets_of_loss(spec, candidates)
    chosen = [name for name in candidates if name not in targets] or candidates
    reason = "every input"
    if targets and set(chosen) != set(candidates):
        reason += f" but {', '.join(targets)}, which look{'s' if len(targets) == 1 else ''} like targets of the loss"
    if spec.labels:
        reason += f"; {', '.join(spec.labels)} {'holds' if len(spec.labels) == 1 else 'hold'} class indices"
    return chosen, reason


def _claim_name(preferred: list[str], taken: set[str]) -> str:
    """A fresh name, added to `taken` so that the next one differs."""
    name = fresh_name(preferred, taken)
    taken.add(name)
    return name


class AdjointEngine:
    def __init__(self, spec: Spec, wrt: str | None, seed: int):
        self.spec = spec
        if wrt:
            self.wrt = [name.strip() for name in wrt.split(",") if name.strip()]
            self.wrt_reason = ""
            for name in self.wrt:
                if name not in spec.inputs:
                    raise SpecError(f"--wrt {name!r} is not an input of this spec (inputs: {', '.join(spec.inputs)}"
                                    + (f"; parameters: {', '.join(spec.parameters)}" if spec.parameters else "") + ")")
                if name in spec.labels:
                    raise SpecError(f"--wrt {name!r}: {name} holds integer class indices, which have no gradient")
        else:
            self.wrt, self.wrt_reason = default_inputs(spec)
        #: the assumptions of the adjoints the current section reads (steps through them assume the same)
        self.assuming: tuple[str, ...] = ()
        self.taken = set(spec.inputs) | set(spec.parameters) | {d.name for d in spec.definitions}
        for definition in spec.definitions:
            self.taken |= names_in(definition.expr) | {str(i) for i in definition.indices}
        self.taken |= set(spec.sizes) | {str(s) for s in spec.sizes.values()}
        self.axes = dict(spec.axes)
        self.scalars = {str(symbol): symbol for d in spec.definitions for symbol in d.expr.free_symbols
                        if str(symbol) in spec.inputs and not spec.axes.get(str(symbol))}
        output = spec.output
        surrogate = None
        self.upstream: str | None = None
        if output.is_vector:
            self.upstream = _claim_name([*spec.array_upstream_names, f"d{output.name}", f"grad_{output.name}", "g"],
                                        self.taken)
            self.axes[self.upstream] = self.axes[output.name]
            loss_name = _claim_name(["l", "ell", "loss"], self.taken)
            taken = set(self.taken)
            positions = tuple(algebra.fresh(taken, [r, *"klmpq"]) for r in self.axes[output.name])
            limits = [(p, 0, spec.sizes[r] - 1) for p, r in zip(positions, self.axes[output.name])]
            surrogate = Definition(loss_name, None, sp.Sum(sp.IndexedBase(self.upstream)[positions]
                                                           * sp.IndexedBase(output.name)[positions],
                                                           *reversed(limits)), "", 0)
            self.loss = sp.Symbol(loss_name)
        else:
            self.loss = sp.Symbol(output.name)
        self.checker = StepChecker(spec, self.axes, surrogate, seed, prove=True)
        self.adjoints: dict[str, Adjoint] = {}
        self.result = ArrayDerivation(upstream=self.upstream)

    def step(self, section: Section, **fields: Any) -> Step:
        """Check and add a step; one that rewrites a result made under an assumption (the targets' constraint)
        keeps that assumption, and is checked where it holds."""
        earlier = [a for s in section.steps if s.lhs == fields["lhs"] for a in s.assumes]
        fields["assumes"] = tuple(dict.fromkeys([*self.assuming, *earlier, *fields.get("assumes", ())]))
        return section.add(self.checker.check(Step(**fields)))

    # ---------------------------------------------------------------- the pass
    def needed(self) -> list[str]:
        """Arrays the gradients flow through, last first: definitions that depend on a requested input."""
        depends = set(self.wrt)
        for definition in self.spec.definitions:
            reads = {str(e.base) for e in definition.expr.atoms(sp.Indexed)} | {str(s) for s in
                                                                                 definition.expr.free_symbols}
            if reads & depends:
                depends.add(definition.name)
        if self.spec.output.name not in depends:
            raise SpecError(f"{self.spec.output.name} does not depend on {', '.join(self.wrt)}: nothing to "
                            "differentiate")
        read = {self.spec.output.name}  # what the output reads, directly or through other definitions
        for definition in reversed(self.spec.definitions):
            if definition.name in read:
                read |= {str(e.base) for e in definition.expr.atoms(sp.Indexed)} | {
                    str(s) for s in definition.expr.free_symbols}
        unread = [name for name in self.wrt if name not in read]
        if unread:
            raise SpecError(f"{self.spec.output.name} does not depend on {', '.join(unread)}: nothing to "
                            f"differentiate (leave {'it' if len(unread) == 1 else 'them'} out of --wrt)")
        return [d.name for d in reversed(self.spec.definitions[:-1]) if d.name in depends and d.name in read] + self.wrt

    def run(self, sections: list[Section], results: dict[str, Result]) -> None:
        output = self.spec.output
        if output.is_vector:
            self.adjoints[output.name] = Adjoint(output.name, str(self.upstream), output.indices,
                                                 sp.IndexedBase(str(self.upstream))[output.indices], True)
        else:
            self.adjoints[output.name] = Adjoint(output.name, "1", (), sp.S.One, False)
        for name in self.needed():
            adjoint, section = self.backward(name)
            adjoint.assumes = tuple(dict.fromkeys(a for step in section.steps for a in step.assumes))
            sections.append(section)
            self.adjoints[name] = adjoint
            if adjoint.named:
                definition = Definition(adjoint.name, adjoint.indices[0] if adjoint.indices else None, adjoint.expr,
                                        "", 0, adjoint.indices)
                self.axes[adjoint.name] = self.axes.get(name, ())
                self.checker.add_backward(definition)
                self.result.backward.append(definition)
            if name in self.wrt:
                self.result.gradients[name] = adjoint.name
                reads = tuple(n for n in dict.fromkeys([*self.spec.inputs, *(d.name for d in self.spec.definitions),
                                                        *(d.name for d in self.result.backward), *self.spec.parameters,
                                                        *([self.upstream] if self.upstream else [])])
                              if n in names_in(adjoint.expr))
                title, note = f"Gradient with respect to {name}", "; ".join(
                    filter(None, [self._note(), "assuming " + "; ".join(adjoint.assumes) if adjoint.assumes else ""]))
                matrix_title = f"{title}, matrix form"
            elif adjoint.named:
                reads = ()
                title = f"Backward array {adjoint.name} = ∂{self.loss}/∂{name}"
                note = "computed once and read by the gradients below"
                matrix_title = f"Backward array {adjoint.name}, matrix form"
            else:
                continue
            lhs = Partial(self.loss, self._entry(name, adjoint.indices))
            results[adjoint.name] = Result(adjoint.name, title, lhs, adjoint.expr, note, adjoint.indices,
                                           self.upstream, reads)
            last = section.steps[-1]
            if last.rule == "matrix form":
                results[f"{adjoint.name}_matrix"] = Result(f"{adjoint.name}_matrix", matrix_title,
                                                           sp.Symbol(adjoint.name), last.result)
        self.result.axes = self.axes
        self._drop_unread(results)

    def _drop_unread(self, results: dict[str, Result]) -> None:
        """Backward arrays that no gradient reads any more (written out into the results) are not computed."""
        needed = set(self.result.gradients.values())
        for definition in reversed(self.result.backward):
            if definition.name in needed:
                needed |= names_in(definition.expr)
        unread = [d.name for d in self.result.backward if d.name not in needed]
        self.result.backward = [d for d in self.result.backward if d.name in needed]
        for name in unread:
            results.pop(name, None)
            results.pop(f"{name}_matrix", None)

    def _note(self) -> str:
        if self.upstream:
            return f"{self.upstream} = ∂{self.loss}/∂{self.spec.output.name}, the upstream gradient"
        return ""

    def _entry(self, name: str, positions: tuple[sp.Expr, ...]) -> sp.Expr:
        if positions:
            return sp.IndexedBase(name)[positions]
        return self.scalars.get(name) or sp.Symbol(name)  # a scalar input keeps its symbol (T, positive)

    def _positions(self, name: str, taken: set[str]) -> tuple[sp.Symbol, ...]:
        return tuple(algebra.fresh(taken, [r, *(f"{r}{n}" for n in range(1, 5)), *"pqrsuvw"])
                     for r in self.axes.get(name, ()))

    def backward(self, name: str) -> tuple[Adjoint, Section]:
        is_input = name in self.spec.inputs
        section = Section(f"Gradient with respect to {name}" if is_input else
                          f"Backward through {name}")
        taken = set(self.taken) - {str(i) for d in self.spec.definitions for i in d.indices} - set(self.spec.sizes)
        q = self._positions(name, taken)
        var = self._entry(name, q)
        lhs = Partial(self.loss, var)
        consumers = [d for d in self.spec.definitions if d.name in self.adjoints and name in names_in(d.expr)]
        self.assuming = tuple(dict.fromkeys(a for c in consumers for a in self.adjoints[c.name].assumes))
        generic, named, raw = [], [], []
        for consumer in consumers:
            a = self._positions(consumer.name, taken)
            limits = [(p, 0, self.spec.sizes[r] - 1) for p, r in zip(a, self.axes.get(consumer.name, ()))]

            def summed(e: sp.Expr, limits: list[Any] = limits) -> sp.Expr:
                return sp.Sum(e, *reversed(limits)) if limits else e

            entry = self._entry(consumer.name, a)
            adjoint = self.adjoints[consumer.name].entry(a)
            body = algebra.at(consumer, a, taken | {str(s) for s in q})
            # The loss reading X itself (weight decay beside the data term): its own term is the derivative of
            # its formula with the arrays it reads held, not ∂ℓ/∂X, which is the whole left-hand side.
            reading = sp.Add(*(t for t in sp.Add.make_args(body) if name in names_in(t)))
            local = Partial(entry, var) if entry != self.loss else Partial(reading, var)
            outer = Partial(self.loss, entry) if entry != self.loss else sp.S.One
            generic.append(summed(outer * local))
            named.append(summed(adjoint * local))
            raw.append(summed(adjoint * algebra.exact_numbers(algebra.derivative(body, var))))
        chain = [sp.Add(*generic)]
        if sp.Add(*named) != chain[0]:
            chain.append(sp.Add(*named))
        who = ", ".join(c.name for c in consumers)
        reason = prose("through every entry of " + who + " that reads {x}", x=var) if len(consumers) == 1 else prose(
            "through every entry of each array that reads {x} (" + who + ")", x=var)
        if self.adjoints[consumers[0].name].named and consumers[0].name != self.spec.output.name:
            reason += words("; " + ", ".join(self.adjoints[c.name].name for c in consumers) + " found above")
        self.step(section, rule="chain rule", lhs=lhs, forms=chain, reason=reason)
        for consumer in consumers:
            self._cases(section, consumer, var, q, taken)

        derivative = sp.Add(*raw)
        self.step(section, rule="differentiate " + who, lhs=lhs, forms=[derivative],
                  reason=words(f"from the definition of {who}: the derivative of one entry of {name} with respect "
                               "to another is a product of Kronecker deltas, 1 where every index coincides, else 0"
                               if q else f"from the definition of {who}, {name} a scalar read by every entry"))
        # edges that always hold (t ≥ 0, t < n_t where t runs over the axis) dropped
        highest = {p: self.spec.derived_sizes.get(r, self.spec.sizes[r]) - 1
                   for p, r in zip(q, self.axes.get(name, ()))}
        sifted = algebra.simplify_brackets(algebra.sift(derivative, bool(self.spec.derived_sizes)), highest)
        sifted = algebra.distribute(sifted)
        current = tidy(sifted)
        self.step(section, rule="sift the deltas", lhs=lhs, forms=[sifted] if current == sifted else [sifted, current],
                  reason=words("a Kronecker delta keeps one term of each sum over its index; what does not depend "
                               "on a summation index leaves that sum"))
        renamed = algebra.in_names(current, self.spec.definitions, taken)
        if renamed != current:
            current = renamed
            self.step(section, rule="in the spec's names", lhs=lhs, forms=[current],
                      reason=words("each definition read backwards (a numerator is its ratio times the "
                                   "denominator), kept where the result gets shorter"))
        current = self._facts(section, lhs, current)
        current = self._through_definitions(section, lhs, current, taken)
        current = self._inline_reductions(section, lhs, current, taken)
        combined = tidy(algebra.combine_sums(current))
        if combined != current and cost(combined) <= cost(current):
            current = combined
            self.step(section, rule="collect", lhs=lhs, forms=[current],
                      reason=words("sums over the same index written as one sum, common factors taken out"))
        matrix = matrix_form(current, q, self.axes, self.spec.sizes)
        if matrix is not None and len(q) == 2:
            self.step(section, rule="matrix form", lhs=lhs, forms=[matrix], matrix_axes=q,
                      reason=prose("entry ({r}, {c}) of the matrix; ᵀ transposes, ∘ multiplies entrywise",
                                   r=q[0], c=q[1]))
        is_named = is_input or bool(current.atoms(sp.Sum))
        adjoint_name = _claim_name([f"d{name}", f"grad_{name}"], self.taken) if is_named else f"∂{self.loss}/∂{name}"
        return Adjoint(name, adjoint_name, q, current, is_named), section

    def _cases(self, section: Section, consumer: Definition, var: sp.Expr, q: tuple[sp.Symbol, ...],
               taken: set[str]) -> None:
        """∂C[a]/∂X[q] by cases, as tutorials derive a softmax's Jacobian: where it is zero unless some indices
        coincide (a delta that multiplies every term), say so and set them equal; then, for an index pair
        whose delta multiplies only some terms, the case of equal indices, the case of distinct ones, and
        their Kronecker combination. Shown only where the distinct case is not zero (a coupling such as
        −P_bc P_bk, not an entrywise function)."""
        local = set(taken) | {str(s) for s in q}
        a = self._positions(consumer.name, local)
        entry = self._entry(consumer.name, a)
        body = algebra.at(consumer, a, local)
        reads = {e for e in body.atoms(sp.Indexed) if e.base == getattr(var, "base", None)}
        if len(reads) <= 1:  # one entry of X read (or a scalar X): every term of ∂C[a]/∂X[q] carries the same
            return  # deltas, so there are no cases to tell apart (not differentiated to find that out)
        derivative = tidy(algebra.sift(algebra.exact_numbers(algebra.derivative(body, var))))
        written = expanded(derivative)
        terms = sp.Add.make_args(written)
        pairs = [d for d in written.atoms(sp.KroneckerDelta) if set(d.args) & set(a) and set(d.args) & set(q)]
        common = [d for d in pairs if all(d in sp.Mul.make_args(t) for t in terms)]
        partial = [d for d in pairs if d not in common and not (set(d.args) & {x for c in common for x in c.args}
                                                               & set(a))]
        if not partial:
            return
        coincide = {next(x for x in d.args if x in a): next(x for x in d.args if x in q) for d in common}
        lhs = Partial(entry.xreplace(coincide), var)
        rest = in_names(tidy(written.xreplace({d: sp.S.One for d in common}).xreplace(coincide)), self.spec, local)
        split = partial[0]
        row, column = next(x for x in split.args if x in a), next(x for x in split.args if x in q)
        if coincide:
            self.step(section, rule=f"the Jacobian of {consumer.name}", lhs=lhs, forms=[rest],
                      reason=prose("from the definition of " + consumer.name + "; it is zero unless " +
                                   ", ".join(f"{k} = {v}" for k, v in coincide.items()) + ", so those indices "
                                   "are set equal"))
        equal = in_names(tidy(rest.xreplace({row: column})), self.spec, local)
        self.step(section, rule=f"case {row} = {column}", lhs=lhs.xreplace({row: column}), forms=[equal],
                  reason=prose("{delta} = 1", delta=sp.KroneckerDelta(column, column, evaluate=False)))
        distinct = in_names(tidy(rest.xreplace({split: sp.S.Zero})), self.spec, local)
        if distinct == 0:
            return
        self.step(section, rule=f"case {row} ≠ {column}", lhs=lhs, forms=[distinct], distinct=(row, column),
                  reason=prose("{delta} = 0", delta=sp.KroneckerDelta(row, column)))
        diagonal = tidy(equal - distinct.xreplace({row: column}))  # what the equal case adds, at row = column
        combined = sp.KroneckerDelta(row, column) * diagonal + distinct
        self.step(section, rule="Kronecker combination", lhs=lhs, forms=[combined, tidy(combined)],
                  reason=prose("{delta} is 1 if {i} = {j}, else 0: one formula for both cases",
                               delta=sp.KroneckerDelta(row, column), i=row, j=column))

    def _facts(self, section: Section, lhs: sp.Expr, expr: sp.Expr) -> sp.Expr:
        """Rows of a normalised definition sum to 1; a declared constraint's sums are its value."""
        for definition in self.spec.definitions:
            simpler = algebra.with_rows_of_ones(expr, definition)
            if simpler != expr:
                expr = tidy(simpler)
                free = algebra.outputs_sum_to_one(definition)
                axis = definition.indices.index(free)
                bound = sp.Symbol("k", integer=True) if "k" not in map(str, definition.indices) else sp.Symbol(
                    "m", integer=True)
                row = sp.Sum(definition.symbol.xreplace({free: bound}),
                             (bound, 0, self.spec.sizes[self.axes[definition.name][axis]] - 1))
                self.step(section, rule=f"rows of {definition.name} sum to 1", lhs=lhs, forms=[expr],
                          reason=prose("{total} = 1 by its definition (a normalised ratio)", total=row))
        for constraint in self.spec.constraints:
            simpler = algebra.with_constraint(expr, constraint)
            if simpler != expr:
                expr = tidy(simpler)
                self.step(section, rule="target constraint", lhs=lhs, forms=[expr],
                          assumes=(constraint.source.removeprefix("given "),),
                          reason=prose("the targets satisfy the spec's constraint {lhs} = {rhs}", lhs=constraint.lhs,
                                       rhs=constraint.rhs))
        return expr

    def _through_definitions(self, section: Section, lhs: sp.Expr, expr: sp.Expr, taken: set[str]) -> sp.Expr:
        """Σ_k A[…k] dB[…k] with dB = Σ_e G·H: swap the sums, and where the inner sum is a forward
        definition (O = Σ_j P V) read it by name — Σ_k P_ik dP_ik = Σ_e dO_ie O_ie, the per-row reduction
        fused attention kernels use: it reads no n×n array."""
        named = {a.name: a for a in self.adjoints.values() if a.named and a.expr.atoms(sp.Sum)}
        for total in sorted(expr.atoms(sp.Sum), key=sp.default_sort_key):
            if len(total.limits) != 1:
                continue
            bound = total.limits[0]
            for factor in sp.Mul.make_args(total.function):
                adjoint = named.get(str(factor.base)) if isinstance(factor, sp.Indexed) else None
                if adjoint is None or not isinstance(adjoint.expr, sp.Sum) or len(adjoint.expr.limits) != 1:
                    continue
                inner = algebra.rename_bound(adjoint.expr, taken | names_in(expr)).xreplace(
                    dict(zip(adjoint.indices, factor.indices)))
                rest = total.function / factor
                double = sp.Sum(rest * inner.function, inner.limits[0], bound)
                found = self._read_as_definition(rest * inner.function, bound)
                if found is None:
                    continue
                outer_factors, definition_entry = found
                swapped = sp.Sum(outer_factors * sp.Sum(
                    sp.Mul(*[f for f in sp.Mul.make_args(rest * inner.function) if bound[0] in f.free_symbols]),
                    bound), inner.limits[0])
                reduced = sp.Sum(outer_factors * definition_entry, inner.limits[0])
                new = expr.xreplace({total: reduced})
                self.step(section, rule=f"the row reduction through {definition_entry.base}", lhs=lhs,
                          forms=[expr.xreplace({total: double}), expr.xreplace({total: swapped}), new],
                          reason=prose("{adjoint} written out and the two sums swapped: the inner sum is the "
                                       "definition of {entry}, so {total} = {reduced} reads only arrays of the "
                                       "forward pass and the upstream gradient, and no row of an n×n array",
                                       adjoint=factor, entry=definition_entry, total=total, reduced=reduced))
                return new
        return expr

    def _inline_reductions(self, section: Section, lhs: sp.Expr, expr: sp.Expr, taken: set[str]) -> sp.Expr:
        """Named backward arrays that are per-row reductions (dm, dv of a normalisation) written out, and the
        result rewritten in the spec's names: kept when that reads shorter than the pieces together, as the
        textbook's (g − mean(g) − x̂·mean(g x̂))/σ is."""
        reductions = {a.name: a for a in self.adjoints.values()
                      if a.named and a.expr.atoms(sp.Sum) and a.array not in self.spec.inputs}
        free = algebra.index_symbols(expr) - algebra.bound_indices(expr)
        # only reductions: arrays with fewer free indices than the result (dm_b in ∂l/∂x_bk), never one of the
        # same shape (dP in dS), which is computed once as it is
        used = [entry for entry in expr.atoms(sp.Indexed) if str(entry.base) in reductions
                and len(set(entry.indices)) < len(free)]
        labels = {base.label for base in expr.atoms(sp.IndexedBase)}
        used += [symbol for symbol in expr.atoms(sp.Symbol) if str(symbol) in reductions and symbol not in labels]
        if not used:
            return expr
        replacements = {}
        for entry in used:
            adjoint = reductions[str(getattr(entry, "base", entry))]
            body = algebra.rename_bound(adjoint.expr, set(taken) | names_in(expr))
            replacements[entry] = body.xreplace(dict(zip(adjoint.indices, getattr(entry, "indices", ()))))
        written = expr.xreplace(replacements)
        candidate = algebra.in_names(tidy(algebra.distribute(written)), self.spec.definitions, taken)
        candidate = tidy(algebra.combine_sums(candidate))
        budget = cost(expr) + sum(cost(reductions[str(getattr(e, "base", e))].expr) for e in used)
        if cost(candidate) >= budget:  # only where the written-out form is shorter than the pieces together
            return expr
        self.step(section, rule="write out the row reductions", lhs=lhs, forms=[written, candidate],
                  reason=words(", ".join(sorted({str(getattr(e, 'base', e)) for e in used})) +
                               " written out; the result in the spec's names"))
        return candidate

    def _read_as_definition(self, product: sp.Expr, inner: tuple[Any, ...]) -> tuple[sp.Expr, sp.Expr] | None:
        """Σ over `inner` of the factors of `product` that read its index, as an entry of a forward definition
        whose body is that sum (up to the names of indices): (the other factors, the entry), or None."""
        bound = inner[0]
        factors = sp.Mul.make_args(product)
        inside = sp.Mul(*[f for f in factors if bound in f.free_symbols])
        outside = sp.Mul(*[f for f in factors if bound not in f.free_symbols])
        candidate = sp.Sum(inside, inner)
        free = sorted(algebra.index_symbols(candidate), key=str)
        for definition in self.spec.definitions:
            if not isinstance(definition.expr, sp.Sum) or len(definition.indices) != len(free):
                continue
            for order in itertools.permutations(free):
                body = algebra.at(definition, tuple(order), set(self.taken) | names_in(candidate))
                if isinstance(body, sp.Sum) and algebra.same_sum(body, candidate):
                    return outside, sp.IndexedBase(definition.name)[tuple(order)]
        return None


def matrix_form(expr: sp.Expr, free: tuple[sp.Symbol, ...], axes: dict[str, tuple[str, ...]],
                sizes: dict[str, sp.Symbol]) -> Any:
    """The matrix reading of a two-index result (A_ij → A, A_ji → Aᵀ, Σ_k A_ik B_kj → AB, entrywise
    products → ∘, a row's reduction → v𝟙ᵀ), or None where it has none."""
    if len(free) != 2:
        return None
    ranges = {index: sizes[name] for index, name in algebra.index_ranges(expr, axes, sizes).items()}
    if not all(s in ranges for s in free):
        return None

    def form(e: sp.Expr, row: sp.Symbol, column: sp.Symbol | None, swap: bool = True) -> Any:
        used = {s for s in (row, column) if s is not None and s in e.free_symbols}
        if not used:
            if not all(isinstance(t, sp.Sum) for t in sp.Mul.make_args(e) if t.atoms(sp.Indexed)):
                return None
            return e  # a scalar
        if isinstance(e, sp.Indexed):
            if len(e.indices) == 2 and tuple(e.indices) == (row, column):
                return sp.MatrixSymbol(str(e.base), ranges[row], ranges[column])
            if len(e.indices) == 2 and tuple(e.indices) == (column, row):
                return sp.MatrixSymbol(str(e.base), ranges[column], ranges[row]).T
            if len(e.indices) == 1 and e.indices[0] == row:
                vector = sp.MatrixSymbol(str(e.base), ranges[row], 1)
                return vector if column is None else vector * OneMatrix(1, ranges[column])
            if len(e.indices) == 1 and column is not None and e.indices[0] == column:
                return OneMatrix(ranges[row], 1) * sp.MatrixSymbol(str(e.base), ranges[column], 1).T
            return None
        if e.is_Add and column is not None and swap:
            swapped = form(e, column, row, swap=False)  # (P − T)ᵀ rather than −Tᵀ + Pᵀ
            if isinstance(swapped, sp.MatrixExpr) and not swapped.atoms(sp.Transpose):
                return sp.Transpose(swapped)
        if e.is_Add:
            pieces = [form(a, row, column, swap=swap) for a in e.args]
            if any(p is None for p in pieces):
                return None
            return sp.MatAdd(*pieces)
        if e.is_Mul:
            scalars = [f for f in e.args if not ({row, column} & f.free_symbols)]
            matrices = [form(f, row, column, swap=swap) for f in e.args if {row, column} & f.free_symbols]
            if any(m is None or not isinstance(m, sp.MatrixExpr) for m in matrices):
                return None
            if any(form(s, row, column, swap=swap) is None for s in scalars):
                return None
            body = matrices[0] if len(matrices) == 1 else HadamardProduct(*matrices)
            coefficient = sp.Mul(*scalars)
            return sp.MatMul(coefficient, body) if coefficient != 1 else body
        if isinstance(e, sp.Sum) and len(e.limits) == 1:
            bound = e.limits[0][0]
            factors = sp.Mul.make_args(e.function)
            with_row = sp.Mul(*[f for f in factors if row in f.free_symbols])
            with_column = sp.Mul(*[f for f in factors if column is not None and column in f.free_symbols])
            rest = sp.Mul(*[f for f in factors if not ({row, column} & f.free_symbols)])
            if rest.free_symbols & {bound}:
                if column is None:
                    left = form(with_row * rest, row, bound, swap=swap)
                    return None if left is None else left * OneMatrix(ranges[bound], 1)
                return None
            left = form(with_row * rest, row, bound, swap=swap)
            if column is None:
                return None if left is None else left * OneMatrix(ranges[bound], 1)
            if with_column == 1:  # a reduction of each row, the same in every column: v 𝟙ᵀ
                if not isinstance(left, sp.MatrixExpr):
                    return None
                return sp.MatMul(left, OneMatrix(ranges[bound], 1), sp.Transpose(OneMatrix(ranges[column], 1)))
            right = form(with_column, bound, column, swap=swap)
            if left is None or right is None or not isinstance(left, sp.MatrixExpr) or not isinstance(
                    right, sp.MatrixExpr):
                return None
            return sp.MatMul(left, right)
        return None

    try:
        result = form(expr, free[0], free[1])
    except (sp.ShapeError, TypeError, ValueError):
        return None
    return result if isinstance(result, sp.MatrixExpr) else None


def derive_adjoint(spec: Spec, wrt: str | None, seed: int) -> Derivation:
    """The reverse-mode derivation of a spec with several index ranges; every step checked."""
    engine = AdjointEngine(spec, wrt, seed)
    sections: list[Section] = []
    results: dict[str, Result] = {}
    try:
        engine.run(sections, results)
        if engine.checker.marks is not None:
            engine.checker.marks.finish()
    except NotImplementedError as problem:
        raise SoftgradError(f"cannot derive {spec.output.name}: {problem}") from None
    finally:
        if engine.checker.marks is not None:
            engine.checker.marks.stop()
    derivation = Derivation(spec, ",".join(engine.wrt), sections, results, [],
                            wrt_reason=engine.wrt_reason)
    derivation.tensor = engine.result
    derivation.check_summary = engine.checker.summary()
    return derivation


__all__ = ["ArrayDerivation", "derive_adjoint", "matrix_form"]
