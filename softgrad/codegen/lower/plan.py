"""derive → lower, for a derivation over named arrays: what each generated function computes, before any language.

One plan serves the NumPy, C, torch and JAX lowerings: the names they print (`printed_names`), the backward's
arrays (`backward_definitions`), which statements forward() and gradients() run and how they are blocked by rows
(`functions`), what forward_saving() keeps for backward() and what backward() recomputes (`saving`), and the
shape checks of the Python modules (`checked_arrays`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import sympy as sp

from softgrad.codegen.lower.blocking import RowBlocking, row_blocking
from softgrad.codegen.lower.rows import merged_powers, stable_array_forms
from softgrad.codegen.names import public_names
from softgrad.derive import algebra
from softgrad.derive.spec import Definition
from softgrad.derive.steps import Derivation


def integer_formula(formula: sp.Expr, names: dict[sp.Symbol, str]) -> str:
    """A size formula as Python integer arithmetic: (n_s + 1)/2 of a stride-2 read as (n_s + 1) // 2 (a size it
    does not divide then fails the check of the sizes against each other)."""
    numerator, denominator = sp.fraction(sp.together(formula))
    printed = str(numerator.xreplace({symbol: sp.Symbol(name) for symbol, name in names.items()}))
    return printed if denominator == 1 else f"({printed}) // {denominator}"


def size_variable(range_name: str) -> str:
    """The name printed code gives a range's size: _n_b."""
    return f"_n_{range_name}"


def shape_of(range_names: Iterable[str]) -> str:
    """A shape tuple of range sizes, as printed code names them: (_n_b,) or (_n_b, _n_i); () for none."""
    sizes = [size_variable(r) for r in range_names]
    return f"({', '.join(sizes)}{',' if len(sizes) == 1 else ''})"


def printed_names(derivation: Derivation) -> dict[str, str]:
    """Every name a tensor module prints (inputs, parameters, forward and backward arrays) made safe in
    C and Python (softgrad.codegen.names)."""
    tensor, spec = derivation.tensor, derivation.spec
    return public_names([*spec.inputs, *spec.parameters, *(d.name for d in spec.definitions),
                         *([tensor.upstream] if tensor.upstream else []), *(d.name for d in tensor.backward)])


def backward_definitions(derivation: Derivation) -> list[Definition]:
    """The derivation's backward arrays, each with a division by an entry removed where writing the spec's
    elementwise arrays out and merging powers removes it: y = x^g differentiates to g·dy·y/x, which is
    0/0 at x = 0, where g·dy·x^(g−1) is 0 (g > 1) or g·dy (g = 1)."""
    elementwise = {d.name: d for d in derivation.spec.definitions if d.is_vector and not d.expr.atoms(sp.Sum)}
    definitions = []
    for definition in derivation.tensor.backward:
        divisors = {p.base for p in definition.expr.atoms(sp.Pow) if p.exp.is_negative and p.base.atoms(sp.Indexed)}
        if divisors:
            written = merged_powers(definition.expr.xreplace({
                e: algebra.at(elementwise[str(e.base)], e.indices, set()) for e in definition.expr.atoms(sp.Indexed)
                if str(e.base) in elementwise}))
            if not any(p.exp.is_negative and p.base in divisors for p in written.atoms(sp.Pow)):
                definition = dataclasses.replace(definition, expr=written)
        definitions.append(definition)
    return definitions


@dataclass
class Functions:
    """What forward() and gradients() compute: each one's statements, the work arrays it may allocate (arrays
    neither input, output nor gradient) and its row blocking (None: whole arrays)."""

    forward: list[Definition]
    forward_work: list[str]
    forward_block: RowBlocking | None
    needed: set[str]  # the forward arrays gradients() computes
    backward: list[Definition]
    gradients: list[Definition]  # the needed forward statements, then the backward ones
    gradients_work: list[str]
    gradients_block: RowBlocking | None

    @property
    def blocked(self) -> bool:
        return self.forward_block is not None or self.gradients_block is not None


def functions(derivation: Derivation, blocked: bool = True) -> Functions:
    """forward() and gradients() of a derivation, each blocked by rows where the statements allow it (and
    blocked is True): what the C and the NumPy lowerings both print."""
    tensor, spec = derivation.tensor, derivation.spec
    output = spec.output
    backward = backward_definitions(derivation)
    needed = forward_needed(derivation, backward)
    gradient_names = set(tensor.gradients.values())
    forward_work = [d.name for d in spec.definitions if d is not output]
    gradients = [d for d in spec.definitions if d.name in needed] + backward
    written = {d.name for d in gradients}  # not a forward array gradients() skips (layer norm's y: 16 MiB)
    gradients_work = [name for name in [*forward_work, *([output.name] if output.is_vector else []),
                                        *(d.name for d in tensor.backward if d.name not in gradient_names)]
                      if name in written]

    def block(definitions: list[Definition], work: list[str]) -> RowBlocking | None:
        return row_blocking(definitions, tensor.axes, spec.sizes, work) if blocked else None

    return Functions(spec.definitions, forward_work, block(spec.definitions, forward_work), needed, backward,
                     gradients, gradients_work, block(gradients, gradients_work))


@dataclass
class Saving:
    """forward_saving() and backward(), the pair of a layer with a cache: the forward writes beside its output
    each array the backward reads that is made by a sum (layer norm's m and v, a softmax P, the log of one: a pass
    or a matrix product to make again), and the backward recomputes from the inputs and those the entrywise arrays
    it reads (x̂: one more operation in a pass it makes anyway), so that nothing the size of an input is kept only
    to save an entrywise operation. (gradients() stays the function that keeps nothing: attention's P is n × n.)"""

    saved: list[str]  # what forward_saving() writes beside the output: arrays of the spec, or `_log_<array>`
    output_read: bool  # whether the backward reads the output (a softmax's y): forward writes it anyway
    inputs_read: list[str]  # the inputs the backward reads, in the spec's order
    forward_work: list[str]
    forward_block: RowBlocking | None
    backward: list[Definition]  # the forward statements recomputed, then the backward ones
    backward_work: list[str]
    backward_block: RowBlocking | None


