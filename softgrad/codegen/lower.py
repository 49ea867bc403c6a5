"""derive → lower: turn derived index-form results into per-row kernels.

Definitions are inlined down to the inputs; the stability rewrite shifts exponentiated inputs by their
row maximum wherever the shift cancels (softmax, log-sum-exp, log-softmax) ; every Σ that does not
depend on the output index becomes a reduction computed once per row (this is what makes a VJP O(n));
common subexpressions are shared. Nothing here knows the catalog's names.
"""

from __future__ import annotations

import sympy as sp

from softgrad.derive import algebra
from softgrad.derive.spec import Spec
from softgrad.derive.steps import Derivation
from softgrad.derive.symbols import class_sum
from softgrad.codegen.kernel import COLUMN, LOOP, Kernel, Output, Reduction, guarded_product, softplus
from softgrad.derive.symbols import sigmoid
from softgrad.codegen.names import module_identifier, public_names
from softgrad.errors import SoftgradError

KERNELS = ("forward", "vjp", "vjp_from_output", "jacobian", "loss_and_grad")


def _maximum_symbol(name: str) -> sp.Symbol:
    """The row maximum of an input: in the generated code's own namespace (spec names never start with '_')."""
    return sp.Symbol(f"_max_{name}", real=True)


def stabilize(expr: sp.Expr, spec: Spec) -> tuple[sp.Expr, list[Reduction]]:
    """Shift every exponentiated input by its row maximum where the shift cancels out of exp().

    exp(x_i)/Σ exp(x_k) → exp(x_i − m)/Σ exp(x_k − m);  log Σ exp(x_k) → m + log Σ exp(x_k − m).
    Returns the rewritten expression and the max reductions it needs (none if nothing was rewritten).
    """
    reductions = []
    for name in spec.inputs:
        base = sp.IndexedBase(name)
        if not any(any(i.base == base for i in e.atoms(sp.Indexed)) for e in expr.atoms(sp.exp)):
            continue
        maximum = _maximum_symbol(name)
        shifted_base = sp.IndexedBase(f"shifted_{name}")
        trial = expr.replace(lambda e: isinstance(e, sp.Indexed) and e.base == base,
                             lambda e: shifted_base[e.indices[0]] + maximum)
        trial = trial.replace(lambda e: isinstance(e, sp.exp), lambda e: sp.exp(sp.expand(e.args[0])))
        trial = sp.expand(trial, power_exp=True, mul=False, multinomial=False, log=False, deep=True)
        trial = algebra.distribute_sums(trial)
        trial = sp.expand(trial, power_base=True, power_exp=True, mul=False, multinomial=False, log=False)
        trial = algebra.distribute_sums(sp.expand_log(trial, force=True))
        if any(maximum in e.free_symbols for e in trial.atoms(sp.exp)) or any(
                maximum in e.free_symbols for e in trial.atoms(sp.log)):
            continue  # the shift does not cancel: it would not help
        expr = trial.replace(lambda e: isinstance(e, sp.Indexed) and e.base == shifted_base,
                             lambda e: base[e.indices[0]] - maximum)
        reductions.append(Reduction(maximum, "max", base[LOOP]))
    return expr, reductions


def stable_logs(expr: sp.Expr) -> sp.Expr:
    """log σ(u) = −softplus(−u) and log(1 − σ(u)) = −softplus(u): finite where σ rounds to 0 or 1."""
    expr = expr.replace(lambda e: isinstance(e, sp.log) and isinstance(e.args[0], sigmoid),
                        lambda e: -softplus(-e.args[0].args[0]))
    return expr.replace(
        lambda e: isinstance(e, sp.log) and e.args[0].is_Add and len(e.args[0].args) == 2 and 1 in e.args[0].args
        and isinstance(-(e.args[0] - 1), sigmoid),
        lambda e: -softplus((-(e.args[0] - 1)).args[0]))


def guard_products(expr: sp.Expr, spec: Spec, wrt: str) -> sp.Expr:
    """t·log(…) and t·(x − m) → guarded products, so that t = 0 against a masked class gives 0, not NaN."""
    others = {sp.IndexedBase(name) for name in spec.inputs if name != wrt}

    def can_be_infinite(e: sp.Expr) -> bool:
        """An entrywise log, softplus or shifted input: ±inf for a masked or saturated entry."""
        def has_entry(f: sp.Expr) -> bool:  # an index free in f: it reads one entry, not a whole row
            return any(s.is_integer and s.name != "n" for s in f.free_symbols)

        entrywise = [f for f in e.atoms(sp.log, softplus) if has_entry(f)]
        shifted = any(s.name.startswith("_max_") for s in e.free_symbols) and has_entry(e)
        return bool(entrywise) or shifted

    def guard(e: sp.Mul) -> sp.Expr:
        weights = [f for f in e.args if isinstance(f, sp.Indexed) and f.base in others]
        rest = [f for f in e.args if f not in weights]
        if len(weights) != 1 or not can_be_infinite(sp.Mul(*rest)):
            return e
        return guarded_product(weights[0], sp.Mul(*rest))

    return expr.replace(lambda e: e.is_Mul, guard)


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


def _entry(expr: sp.Expr, spec: Spec, at: sp.Symbol, keep: set[str]) -> sp.Expr:
    """An index-form result at loop index `at`, written in the inputs (names in `keep` stay)."""
    definitions = [d for d in spec.definitions if d.name not in keep]
    return algebra.inline(expr, definitions)


