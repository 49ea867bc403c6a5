"""Indices that only carry a batch are lifted, not enumerated — as JAX's vmap lifts per-example code.

In multi-head attention, `S[b, h, i, j] = sum(Q[b, h, i, e] * K[b, h, j, e], e) / sqrt(size(e))`, …, every array
has b and h as its first axes, no sum runs over them and nothing reads their sizes: each (b, h) block is the
same function of its own entries. The spec is derived without them (attention's two-index spec: every step
checked and proved) and the derivation is then written with b and h put back into every array — the same
statements, for every b and h. A derivation then costs what the smaller spec costs, however many such
indices there are.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import sympy as sp

from softgrad.derive.prose import Prose
from softgrad.derive.spec import FACTS, Definition, Spec, parse_spec, statement_text
from softgrad.derive.steps import Derivation, Section

__all__ = ["carried_ranges", "derive_lifted"]


def carried_ranges(spec: Spec) -> list[str]:
    """The leading ranges every array has in the same place, read at each definition's own index, crossed by
    no sum and whose size nothing reads (b and h of multi-head attention); [] where there is none, or where
    lifting them would leave a spec of one range (the one-row path handles that)."""
    output = spec.output
    if not spec.axes or spec.constraints or not output.is_vector:
        return []
    arrays = [*spec.inputs, *(d.name for d in spec.definitions)]
    summed = {str(limit[0]) for d in spec.definitions for total in d.expr.atoms(sp.Sum) for limit in total.limits}
    carried: list[str] = []
    for position, range_name in enumerate(spec.axes[output.name]):
        # every array keeps an index of its own (slope[h] of ALiBi would lose its only one)
        if not all(len(spec.axes.get(name, ())) > position + 1 and spec.axes[name][position] == range_name
                   for name in arrays):
            break
        if range_name in spec.labels.values() or any(d.expr.has(spec.sizes[range_name]) for d in spec.definitions):
            break
        if not all(_reads_own_index(d, position) for d in spec.definitions) or any(
                str(d.indices[position]) in summed for d in spec.definitions):
            break
        carried.append(range_name)
    while carried and len(spec.sizes) - len(carried) < 2 and not spec.labels:
        carried.pop()  # a spec of one range is the one-row path's (see spec._one_row)
    return carried


def _reads_own_index(definition: Definition, position: int) -> bool:
    """Whether every array the definition reads has, at `position`, the definition's own index there."""
    own = definition.indices[position]
    outside = definition.expr.xreplace({e: sp.Dummy() for e in definition.expr.atoms(sp.Indexed)})
    return own not in outside.free_symbols and all(  # not a number or a condition ([h <= i], h - i)
        len(entry.indices) > position and entry.indices[position] == own for entry in definition.expr.atoms(sp.Indexed))


def _without(spec: Spec, count: int) -> Spec:
    """The spec with its first `count` indices dropped from every array (one block of the carried ranges)."""
    def block(expr: sp.Expr) -> sp.Expr:
        return expr.xreplace({e: e.base[e.indices[count:]] for e in expr.atoms(sp.Indexed)})

    lines = [statement_text(spec, d.name, d.indices[count:], block(d.expr)) for d in spec.definitions]
    lines += [FACTS[kind].format(name=name) for name, kind in spec.facts.items()]
    return parse_spec("\n".join(lines), spec.name, fold_rows=False)


def derive_lifted(spec: Spec, wrt: str | None, seed: int,
                  derive: Callable[[Spec, str | None, int], Derivation]) -> Derivation | None:
    """The derivation of `spec` as that of one block of its carried ranges, lifted back; None where no range
    is carried (then `spec` is derived as written)."""
    carried = carried_ranges(spec)
    if not carried:
        return None
    reason = ""
    if wrt is None:  # the spec's own default, in its own order (the block's text may list its inputs otherwise)
        from softgrad.derive.adjoint import default_inputs

        chosen, reason = default_inputs(spec)
        wrt = ",".join(chosen)
    block = derive(_without(spec, len(carried)), wrt, seed)
    block.wrt_reason = reason or block.wrt_reason
    return _lift(block, spec, carried)


def _lift(block: Derivation, spec: Spec, carried: list[str]) -> Derivation:
    tensor = block.tensor
    arrays = {*tensor.axes, *(d.name for d in tensor.backward)}
    taken = {str(s) for step in block.steps for s in step.lhs.free_symbols} | {
        str(s) for d in tensor.backward for s in d.expr.free_symbols} | {str(i) for d in tensor.backward
                                                                            for i in d.indices}
    symbols: list[sp.Symbol] = []
    for position, _ in enumerate(carried):
        preferred = str(spec.output.indices[position])
        name = preferred if preferred not in taken else next(
            f"{preferred}{k}" for k in range(1, 99) if f"{preferred}{k}" not in taken)
        taken.add(name)
        symbols.append(sp.Symbol(name, integer=True))
    prefix = tuple(symbols)

    def up(expr: Any) -> Any:
        if not isinstance(expr, sp.Basic) or isinstance(expr, sp.MatrixExpr):
            return expr  # a matrix form is that of one block, as its step says
        mapping: dict[Any, Any] = {e: e.base[(*prefix, *e.indices)] for e in expr.atoms(sp.Indexed)
                                   if str(e.base) in arrays}
        mapping.update({s: sp.IndexedBase(str(s))[prefix] for s in expr.atoms(sp.Symbol)
                        if str(s) in arrays and not tensor.axes.get(str(s))})
        return expr.xreplace(mapping) if mapping else expr

    sections = []
    for section in block.sections:
        copy = Section(section.title)
        for step in section.steps:
            reason = Prose(tuple(up(piece) for piece in step.reason.pieces))
            if step.rule == "chain rule":  # why the sum leaves out the carried indices
                reason = reason + f" (no entry of another ({', '.join(map(str, prefix))}) block reads it)"
            copy.steps.append(dataclasses.replace(step, lhs=up(step.lhs), forms=[up(form) for form in step.forms],
                                                    reason=reason))
        sections.append(copy)
    results = {key: dataclasses.replace(result, lhs=up(result.lhs), rhs=up(result.rhs),
                                        indices=(*prefix, *result.indices) if result.indices else result.indices,
                                        reductions=tuple(up(r) for r in result.reductions))
               for key, result in block.results.items()}
    tensor.backward = [Definition(d.name, prefix[0], up(d.expr), d.source, d.line, (*prefix, *d.indices))
                       for d in tensor.backward]
    tensor.axes = {name: (*carried, *axes) for name, axes in tensor.axes.items()}
    said = " and ".join(map(str, prefix))
    summary = (f"{block.check_summary}; {said} {'is' if len(prefix) == 1 else 'are'} carried by every array and "
               f"crossed by no sum, so one ({', '.join(map(str, prefix))}) block is derived, proved and checked, "
               f"and it holds for every {said} (as vmap lifts per-example code)")
    return Derivation(spec, block.wrt, sections, results, [up(r) for r in block.reductions], summary,
                      block.wrt_reason, tensor, block.order)
