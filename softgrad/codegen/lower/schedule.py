"""lower → schedule: the loops of one kernel row, with the work each does, before any printing.

Two rewrites make a kernel cheap without changing what it computes:
- an expensive per-entry value that a reduction loop already computes (exp(x_i − m) for softmax) is
  stored into the output during that loop, and the output loop reads it back instead of recomputing;
- every part of a loop body that does not change along the row (1/Σ, m + log Σ) is computed once per
  row, before the loop.
Both emitters (C and NumPy) print this schedule; neither knows which spec it came from.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import sympy as sp

from softgrad.codegen.lower.kernel import COLUMN, LOOP, Kernel, Reduction, power_from, power_of, softplus
from softgrad.derive.symbols import sigmoid

EXPENSIVE = (sp.exp, sp.log, sigmoid, softplus, sp.Pow)


@dataclass
class Loop:
    """One pass over the entries of a row.

    before: per-row values computed ahead of the loop (symbol, expression);
    temporaries: common subexpressions per entry; reductions: (symbol, 'sum' | 'max', body);
    stores: (output array, entry expression) written at each entry.
    """

    before: list[tuple[sp.Symbol, sp.Expr]] = field(default_factory=list)
    temporaries: list[tuple[sp.Symbol, sp.Expr]] = field(default_factory=list)
    reductions: list[tuple[sp.Symbol, str, sp.Expr]] = field(default_factory=list)
    stores: list[tuple[str, sp.Expr]] = field(default_factory=list)


@dataclass
class Schedule:
    """Reduction loops, then the row's scalar outputs, then the output loop (None without vector outputs)."""

    kernel: Kernel
    reduction_loops: list[Loop]
    scalar_temporaries: list[tuple[sp.Symbol, sp.Expr]]
    scalar_outputs: list[tuple[str, sp.Expr]]
    output_loop: Loop | None
    stash: str | None  # the output array that holds a reduction loop's per-entry value until the output loop


def _varies(expr: sp.Expr) -> bool:
    """True when the expression changes along the row (reads an entry or the loop indices)."""
    return bool(expr.atoms(sp.Indexed)) or bool(expr.free_symbols & {LOOP, COLUMN})


def _worth_hoisting(expr: sp.Expr) -> bool:
    """Per-row values that cost something to recompute; −m or 2·s are left to the compiler."""
    if expr.is_Atom:
        return False
    if expr.is_Mul and len(expr.args) == 2 and expr.args[0].is_Number and expr.args[1].is_Atom:
        return False
    return True


class _Hoister:
    """Replaces maximal row-invariant parts of loop bodies by named per-row values."""

    def __init__(self, names: Iterator[sp.Symbol]) -> None:
        self.names = names
        self.assignments: list[tuple[sp.Symbol, sp.Expr]] = []

    def name_for(self, expr: sp.Expr) -> sp.Symbol:
        for symbol, existing in self.assignments:
            if existing == expr:
                return symbol
        symbol = next(self.names)
        self.assignments.append((symbol, expr))
        return symbol

    def __call__(self, expr: sp.Expr) -> sp.Expr:
        if expr.is_Atom or isinstance(expr, sp.Indexed):
            return expr
        if not _varies(expr):
            return self.name_for(expr) if _worth_hoisting(expr) else expr
        if expr.is_Add or expr.is_Mul:
            invariant = [a for a in expr.args if not _varies(a)]
            varying = [self(a) for a in expr.args if _varies(a)]
            group = expr.func(*invariant) if invariant else None
            if group is not None and _worth_hoisting(group):
                group = self.name_for(group)
            return expr.func(*varying, *([group] if group is not None else []))
        return expr.func(*[self(a) for a in expr.args])


def _stash(kernel: Kernel, levels: list[list[Reduction]]) -> tuple[int, sp.Expr, str] | None:
    """(level, value, output) when the vector output recomputes an expensive value a reduction loop has."""
    vectors = [o for o in kernel.outputs if o.shape == "vector"]
    if len(vectors) != 1 or kernel.explicit_jacobian or not levels:
        return None
    output = vectors[0]
    candidates = [e for e in output.expr.atoms(*EXPENSIVE) if _varies(e) and not
                  (isinstance(e, sp.Pow) and e.exp.is_Integer and abs(e.exp) <= 4)]
    best = None
    for candidate in sorted(candidates, key=sp.default_sort_key):
        for number, group in reversed(list(enumerate(levels))):
            if any(r.body.has(candidate) for r in group):
                cost = sp.count_ops(candidate)
                if best is None or cost > best[0]:
                    best = (cost, number, candidate)
                break
    if best is None:
        return None
    return best[1], best[2], output.name