def lower(derivation: Derivation, kernel: str) -> Kernel:
    """The named kernel for a derivation, or a SoftgradError saying why it does not apply."""
    spec = derivation.spec
    wrt = derivation.wrt
    output = spec.output
    results = derivation.results
    others = [name for name in spec.inputs if name != wrt]
    parameters = list(spec.parameters)

    def build(kind, doc, inputs, outputs, keep=frozenset(), upstream=None):
        reductions: list[Reduction] = []
        lowered = []
        for out_name, shape, expr, out_doc in outputs:
            free = {LOOP} if shape == "vector" else ({LOOP, COLUMN} if shape == "matrix" else set())
            expr = _entry(expr, spec, LOOP, set(keep))
            expr, maxima = stabilize(expr, spec) if not keep else (expr, [])
            expr = stable_logs(expr)
            for maximum in maxima:
                if all(r.symbol != maximum.symbol for r in reductions):
                    reductions.append(maximum)
            expr = guard_products(expr, spec, wrt)
            expr = hoist_reductions(expr, reductions, free)
            lowered.append(Output(out_name, shape, expr, out_doc))
        return hygienic(Kernel(f"{identifier(derivation)}_{kind}", kind, doc, inputs, parameters, reductions,
                               lowered, upstream))

    wrt_input = [(wrt, f"the input {wrt}, (rows, n)")]
    other_inputs = [(name, f"the input {name}, (rows, n)") for name in others]
    vector_output = output.is_vector
    row_index = output.index

    def at_loop(expr, *indices):
        mapping = dict(zip(indices, (LOOP, COLUMN)))
        return expr.subs(mapping, simultaneous=True)

    if kernel == "forward":
        if vector_output:
            expr = at_loop(output.symbol, row_index)
            return build("forward", f"{output.name} = the function, row by row",
                         wrt_input + other_inputs, [(output.name, "vector", expr, f"{output.name}, (rows, n)")])
        return build("forward", f"{output.name} per row", wrt_input + other_inputs,
                     [(output.name, "scalar", output.symbol, f"{output.name}, (rows,)")])
    if kernel in ("vjp", "vjp_from_output"):
        if not vector_output:
            raise SoftgradError("vjp applies to vector functions; for a loss use loss_and_grad")
        result = results["vjp"]
        # the upstream gradient is the one vector in the VJP that the spec neither takes nor defines
        upstream = next(name for name in sorted(str(b.label) for b in result.rhs.atoms(sp.IndexedBase))
                        if name not in spec.inputs and spec.definition(name) is None)
        expr = at_loop(result.rhs, row_index)
        doc_out = f"d{wrt} = ∂l/∂{wrt}, (rows, n)"
        if kernel == "vjp":
            return build("vjp", f"backward pass: d{wrt} from {wrt} and the upstream gradient",
                         wrt_input + other_inputs + [(upstream, f"upstream gradient ∂l/∂{output.name}, (rows, n)")],
                         [(f"d{wrt}", "vector", expr, doc_out)], upstream=upstream)
        used = {str(b.label) for b in expr.atoms(sp.IndexedBase)}
        if wrt in used:
            raise SoftgradError(f"the vjp needs {wrt} itself, not only the saved output {output.name}")
        return build("vjp_from_output",
                     f"backward pass from the saved output {output.name} (Caffe style)",
                     [(output.name, f"the saved output {output.name}, (rows, n)"),
                      (upstream, f"upstream gradient ∂l/∂{output.name}, (rows, n)")],
                     [(f"d{wrt}", "vector", expr, doc_out)], keep={output.name}, upstream=upstream)
    if kernel == "jacobian":
        if not vector_output:
            raise SoftgradError("jacobian applies to vector functions; for a loss use loss_and_grad")
        result = results["jacobian"]
        column = next(s for s in result.lhs.free_symbols if s.is_integer and s != row_index)
        expr = at_loop(result.rhs, row_index, column)
        return build("jacobian", "the explicit Jacobian of each row (for small n)",
                     wrt_input + other_inputs, [("J", "matrix", expr, f"J[row, i, j] = ∂{output.name}_i/∂{wrt}_j, (rows, n, n)")])
    if kernel == "loss_and_grad":
        if vector_output:
            raise SoftgradError("loss_and_grad applies to scalar functions (losses)")
        result = results.get("gradient_constrained") or results["gradient"]
        column = next(s for s in result.lhs.free_symbols if s.is_integer)
        gradient = at_loop(result.rhs, column)
        note = f" (assumes {'; '.join(c.source for c in spec.constraints)})" if "gradient_constrained" in results else ""
        return build("loss_and_grad", f"{output.name} per row and its gradient{note}",
                     wrt_input + other_inputs,
                     [(output.name, "scalar", output.symbol, f"{output.name}, (rows,)"),
                      (f"d{wrt}", "vector", gradient, f"∂{output.name}/∂{wrt}, (rows, n)")])
    raise SoftgradError(f"unknown kernel {kernel!r} (known: {', '.join(KERNELS)})")


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
        [Output(renamed_outputs[o.name], o.shape, rename(o.expr), described(o.name, o.doc)) for o in kernel.outputs],
        public.get(kernel.upstream) if kernel.upstream else None, kernel.steps_per_row,
        origin={printed: name for name, printed in [*public.items(), *renamed_outputs.items()]})