def saving(derivation: Derivation, plan: Functions, blocked: bool = True) -> Saving:
    """What forward_saving() keeps and backward() recomputes."""
    tensor, spec = derivation.tensor, derivation.spec
    forward = {d.name: d for d in spec.definitions}
    normalised = {d.name for d in spec.definitions if algebra.normalised_exponential(d) is not None}

    def reads(definition: Definition) -> set[str]:
        """The names a statement reads as compiled: `_log_P` where it reads log P of a normalised P (from the
        array P's statement writes beside it), P only where it reads P itself."""
        expr = stable_array_forms(definition.expr, spec, normalised).replace(
            lambda e: isinstance(e, sp.log) and isinstance(e.args[0], sp.Indexed) and str(e.args[0].base) in normalised,
            lambda e: sp.IndexedBase("_log_" + str(e.args[0].base))[e.args[0].indices])
        return {str(e.base) for e in expr.atoms(sp.Indexed)} | {str(s) for s in expr.free_symbols}

    def cheap_to_keep(name: str) -> bool:
        definition = forward[name]
        return definition is spec.output or definition.expr.has(sp.Sum)

    saved: list[str] = []
    recomputed: set[str] = set()
    pending = sorted(set().union(*(reads(d) for d in plan.backward)), reverse=True)
    while pending:
        name = pending.pop()
        array = name.removeprefix("_log_") if name.startswith("_log_") and name[5:] in forward else name
        if array not in forward or name in saved or array in recomputed:
            continue
        if cheap_to_keep(array):
            saved.append(name)
        else:
            recomputed.add(array)
            pending += sorted(reads(forward[array]) - recomputed, reverse=True)
    read = set().union(*(reads(d) for d in [*plan.backward, *(forward[n] for n in recomputed)]))
    output = spec.output.name
    extra = [name for name in [*(d.name for d in spec.definitions), *(f"_log_{d.name}" for d in spec.definitions)]
             if name in saved and name != output]
    forward_work = [d.name for d in spec.definitions if d.name != output and d.name not in saved]
    statements = [d for d in spec.definitions if d.name in recomputed] + plan.backward
    gradient_names = set(tensor.gradients.values())
    backward_work = [*(d.name for d in spec.definitions if d.name in recomputed),
                     *(d.name for d in plan.backward if d.name not in gradient_names)]

    def block(definitions: list[Definition], work: list[str]) -> RowBlocking | None:
        # an array whose log is kept is written whole, as the log beside it is (a block holds both or neither)
        held = [name for name in work if f"_log_{name}" not in saved]
        return row_blocking(definitions, tensor.axes, spec.sizes, held) if blocked else None

    return Saving(extra, output in saved, [name for name in spec.inputs if name in read], forward_work,
                  block(spec.definitions, forward_work), statements, backward_work, block(statements, backward_work))


def forward_needed(derivation: Derivation, backward: list[Definition] | None = None) -> set[str]:
    """The forward arrays gradients() must compute: those its backward statements read (and the loss it
    returns), with what they are made of — not a vector output nobody reads (layer norm's y)."""
    spec = derivation.spec

    def reads(expr: sp.Expr) -> set[str]:
        return {str(e.base) for e in expr.atoms(sp.Indexed)} | {str(s) for s in expr.free_symbols}

    backward = backward_definitions(derivation) if backward is None else backward
    needed = set().union(*(reads(d.expr) for d in backward))
    if not spec.output.is_vector:
        needed.add(spec.output.name)
    for definition in reversed(spec.definitions):
        if definition.name in needed:
            needed |= reads(definition.expr)
    return needed


def divided_sizes(derivation: Derivation) -> list[str]:
    """The ranges whose size the function divides by, in the spec's order: where such a range is empty the
    function has no value, and the generated modules say so instead of returning what an empty sum gives."""
    return algebra.divided_sizes(derivation.spec.definitions, derivation.spec.sizes)


def checked_arrays(derivation: Derivation, printed: dict[str, str]) -> dict[str, Any]:
    """What the shared shape check of the generated modules needs: arrays with their ranges, labels, the sizes
    that follow from others and the ranges that may not be empty."""
    tensor, spec = derivation.tensor, derivation.spec
    names = [*spec.inputs, *([tensor.upstream] if tensor.upstream else [])]
    fixed = sorted({r for n in spec.inputs for r in tensor.axes[n]} | set(spec.labels.values()))
    formulas, _ = spec.size_formulas(fixed)  # from the inputs; an upstream gradient given too must agree

    def code(formula: sp.Expr) -> str:  # n_s − n_k + 1 as sizes["s"] - sizes["k"] + 1
        return integer_formula(formula, {symbol: f"sizes['{name}']" for name, symbol in spec.sizes.items()})

    return {"checked": [(printed[n], tensor.axes[n]) for n in names],
            "labels": {printed[n]: r for n, r in spec.labels.items()},
            "solved_sizes": [(name, code(formula)) for name, formula in formulas],
            "agreed_sizes": [(name, code(formula)) for name, formula in spec.derived_sizes.items()],
            "divided_sizes": divided_sizes(derivation)}


def saved_name(name: str, printed: dict[str, str]) -> str:
    """The printed name of an array forward_saving() keeps: a spec array's, or `_log_` and its array's."""
    return printed[name] if name in printed else "_log_" + printed[name.removeprefix("_log_")]