def shared_exponentials(expressions: list[sp.Expr]) -> list[sp.Expr]:
    """exp(k·u) as exp(u)^k where a pass also computes exp(u) (k = 2, 3, 4, −1, −2): one exponential per
    entry instead of two (focal loss's p², Σ p²). exp(u)^k is within a few ulp of exp(k·u), and they
    overflow and underflow together up to the subnormal range."""
    exponentials = sorted({e for x in expressions for e in x.atoms(sp.exp) if _varies(e)},
                          key=lambda e: (sp.count_ops(e), sp.default_sort_key(e)))
    replacements: dict[sp.Expr, sp.Expr] = {}
    for candidate in exponentials:
        for base in exponentials:
            if base is candidate or base in replacements or not base.args[0].free_symbols:
                continue
            ratio = sp.cancel(candidate.args[0] / base.args[0])
            if ratio.is_Integer and ratio in (2, 3, 4, -1, -2):
                replacements[candidate] = power_of(base, ratio)
                break
    return [x.xreplace(replacements) for x in expressions] if replacements else expressions


def shared_powers(expressions: list[sp.Expr]) -> list[sp.Expr]:
    """b^(e + k) from b^e where a pass computes both, for a row-invariant exponent e and k = ±1, ±2 (focal
    loss's (1 − p)^γ and (1 − p)^(γ−1)): one pow per entry instead of two. Where b = 0, b^e may be
    infinite, so the power there is 0^(e + k), a per-row value."""
    powers = sorted({p for x in expressions for p in x.atoms(sp.Pow)
                     if _varies(p.base) and not _varies(p.exp) and not p.exp.is_Number}, key=sp.default_sort_key)
    replacements: dict[sp.Expr, sp.Expr] = {}
    kept: set[sp.Expr] = set()  # powers others are computed from: not themselves replaced
    for power in powers:
        for source in powers:
            if source is power or source.base != power.base or source in replacements or power in kept:
                continue
            steps = sp.expand(power.exp - source.exp)
            if steps.is_Integer and steps != 0 and abs(steps) <= 2:
                replacements[power] = power_from(power.base, source, steps, sp.Pow(0, power.exp, evaluate=False))
                kept.add(source)
                break
    return [x.xreplace(replacements) for x in expressions] if replacements else expressions


def _common_subexpressions(expressions: list[sp.Expr], prefix: str) -> tuple[list[Any], list[sp.Expr]]:
    if not expressions:
        return [], []
    replacements, reduced = sp.cse(expressions, symbols=sp.numbered_symbols(prefix, real=True), order="canonical")
    return replacements, reduced


def schedule(kernel: Kernel, materialize_sums: bool = False, share_exponentials: bool = False) -> Schedule:
    """The loops of a kernel. materialize_sums: also give every Σ read inside a loop a per-row copy
    (a float32 C kernel accumulates in double but computes entries in float). share_exponentials: compute
    exp(k·u) from exp(u) (see shared_exponentials; the printer must know power_of)."""
    share = (lambda expressions: shared_powers(shared_exponentials(expressions))) if share_exponentials else (
        lambda expressions: expressions)
    levels = kernel.levels()
    stash = _stash(kernel, levels)
    row_names = sp.numbered_symbols("_row", real=True)
    sums = {r.symbol for r in kernel.reductions if r.op == "sum"}

    def hoisted(expressions: list[sp.Expr]) -> tuple[list[tuple[sp.Symbol, sp.Expr]], list[sp.Expr]]:
        hoister = _Hoister(row_names)
        rewritten = [hoister(e) for e in expressions]
        if materialize_sums:
            used = sorted(set().union(*(e.free_symbols for e in rewritten)) & sums, key=sp.default_sort_key)
            copies = {s: hoister.name_for(s) for s in used}
            rewritten = [e.xreplace(copies) for e in rewritten]
        return hoister.assignments, rewritten

    reduction_loops = []
    for number, group in enumerate(levels):
        bodies = [r.body for r in group]
        stored = []
        if stash and stash[0] == number:
            stored = [stash[1]]
        before, rewritten = hoisted(share(bodies + stored))
        temporaries, reduced = _common_subexpressions(rewritten, f"_t{number}_")
        loop = Loop(before, temporaries, [(r.symbol, r.op, body) for r, body in zip(group, reduced)])
        if stored and stash is not None:
            loop.stores.append((stash[2], reduced[-1]))
        reduction_loops.append(loop)

    scalar_outputs = [o for o in kernel.outputs if o.shape == "scalar"]
    scalar_temporaries, scalar_expressions = _common_subexpressions([o.expr for o in scalar_outputs], "_s")

    vector_outputs = [o for o in kernel.outputs if o.shape != "scalar"]
    output_loop = None
    if vector_outputs:
        expressions = [o.expr for o in vector_outputs]
        if stash:
            read_back = sp.IndexedBase(stash[2])[LOOP]
            if share_exponentials:  # a power one step from the stored one is computed from it
                expressions = shared_powers([*expressions, stash[1]])[:-1]
            expressions = [e.xreplace({stash[1]: read_back}) for e in expressions]
        before, rewritten = hoisted(share(expressions))
        temporaries, reduced = _common_subexpressions(rewritten, "_e")
        output_loop = Loop(before, temporaries, [], [(o.name, e) for o, e in zip(vector_outputs, reduced)])
    return Schedule(kernel, reduction_loops, scalar_temporaries,
                    [(o.name, e) for o, e in zip(scalar_outputs, scalar_expressions)], output_loop,
                    stash=stash[2] if stash else None)

