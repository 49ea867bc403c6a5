"""The derivation engine: from a parsed spec to checked steps, as tutorials derive by hand.

Vector outputs y_i: the outermost rule (quotient, product, sum, chain), the parts, the cases i = j and
i ≠ j, their Kronecker combination, the matrix form and the vector–Jacobian product. Scalar outputs
(losses): through a vector intermediate by the chain rule with the sum split at k = j, or directly;
then known facts (normalised outputs) and declared constraints. Every step is checked as it is made.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import sympy as sp

from softgrad.budget import DERIVE_SECONDS
from softgrad.budget import time_limit as _time_limit
from softgrad.derive import algebra
from softgrad.derive.check.numeric import StepChecker
from softgrad.derive.matrix import jacobian_matrix, vectorize
from softgrad.derive.prose import prose, words
from softgrad.derive.rules import Rule, depends, differentiate, through
from softgrad.derive.spec import Definition, Spec
from softgrad.derive.steps import Derivation, Result, Section, Step
from softgrad.derive.symbols import Partial, SumExcept, class_sum, fresh_index, fresh_name, index, names_in
from softgrad.errors import SoftgradError, SpecError


@dataclass
class Jacobian:
    """∂y_i/∂x_j for a vector definition: by cases and combined (δ_ij diagonal + off)."""

    definition: Definition
    row: sp.Symbol
    column: sp.Symbol
    equal_case: sp.Expr  # in row only
    distinct_case: sp.Expr  # in row and column
    diagonal: sp.Expr  # P_i with ∂y_i/∂x_j = δ_ij P_i + Q_ij
    kronecker: sp.Expr
    matrix: sp.MatrixExpr | None = None  # diag(P) + Σ u vᵀ, when Q separates

    def at(self, row: sp.Symbol, column: sp.Symbol) -> sp.Expr:
        return self.kronecker.subs({self.row: row, self.column: column}, simultaneous=True)


def default_wrt(spec: Spec) -> tuple[str, str]:
    """The input to differentiate when none is asked for, and why: for a loss, the first input that is not
    target-like (constrained, or entering the loss linearly where another input does not, or, when the
    structure cannot tell, named like targets); otherwise the first input."""
    if len(spec.inputs) == 1:
        return spec.inputs[0], ""
    if spec.output.is_vector:
        return spec.inputs[0], f"the first input (of {', '.join(spec.inputs)})"
    targets = algebra.targets_of_loss(spec, list(spec.inputs))
    chosen = next((name for name in spec.inputs if name not in targets), spec.inputs[0])
    if not targets or chosen in targets:
        return chosen, f"the first input (of {', '.join(spec.inputs)})"
    return chosen, f"{', '.join(targets)} look{'s' if len(targets) == 1 else ''} like targets of the loss"


class Engine:
    def __init__(self, spec: Spec, wrt: str | None = None, seed: int = 0):
        self.spec = spec
        self.wrt, self.wrt_reason = (wrt, "") if wrt else default_wrt(spec)
        if self.wrt not in spec.inputs:
            raise SpecError(f"--wrt {self.wrt!r} is not an input of this spec (inputs: {', '.join(spec.inputs)}"
                            + (f"; parameters: {', '.join(spec.parameters)}" if spec.parameters else "") + ")")
        self.x = sp.IndexedBase(self.wrt)
        self.dependent = self._names_depending_on_wrt()
        if spec.output.name not in self.dependent:
            raise SpecError(f"{spec.output.name} does not depend on {self.wrt}: nothing to differentiate")
        taken = set().union(*(names_in(d.expr) | {d.name} for d in spec.definitions)) | set(spec.inputs)
        self.upstream = sp.IndexedBase(fresh_name(spec.upstream_names, taken))
        self.surrogate = sp.Symbol(fresh_name(("l", "ell", "loss"), taken))
        self.taken = taken
        extra = []
        if spec.output.is_vector:
            bound = fresh_index(taken)
            extra = [
                Definition(
                    str(self.surrogate),
                    None,
                    class_sum(self.upstream[bound] * spec.output.symbol.subs(spec.output.index, bound), bound),
                    "",
                    0,
                )
            ]
        self.checker = StepChecker(spec, None, extra[0] if extra else None, seed, prove=True,
                                   total_derivatives=True)
        # filled in as the derivation proceeds
        self.reductions: list[sp.Expr] = []  # per-row reductions of the VJP
        self.vjp_vector: sp.MatrixExpr | None = None
        self.jacobian_of_intermediate: Jacobian | None = None  # for a loss through a vector

    def _names_depending_on_wrt(self) -> set[str]:
        names = {self.wrt}
        for definition in self.spec.definitions:
            if algebra.depends_on(definition.expr, names):
                names.add(definition.name)
        return names - {self.wrt}

    def result(self, key: str, title: str, lhs: sp.Expr, rhs: sp.Expr, indices: tuple[sp.Symbol, ...],
               note: str = "", upstream: str | None = None) -> Result:
        """A Result with its facts: what it reads (in the spec's order) and its Σs over whole rows."""
        arrays = {str(entry.base) for entry in rhs.atoms(sp.Indexed)}
        scalars = {str(symbol) for symbol in rhs.free_symbols}
        order = [*self.spec.inputs, *(d.name for d in self.spec.definitions), *self.spec.parameters]
        reads = tuple(name for name in dict.fromkeys(order) if name in arrays or name in scalars)
        if upstream is not None and upstream not in reads:
            reads += (upstream,)
        sums = tuple(total for total in sorted(rhs.atoms(sp.Sum), key=sp.default_sort_key)
                     if not set(indices) & total.free_symbols)
        return Result(key, title, lhs, rhs, note, indices, upstream, reads, sums)

    def step(self, section: Section, **fields: Any) -> Step:
        return section.add(self.checker.check(Step(**fields)))

    # ----------------------------------------------------------------- vector outputs
    def jacobian(self, definition: Definition, section: Section) -> Jacobian:
        row = definition.index
        column = fresh_index({str(row)} | self.taken, preferred="jklmpq")
        y_row = definition.symbol
        lhs = Partial(y_row, self.x[column])
        earlier = [
            d for d in self.spec.definitions[: self.spec.definitions.index(definition)] if d.name in self.dependent
        ]
        vectors = [d for d in earlier if d.is_vector]
        named = self.named_intermediates([d for d in earlier if not d.is_vector], vectors, column, section)
        body = algebra.rename_clashing(algebra.inline(definition.expr, vectors), {str(column)})
        forms = [definition.expr] if body == definition.expr else [definition.expr, body]
        self.step(section, rule="definition", lhs=y_row, forms=forms,
                  reason=words("the function, written in the inputs" + (" and its named intermediates" if named
                                                                        else "")))

        with through(named):
            top = differentiate(body, self.x[column])
            placeholders, assembled = self._rule_with_placeholders(body, top, column)
        if placeholders:
            self.step(section, rule=top.name, lhs=lhs, forms=[assembled], reason=top.reason,
                      ordered=top.name == "quotient rule")
            for part, rule in placeholders:
                forms = [rule.result]
                if isinstance(part, sp.Sum):
                    forms = [class_sum(rule.parts[0].result, part.limits[0][0]), rule.result]
                self.step(section, rule=rule.name, lhs=Partial(part, self.x[column]), forms=forms, reason=rule.reason)
            raw = top.result
            self.step(section, rule="substitute the parts", lhs=lhs, forms=[raw],
                      reason=words("the derivatives of the parts, put into the rule"))
        else:
            raw = top.result
            self.step(section, rule=top.name, lhs=lhs, forms=[raw], reason=top.reason)

        equal_raw = raw.subs(column, row)
        equal_case = algebra.back_substitute(equal_raw, self.spec, definition)
        self.step(section, rule=f"case {row} = {column}", lhs=lhs.subs(column, row), forms=[equal_raw, equal_case],
                  equal=(row, column), reason=prose("{delta} = 1; the result written in {y}",
                                                    delta=sp.KroneckerDelta(row, row, evaluate=False),
                                                    y=sp.Symbol(definition.name)))
        distinct_raw = raw.replace(lambda e: isinstance(e, sp.KroneckerDelta), lambda e: sp.S.Zero)
        distinct_case = algebra.back_substitute(distinct_raw, self.spec, definition)
        diagonal_note = ": {y} depends on {x} alone, so the Jacobian is diagonal" if distinct_case == 0 else ""
        self.step(section, rule=f"case {row} ≠ {column}", lhs=lhs, forms=[distinct_raw, distinct_case],
                  distinct=(row, column), reason=prose("{delta} = 0" + diagonal_note, y=definition.symbol,
                                                       delta=sp.KroneckerDelta(row, column), x=self.x[row]))

        diagonal = algebra.tidy(equal_case - distinct_case.subs(column, row))
        delta = sp.KroneckerDelta(row, column)
        combined_raw = delta * diagonal + distinct_case
        kronecker = algebra.tidy(combined_raw)
        forms = [combined_raw] if kronecker == combined_raw else [combined_raw, kronecker]
        self.step(section, rule="Kronecker combination", lhs=lhs, forms=forms,
                  reason=prose("{delta} is 1 if {i} = {j}, else 0: one formula for both cases",
                               delta=sp.KroneckerDelta(row, column), i=row, j=column))
        matrix = jacobian_matrix(diagonal, distinct_case, row, column)
        if matrix is not None:
            self.step(section, rule="matrix form", lhs=lhs, forms=[matrix], matrix_axes=(row, column),
                      reason=prose("entry ({i}, {j}) of the Jacobian matrix J = {jacobian}", i=row, j=column,
                                   jacobian=Partial(sp.Symbol(definition.name), sp.Symbol(self.wrt))))
        return Jacobian(definition, row, column, equal_case, distinct_case, diagonal, kronecker, matrix)

    def named_intermediates(self, scalars: list[Definition], vectors: list[Definition], column: sp.Symbol,
                            section: Section) -> dict[sp.Symbol, sp.Expr]:
        """∂s/∂x_j for each scalar intermediate s (a mean, a variance), simplified with what the spec defines
        (Σ_k (x_k − m) = 0 for a mean m), so that results keep s by name as a textbook does."""
        derivatives: dict[sp.Symbol, sp.Expr] = {}
        for scalar in scalars:
            body = algebra.rename_clashing(algebra.inline(scalar.expr, vectors), {str(column)})
            with through(derivatives):
                rule = differentiate(body, self.x[column])
            simple = algebra.simplify_with_definitions(rule.result, self.spec)
            forms = [rule.result] if simple == rule.result else [rule.result, simple]
            reason = rule.reason
            if simple != rule.result:
                reason += words("; sums the spec defines are replaced by their names, and cancel")
            self.step(section, rule=f"derivative of {scalar.name}", lhs=Partial(scalar.symbol, self.x[column]),
                      forms=forms, reason=reason)
            derivatives[scalar.symbol] = simple
        return derivatives

    def _rule_with_placeholders(self, body: sp.Expr, top: Rule, column: sp.Symbol) -> tuple[list[Any], sp.Expr]:
        """The outermost rule with its parts' derivatives left as ∂(part)/∂x_j, as written by hand."""
        if top.name not in ("quotient rule", "product rule", "sum rule") or isinstance(body, sp.Sum):
            return [], top.result
        var = self.x[column]
        parts = [(rule.expr, rule) for rule in top.parts if rule.name != "constant rule"]
        if top.name == "quotient rule":
            (top_expr, _top_rule), (bottom, _bottom_rule) = parts
            constant = sp.Mul(
                *[f for f in sp.Mul.make_args(body) if not depends(f, var)]
            )
            # built unevaluated, so that it prints in the rule's own order: (N′ D − N D′) / D²
            numerator = sp.Add(sp.Mul(Partial(top_expr, var), bottom, evaluate=False),
                               sp.Mul(-1, top_expr, Partial(bottom, var), evaluate=False), evaluate=False)
            assembled = sp.Mul(numerator, sp.Pow(bottom, -2, evaluate=False), evaluate=False)
            if constant != 1:
                assembled = sp.Mul(constant, assembled, evaluate=False)
        elif top.name == "product rule":
            factors = [p for p, _ in parts]
            constant = body / sp.Mul(*factors)
            assembled = constant * sp.Add(*[
                sp.Mul(*([*factors[:m], Partial(factors[m], var), *factors[m + 1:]])) for m in range(len(factors))])
        else:
            assembled = sp.Add(*[Partial(p, var) for p, _ in parts])
        return parts, assembled

    def vjp(self, jacobian: Jacobian, section: Section) -> sp.Expr:
        definition = jacobian.definition
        out = index(str(jacobian.row))
        bound = fresh_index({str(out)} | self.taken, preferred="jklmpq")
        g, surrogate = self.upstream, self.surrogate
        lhs = Partial(surrogate, self.x[out])
        y_bound = definition.symbol.subs(definition.index, bound)
        chain = class_sum(g[bound] * Partial(y_bound, self.x[out]), bound)
        substituted = class_sum(g[bound] * jacobian.at(bound, out), bound)
        self.step(section, rule="chain rule", lhs=lhs, forms=[chain, substituted],
                  reason=prose("{g} = {derivative} is the upstream gradient; the Jacobian entry in Kronecker form",
                               g=g[bound], derivative=Partial(surrogate, y_bound)))
        sifted = algebra.sift(substituted)
        # small results are also tried written in the spec's names from scratch (L2 normalisation's terms
        # g·x²/Σx² − g·y² cancel only that way); large ones are tidied as they are
        final = algebra.back_substitute(sifted, self.spec) if sp.count_ops(sifted) <= algebra.LARGEST_INLINED_START \
            else algebra.tidy(sifted)
        forms = [sifted] if final == sifted else [sifted, final]
        reductions = sorted((s for s in final.atoms(sp.Sum) if out not in s.free_symbols), key=sp.default_sort_key)
        quadratic = [s for s in final.atoms(sp.Sum) if out in s.free_symbols]
        reason = prose("the Kronecker delta keeps one term of the sum; factors that do not depend on {j} leave it",
                       j=bound)
        if reductions and not quadratic:
            for position, total in enumerate(reductions):
                reason += prose(". {total}" if position == 0 else ", {total}", total=total)
            verb = " does" if len(reductions) == 1 else " do"
            reason += prose(verb + " not depend on {i}: one reduction per row, so the backward pass is O(n)", i=out)
        self.step(section, rule="sift and factor", lhs=lhs, forms=forms, reason=reason)
        vector = vectorize(final, out)
        if vector is not None and vector[0] == "vector":
            self.step(section, rule="vector form", lhs=lhs, forms=[vector[1]], matrix_axes=(out,),
                      reason=words("the same, for the whole vector (∘ is the elementwise product)"))
        self.vjp_vector = vector[1] if vector is not None and vector[0] == "vector" else None
        self.reductions = reductions
        return final

    # ----------------------------------------------------------------- scalar outputs
    def gradient(self, section_factory: Callable[[str], Section]) -> tuple[Step, Step]:
        output = self.spec.output
        loss = output.symbol
        intermediates = [d for d in self.spec.definitions[:-1] if d.name in self.dependent]
        used = [d for d in intermediates if algebra.depends_on(output.expr, {d.name})]
        direct = any(i.base == self.x for i in output.expr.atoms(sp.Indexed))
        if len(used) == 1 and used[0].is_vector and not direct:
            return self._gradient_through(used[0], section_factory)
        section = section_factory(f"Gradient of {output.name}")
        column = fresh_index(self.taken, preferred="jklmpq")
        body = algebra.rename_clashing(algebra.inline(output.expr, intermediates), {str(column)})
        forms = [output.expr] if body == output.expr else [output.expr, body]
        self.step(section, rule="definition", lhs=loss, forms=forms,
                  reason=words("the function, written in the inputs"))
        rule = differentiate(body, self.x[column])
        result = algebra.back_substitute(rule.result, self.spec)
        forms = [rule.result] if result == rule.result else [rule.result, result]
        last = self.step(section, rule=rule.name, lhs=Partial(loss, self.x[column]), forms=forms, reason=rule.reason)
        return self._facts(section, last)

    def _gradient_through(self, intermediate: Definition,
                          section_factory: Callable[[str], Section]) -> tuple[Step, Step]:
        output = self.spec.output
        jacobian = self.jacobian(intermediate, section_factory(f"Jacobian of {intermediate.name}"))
        section = section_factory(f"Gradient of {output.name}")
        loss = output.symbol
        column = index(str(jacobian.column))
        bound = fresh_index({str(column)} | {str(intermediate.index)}, preferred="klmpq")
        self.step(section, rule="definition", lhs=loss, forms=[output.expr],
                  reason=prose("the loss, in terms of {p}", p=sp.Symbol(intermediate.name)))
        u = sp.IndexedBase(intermediate.name)
        body = algebra.rename_clashing(output.expr, {str(bound)})
        outer = differentiate(body, u[bound])
        outer_result = algebra.tidy(outer.result)
        forms = [outer.result] if outer_result == outer.result else [outer.result, outer_result]
        self.step(section, rule=f"differentiate with respect to {intermediate.name}", lhs=Partial(loss, u[bound]),
                  forms=forms, reason=words(f"{outer.name}: ") + outer.reason)

        lhs = Partial(loss, self.x[column])
        chain = class_sum(Partial(loss, u[bound]) * Partial(u[bound], self.x[column]), bound)
        substituted = class_sum(outer_result * jacobian.at(bound, column), bound)
        self.step(section, rule="chain rule", lhs=lhs, forms=[chain, substituted],
                  reason=prose("through every {p}, with the Jacobian in Kronecker form", p=u[bound]))

        at_column = algebra.tidy(outer_result.subs(bound, column) * jacobian.equal_case.subs(jacobian.row, column))
        off = algebra.tidy(outer_result * jacobian.distinct_case.subs({jacobian.row: bound}))
        split = at_column + (SumExcept(off, bound, column) if off != 0 else 0)
        self.step(section, rule=f"split the sum: {bound} = {column} and {bound} ≠ {column}", lhs=lhs,
                  forms=[split], reason=words(f"the term {bound} = {column} uses the case {jacobian.row} = "
                                              f"{jacobian.column}, the others the case "
                                              f"{jacobian.row} ≠ {jacobian.column}"))

        whole = algebra.distribute(algebra.expand_sum_except(split))
        general = algebra.back_substitute(whole, self.spec)
        forms = [whole] if general == whole else [whole, general]
        last = self.step(section, rule="combine", lhs=lhs, forms=forms,
                         reason=words(f"the sum over {bound} ≠ {column} is the whole sum minus the term {bound} = "
                                      f"{column}; collect terms"))
        self.jacobian_of_intermediate = jacobian
        return self._facts(section, last)

    def _facts(self, section: Section, last: Step) -> tuple[sp.Expr, Step]:
        """Structural facts (normalised outputs sum to one), then declared constraints, as steps."""
        result = last.result
        general_step = last
        for definition in self.spec.definitions:
            name = sp.IndexedBase(definition.name)
            simpler = algebra.with_rows_of_ones(result, definition)
            if simpler != result:
                result = algebra.back_substitute(simpler, self.spec)
                last = self.step(
                    section,
                    rule=f"outputs of {definition.name} sum to 1",
                    lhs=last.lhs,
                    forms=[result],
                    reason=prose("{total} = 1 by its definition (a normalised ratio)",
                                 total=class_sum(name[definition.index], definition.index)),
                )
                general_step = last
        for constraint in self.spec.constraints:
            simpler = algebra.with_constraint(result, constraint)
            if simpler != result:
                result = algebra.tidy(simpler)
                last = self.step(
                    section,
                    rule="target constraint",
                    lhs=last.lhs,
                    forms=[result],
                    assumes=(constraint.source.removeprefix("given "),),
                    reason=prose("the targets satisfy the spec's constraint {lhs} = {rhs}", lhs=constraint.lhs,
                                 rhs=constraint.rhs),
                )
        return general_step, last


def derive_spec(spec: Spec, wrt: str | None = None, seed: int = 0,
                time_limit: float | None = DERIVE_SECONDS) -> Derivation:
    """Derive the Jacobian (vector output) or gradient (scalar output) of a spec, every step checked.

    time_limit: seconds before the derivation stops with TimeLimitExceeded (None: no limit)."""
    if seed < 0:
        raise SoftgradError(f"the seed must be 0 or more, not {seed}")
    with _time_limit(time_limit, f"deriving {spec.output.name}"), _rare_collections():
        return _derive(spec, wrt, seed)


@contextlib.contextmanager
def _rare_collections() -> Iterator[None]:
    """The cycle collector run every 50,000 new objects instead of every 700 while deriving: SymPy makes and
    drops millions of small acyclic objects (reference counting frees them), and each young collection walked
    them for nothing — 5% of a two-layer classifier's derivation. The thresholds are put back after."""
    thresholds = gc.get_threshold()
    gc.set_threshold(max(thresholds[0], 50_000), *thresholds[1:])
    try:
        yield
    finally:
        gc.set_threshold(*thresholds)


def _derive(spec: Spec, wrt: str | None, seed: int) -> Derivation:
    scalars = [name.strip() for name in (wrt or "").split(",") if name.strip() in spec.parameters]
    if scalars:  # a learnable scalar (--wrt T): an input without indices, derived with the arrays
        from softgrad.derive.adjoint import derive_adjoint
        from softgrad.derive.spec import with_scalar_inputs

        return derive_adjoint(with_scalar_inputs(spec, scalars), wrt, seed)
    if spec.tensor:
        from softgrad.derive.adjoint import derive_adjoint
        from softgrad.derive.lift import derive_lifted

        lifted = derive_lifted(spec, wrt, seed, derive_adjoint)  # batch and head indices: one block, lifted
        return lifted if lifted is not None else derive_adjoint(spec, wrt, seed)
    if wrt is not None and "," in wrt:  # several gradients at once: the spec with its row index written out
        from softgrad.derive.adjoint import derive_adjoint
        from softgrad.derive.spec import with_rows

        return derive_adjoint(with_rows(spec), wrt, seed)
    engine = Engine(spec, wrt, seed)
    sections: list[Section] = []

    def new_section(title: str) -> Section:
        sections.append(Section(title))
        return sections[-1]

    results: dict[str, Result] = {}
    output = spec.output
    marks = engine.checker.marks
    assert marks is not None  # the checker was made with prove=True
    try:
        if output.is_vector:
            jacobian = engine.jacobian(output, new_section(f"Jacobian of {output.name}"))
            _jacobian_results(results, jacobian, engine)
            vjp = engine.vjp(jacobian, new_section("Vector–Jacobian product (backward pass)"))
            out = jacobian.row
            upstream = str(engine.upstream.label)
            results["vjp"] = engine.result(
                "vjp", "Vector–Jacobian product", Partial(engine.surrogate, engine.x[out]), vjp, (out,),
                f"{upstream} = ∂{engine.surrogate}/∂{output.name}, the upstream gradient", upstream=upstream)
            if engine.vjp_vector is not None:
                results["vjp_vector"] = engine.result("vjp_vector", "Backward pass, vector form",
                                                      Partial(engine.surrogate, engine.x[out]), engine.vjp_vector,
                                                      (out,), upstream=upstream)
        else:
            general, last = engine.gradient(new_section)
            if engine.jacobian_of_intermediate is not None:
                _jacobian_results(results, engine.jacobian_of_intermediate, engine)
            column = (general.lhs.var.indices[0],)  # ∂L/∂x_j: the input entry j
            results["gradient"] = engine.result("gradient", "Gradient (any inputs)", general.lhs, general.result,
                                                column)
            if last is not general:
                results["gradient_constrained"] = engine.result(
                    "gradient_constrained", "Gradient under the constraint", last.lhs, last.result, column,
                    "assuming " + "; ".join(last.assumes))
        marks.finish()
    except NotImplementedError as problem:
        raise SoftgradError(f"cannot derive {output.name}: {problem}") from None
    finally:
        marks.stop()
    derivation = Derivation(spec, engine.wrt, sections, results, engine.reductions, wrt_reason=engine.wrt_reason)
    derivation.check_summary = engine.checker.summary()
    return derivation



def _jacobian_results(results: dict[str, Any], jacobian: Jacobian, engine: Engine) -> None:
    definition = jacobian.definition
    lhs = Partial(definition.symbol, engine.x[jacobian.column])
    both = (jacobian.row, jacobian.column)
    row, column = jacobian.row, jacobian.column
    results["jacobian_equal"] = engine.result("jacobian_equal", f"Jacobian, case {row} = {column}",
                                              lhs.subs(jacobian.column, jacobian.row), jacobian.equal_case,
                                              (jacobian.row,))
    results["jacobian_distinct"] = engine.result("jacobian_distinct", f"Jacobian, case {row} ≠ {column}", lhs,
                                                 jacobian.distinct_case, both)
    results["jacobian"] = engine.result("jacobian", "Jacobian, Kronecker form", lhs, jacobian.kronecker, both)
    if jacobian.matrix is not None:
        results["jacobian_matrix"] = Result("jacobian_matrix", "Jacobian, matrix form", sp.Symbol("J"),
                                            jacobian.matrix)
