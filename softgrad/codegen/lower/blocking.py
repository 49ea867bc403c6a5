"""lower → row blocks: run a function a block of rows at a time, so that its n × n work arrays never exist whole.

Attention's S[i, j] and P[i, j] (and dP, dS in the backward) are n × n; every statement reads them at its own
row i, or sums over i into an array without i (dK, dV). Such a function can run for a block of rows of i at a
time: each work array led by i is held for one block only, and each sum over i is accumulated block after
block — extra memory O(rows·n) instead of O(n²), the same results. Indices before i in those arrays (a batch,
heads) are taken one value at a time. The pass reads the statements alone (no names, no catalog): a statement
that needs every row of another (a softmax over i, a sum over i read back inside the blocks, a row read at a
shifted position) rules a blocking out, and then the function runs as written.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import sympy as sp

from softgrad.derive import algebra
from softgrad.derive.spec import Definition


@dataclass(frozen=True)
class RowBlocking:
    """How one function's statements run: `before` once, then `inside` for every value of the fixed ranges and
    every block of rows of the blocked range, then `after` once (statements by their position in the list)."""

    fixed: tuple[str, ...]  # ranges taken one value at a time, outermost first
    blocked: str  # the range taken a block of rows at a time
    before: tuple[int, ...]
    inside: tuple[int, ...]
    accumulated: frozenset[int]  # statements inside that add each block's part of a sum over the blocked rows
    after: tuple[int, ...]
    local: frozenset[str]  # work arrays held for one block: led by the fixed ranges and the blocked one

    @property
    def lead(self) -> tuple[str, ...]:
        return (*self.fixed, self.blocked)


def row_blocking(definitions: list[Definition], axes: dict[str, tuple[str, ...]], sizes: dict[str, sp.Symbol],
                 work: Iterable[str]) -> RowBlocking | None:
    """The blocking of rows that holds the most work arrays for one block (the finest rows among equals), or
    None where no blocking holds a work array with a row of two or more axes."""
    work = set(work) & {definition.name for definition in definitions}  # what these statements write
    candidates = {(shape[:position], shape[position]) for name in work for shape in [axes.get(name, ())]
                  for position in range(len(shape) - 1) if len(set(shape[:position + 1])) == position + 1}
    best: tuple[tuple[int, int], RowBlocking] | None = None
    for fixed, blocked in sorted(candidates):
        plan = _plan(definitions, axes, sizes, work, fixed, blocked)
        if plan is None:
            continue
        score = (sum(len(axes[name]) for name in plan.local), len(fixed))
        if best is None or score > best[0]:
            best = (score, plan)
    return best[1] if best else None


def _lead_sums(expr: sp.Expr, lead: set[sp.Symbol]) -> list[sp.Sum]:
    return [total for total in expr.atoms(sp.Sum) if {limit[0] for limit in total.limits} & lead]


def _linear(expr: sp.Expr, lead: set[sp.Symbol]) -> bool:
    """Whether every sum over a lead index in expr is reached from the top through sums and products with one
    such factor: then the sum over all blocks of expr with its sums cut to one block is expr."""
    if not _lead_sums(expr, lead):
        return True
    if expr.is_Add:
        return all(_linear(term, lead) for term in expr.args)
    if expr.is_Mul:
        touching = [factor for factor in expr.args if _lead_sums(factor, lead)]
        return len(touching) == 1 and _linear(touching[0], lead)
    if isinstance(expr, sp.Sum):
        return _linear(expr.function, lead)
    return False  # a function of a sum over rows (exp, a power): it needs every row at once


def _plan(definitions: list[Definition], axes: dict[str, tuple[str, ...]], sizes: dict[str, sp.Symbol],
          work: set[str], fixed: tuple[str, ...], blocked: str) -> RowBlocking | None:
    lead = (*fixed, blocked)
    local = frozenset(name for name in work if axes.get(name, ())[:len(lead)] == lead)
    if not any(len(axes[name]) > len(lead) for name in local):
        return None
    before: list[int] = []
    inside: list[int] = []
    after: list[int] = []
    accumulated: set[int] = set()
    rows_written: set[str] = set()  # arrays written inside, row by row: readable at the block's own rows
    sums_written: set[str] = set()  # arrays accumulated inside: complete only after the last block
    after_written: set[str] = set()
    for position, definition in enumerate(definitions):
        ranges = algebra.definition_ranges(definition, axes, sizes)
        by_range: dict[str, sp.Symbol] = {}
        for symbol, range_name in ranges.items():
            if range_name in lead:
                if range_name in by_range:
                    return None  # two indices over one lead range: rows of one block against rows of another
                by_range[range_name] = symbol
        reads = {str(entry.base) for entry in definition.expr.atoms(sp.Indexed)} | {
            str(symbol) for symbol in definition.expr.free_symbols}
        for entry in definition.expr.atoms(sp.Indexed):  # what the blocks write is read at the block's rows only
            name = str(entry.base)
            if name in local or name in rows_written:
                for axis, index in enumerate(entry.indices):
                    if axes[name][axis] in lead and index != by_range.get(axes[name][axis]):
                        return None  # a row read at another row (shifted, or by a label), or by no row at all
        if not by_range:  # no lead index: once, before the blocks or after them if it reads what they sum
            if reads & (sums_written | after_written):
                after.append(position)
                after_written.add(definition.name)
            else:
                before.append(position)
            continue
        if reads & (sums_written | after_written):
            return None  # it reads a sum over rows that only the last block completes
        lead_symbols = set(by_range.values())
        free = set(definition.indices)
        summed = {symbol for total in _lead_sums(definition.expr, lead_symbols)
                  for symbol, _, _ in total.limits} & lead_symbols
        if summed:
            if definition.name in local or not _linear(definition.expr, lead_symbols):
                return None
            for term in sp.Add.make_args(definition.expr):
                if not _lead_sums(term, lead_symbols):
                    if algebra.index_symbols(term) & lead_symbols:
                        return None  # a term at one row added to a sum over rows
                    continue
                bound = {symbol for total in _lead_sums(term, lead_symbols) for symbol, _, _ in total.limits}
                if any(by_range.get(r) not in free | bound for r in lead):
                    return None  # each block would add the same part again
            accumulated.add(position)
            sums_written.add(definition.name)
        elif definition.name in local and definition.indices[:len(lead)] != tuple(by_range.get(r) for r in lead):
            return None
        else:
            rows_written.add(definition.name)
        inside.append(position)
    if not inside:
        return None
    return RowBlocking(fixed, blocked, tuple(before), tuple(inside), frozenset(accumulated), tuple(after), local)


def split_sum_over_rows(definition: Definition, axes: dict[str, tuple[str, ...]], sizes: dict[str, sp.Symbol],
                        block: RowBlocking) -> tuple[sp.Expr, sp.Expr]:
    """(the terms of an accumulated definition that sum over the rows, the terms that do not): the blocks add
    the first, block after block, to an array that starts as the second (0 where there are none)."""
    ranges = algebra.definition_ranges(definition, axes, sizes)
    lead = {symbol for symbol, range_name in ranges.items() if range_name in block.lead}
    terms = sp.Add.make_args(definition.expr)
    summed = [term for term in terms if _lead_sums(term, lead)]
    return sp.Add(*summed), sp.Add(*(term for term in terms if term not in summed))


def accumulated_ranges(definitions: list[Definition], axes: dict[str, tuple[str, ...]], block: RowBlocking,
                       one_value_at_a_time: bool) -> list[tuple[str, ...]]:
    """The ranges of every array a block adds its sums over the rows into (the fixed ranges left out where they
    are taken one value at a time, as the C does; NumPy takes them whole): a block should hold at least as many
    work entries as these arrays have, or adding each block into them (dW += a block's dZᵀX) costs more than
    computing the block — softmax regression with 32,000 classes ran 4.5× slower in blocks of 32 rows than with
    whole arrays."""
    return [tuple(r for r in axes.get(definitions[p].name, ()) if not (one_value_at_a_time and r in block.fixed))
            for p in sorted(block.accumulated)]
