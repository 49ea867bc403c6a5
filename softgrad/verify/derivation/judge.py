"""Judge every equality link of a written derivation: holds, fails, conditional, or unchecked (with why).

Definitions stated in the text (ŷ_i = exp(o_i)/Σ_j exp(o_j), L = −Σ_j y_j log ŷ_j) bind their names; every
other name read with an index is an input. A link is evaluated at n = 1 … 4 classes, every value of its
free indices (only i = j, or only i ≠ j, where the prose just before the display says so) and random inputs:
∂A/∂B is differentiated exactly by SymPy at those sizes (A written out in the inputs, except B's own array
when B is a defined one: ∂L/∂p_k differentiates L in p). A loss named but never defined (the l of ∂l/∂y_j)
is l = Σ_k g_k y_k with a random upstream g, which is what ∂l/∂y_j means. A link that fails at general
inputs but holds when the other inputs sum to 1 (or are one-hot) is conditional where the text states
that assumption, and fails (saying so) where it does not.
"""

from __future__ import annotations

import itertools
import re
import time
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import sympy as sp

from softgrad import tolerances
from softgrad.derive.symbols import Partial
from softgrad.verify.derivation.extract import Display, Page
from softgrad.verify.derivation.latex import BOLD, CLASSES, Diagonal, Hadamard, Transposed, Unreadable, index, parse

#: Class counts a link is evaluated at, and random input draws at each.
SIZES = (1, 2, 3, 4)
DRAWS = 2
#: Seconds a page may take; links beyond them are left unchecked (and say so).
SECONDS = 60
#: A link with more free indices than this is not evaluated (n⁴ index values per size already at four).
MOST_FREE_INDICES = 3


@dataclass
class Link:
    """One equality as written, and what softgrad found."""

    line: int
    lhs: str
    rhs: str
    verdict: str  # holds | fails | conditional | unchecked | definition | assumption
    reason: str = ""
    expected: str = ""  # for a wrong derivative: what softgrad derives for its left side
    sides: tuple[Any, ...] = field(default=(), repr=False, compare=False)  # both sides as read (SymPy)

    def to_dict(self) -> dict[str, Any]:
        return {"line": self.line, "lhs": self.lhs, "rhs": self.rhs, "verdict": self.verdict, "reason": self.reason,
                "expected": self.expected or None}


@dataclass
class _Definition:
    name: str
    indices: tuple[sp.Symbol, ...]
    expr: sp.Expr


@dataclass
class _Context:
    definitions: dict[str, _Definition] = field(default_factory=dict)
    assumptions: list[tuple[str, str]] = field(default_factory=list)  # (kind: simplex|onehot, quote)
    differentiated: set[str] = field(default_factory=set)  # arrays the page differentiates with respect to
    unusable: set[str] = field(default_factory=set)  # names whose stated definition cannot be used
    arrays: set[str] = field(default_factory=set)  # names the page reads with an index: vectors when bare


class _D(sp.Function):
    """∂(first)/∂(second) while a link is evaluated: an ordinary function, so that putting in index values
    reaches inside it (Partial, which the derivation steps use, renames indices only)."""

    nargs = 2


class _BadDefinition(Exception):
    """A definition the text states that cannot be used as written (its value has a stray free index)."""


class _NotEvaluable(Exception):
    """A side that reads something the judge cannot give a value (a name with no definition, vector notation)."""


def _arrays(expr: sp.Expr) -> set[str]:
    return {str(entry.base) for entry in expr.atoms(sp.Indexed)}


def _free_indices(expr: sp.Expr) -> set[sp.Symbol]:
    return {s for s in expr.free_symbols if s.is_integer and s != CLASSES}


def _condition(before: str) -> tuple[sp.Symbol, sp.Symbol, bool] | None:
    """(a, b, equal) from the prose just before a display: 'if i = j', '当j!=i时', 'k \\neq i'; the last
    sentence or line of the prose is read, its first statement of the kind taken."""
    lines = [line for line in before.splitlines()
             if line.strip() and not re.fullmatch(r"\s*(\\\[|\$\$|\\begin\{[a-z*]+\})\s*", line)]
    for tail in reversed(lines[-2:]):  # the display's own line may begin with prose (当j!=i时,) or its rendering
        tail = tail.replace("\\(", " ").replace("\\)", " ").replace("$", " ")
        match = re.search(r"(?<![A-Za-z\\])([a-z])\s*(\\neq|\\ne(?![a-z])|!=|≠|=/|=)\s*([a-z])(?![A-Za-z_{])", tail)
        if match is not None:
            return index(match.group(1)), index(match.group(3)), match.group(2) == "="
    return None


def _assumptions(prose: str) -> list[tuple[str, str]]:
    """Assumptions the text states about its targets: a sum of 1, or one-hot vectors (with the sentence)."""
    found = []
    for sentence in re.split(r"(?<=[.。!?;,，])\s+|\n", prose):
        compact = sentence.replace(" ", "")
        quote = " ".join(sentence.split())[:160]
        if re.search(r"\\sum_?\{?[a-z]\}?\{?[a-zA-Z]_\{?[a-z]\}?\}?\\?\)?=1", compact) or "sumto1" in compact.lower() \
                or "sumtoone" in compact.lower():
            found.append(("simplex", quote))
        if re.search(r"one-hot|onehot|独热", sentence, flags=re.I) and len(quote) < 160:
            found.append(("onehot", quote))
    return found


def judge(page: Page, given: dict[str, tuple[tuple[sp.Symbol, ...], sp.Expr]] | None = None) -> list[Link]:
    """Every link of every display of the page, in order. given: definitions bound before the page is read
    (name → (indices, value), from --against), which the page's own definitions override."""
    context = _Context(assumptions=_assumptions(page.prose))
    for name, (indices, value) in (given or {}).items():
        context.definitions[name] = _Definition(name, indices, value)
    for display in page.displays:
        for text, _ in display.sides:
            side, _ = _read(text)
            if side is not None:
                context.differentiated |= {str(p.var.base) for p in side.atoms(Partial)
                                           if isinstance(p.var, sp.Indexed)}
                context.differentiated |= {str(p.var) for p in side.atoms(Partial) if isinstance(p.var, sp.Symbol)
                                           and not p.var.is_commutative}
                context.arrays |= _arrays(side)
    links: list[Link] = []
    start = time.monotonic()
    for display in page.displays:
        if time.monotonic() - start > SECONDS:
            links += [Link(next_line, text, next_text, "unchecked", f"not reached: the page's {SECONDS} s were spent")
                      for (text, _), (next_text, next_line) in itertools.pairwise(display.sides)]
            continue
        links += _judge_display(display, context)
    return links


def _read(text: str) -> tuple[sp.Expr | None, str]:
    try:
        return parse(text), ""
    except Unreadable as problem:
        return None, str(problem)


def _judge_display(display: Display, context: _Context) -> list[Link]:
    sides = [(text, line, *_read(text)) for text, line in display.sides]
    links: list[Link] = []
    _first_text, _first_line, first, _ = sides[0]
    try:
        defined = _as_definition(first, sides[1:], context)
    except _BadDefinition as problem:
        return [Link(next_line, text, next_text, "unchecked", str(problem))
                for (text, _, _, _), (next_text, next_line, _, _) in itertools.pairwise(sides)]
    if defined is not None:
        name, value_text = defined
        for (text, _line, left, why), (next_text, next_line, right, next_why) in itertools.pairwise(sides):
            reason = f"defines {name}" if next_text == value_text else (next_why or why or "beside a definition")
            verdict = "definition" if next_text == value_text else "unchecked"
            links.append(Link(next_line, text, next_text, verdict, reason,
                              sides=(left, right) if left is not None and right is not None else ()))
        return links
    condition = _condition(display.before)
    for (text, _line, left, why), (next_text, next_line, right, next_why) in itertools.pairwise(sides):
        if isinstance(left, sp.KroneckerDelta):
            links.append(Link(next_line, text, next_text, "unchecked", "the definition of the Kronecker delta"))
            continue
        if left is None or right is None:
            links.append(Link(next_line, text, next_text, "unchecked", why or next_why))
            continue
        link = _judge_link(next_line, text, next_text, left, right, condition, context)
        link.sides = (left, right)
        links.append(link)
    return links


def _as_definition(first: sp.Expr | None, rest: list[Any], context: _Context) -> tuple[str, str] | None:
    """(name, the text of its value) when a display defines a name not defined before: `ŷ_i = …`, `L = …`."""
    if first is None or not rest:
        return None
    if isinstance(first, sp.Indexed) and all(isinstance(i, sp.Symbol) for i in first.indices):
        name, indices = str(first.base), tuple(first.indices)
    elif isinstance(first, sp.Symbol) and not first.is_integer and len(str(first)) <= 3 and str(first) != "e":
        name, indices = str(first), ()
    else:
        return None
    if name.startswith(BOLD) or any(value is not None and value.has(Partial) for _, _, value, _ in rest):
        return None
    readable = [(text, value) for text, _, value, _ in rest if value is not None]
    if not readable:
        return None
    text, value = readable[-1]
    if name in _arrays(value) or sp.Symbol(name) in value.free_symbols:
        return None
    context.definitions.pop(name, None)  # a page may reuse a name for a new function (L for a new loss)
    context.unusable.discard(name)
    stray = _free_indices(value) - set(indices)
    if stray:
        context.unusable.add(name)
        raise _BadDefinition(f"the definition of {name} reads {', '.join(sorted(map(str, stray)))} with no sum over "
                             "it (a typo for the summed index?): nothing that reads it is checked")
    context.definitions[name] = _Definition(name, indices, value)
    return name, text


# ---------------------------------------------------------------------------------------------- evaluation
@dataclass
class _Point:
    size: int
    indices: dict[sp.Symbol, int]
    values: dict[str, np.ndarray]
    upstream: np.ndarray


def _judge_link(line: int, left_text: str, right_text: str, left: sp.Expr, right: sp.Expr,
                condition: tuple[sp.Symbol, sp.Symbol, bool] | None, context: _Context) -> Link:
    if _in_matrix_notation(left, context) or _in_matrix_notation(right, context):
        try:
            (left, left_shape), (right, right_shape) = _entrywise(left, context), _entrywise(right, context)
        except _NotEvaluable as problem:
            return Link(line, left_text, right_text, "unchecked", str(problem))
        if left_shape != right_shape:
            return Link(line, left_text, right_text, "fails", f"the left side is a {left_shape}, the right side a "
                        f"{right_shape}")
    try:
        inputs = _inputs(left, context) | _inputs(right, context)
    except _NotEvaluable as problem:
        return Link(line, left_text, right_text, "unchecked", str(problem))
    if not (left.has(Partial) or right.has(Partial) or _reads_definitions(left - right, context)):
        if inputs and not _free_indices(right) and not right.atoms(sp.Indexed):
            if isinstance(left, sp.Sum) and right == 1:
                context.assumptions.append(("simplex", f"{left_text} = {right_text}"))
            return Link(line, left_text, right_text, "assumption", "a statement about the inputs")
    targets = sorted(name for name in inputs - context.differentiated if _is_array(name, left, right, context))
    free = sorted(_free_indices(left) | _free_indices(right), key=str)
    if len(free) > MOST_FREE_INDICES:
        return Link(line, left_text, right_text, "unchecked", f"{len(free)} free indices (at most "
                    f"{MOST_FREE_INDICES} are checked)")
    case_of_a_sum = None
    if condition is not None and not {condition[0], condition[1]} <= set(free):
        # "when j ≠ i: ∂l/∂x_i = Σ_{j≠i} …" names an index the link does not have free: the right side is
        # one case of a sum, not the whole left side
        case_of_a_sum = f"{condition[0]} {'=' if condition[2] else '≠'} {condition[1]}"
        condition = None
    try:
        general = _compare(left, right, free, condition, inputs, targets, context, "general")
        if general is None:
            proved = _proved(left, right, free, condition, inputs, context)
            return Link(line, left_text, right_text, "holds", _scope(free, condition, proved))
        for kind in ("simplex", "onehot"):
            if targets and _compare(left, right, free, condition, inputs, targets, context, kind) is None:
                stated = [quote for found, quote in context.assumptions if found == kind
                          or (kind == "simplex" and found == "onehot")]
                what = (f"{', '.join(targets)} summing to 1" if kind == "simplex" else
                        f"{', '.join(targets)} one-hot")
                if stated:
                    return Link(line, left_text, right_text, "conditional", f"holds for {what}, as the text "
                                f"states: “{stated[0]}”")
                return Link(line, left_text, right_text, "fails", f"{general}; it holds only for {what}, "
                            "which the text does not state")
        expected = _should_be(left, condition, context)
        if expected:
            general += f"; softgrad derives the left side as {expected}"
        if case_of_a_sum is not None:
            return Link(line, left_text, right_text, "unchecked", f"a case written as an equality: under "
                        f"“{case_of_a_sum}” the right side is that case's part of a sum, the left side the whole "
                        f"({general})")
        return Link(line, left_text, right_text, "fails", general, expected)
    except _NotEvaluable as problem:
        return Link(line, left_text, right_text, "unchecked", str(problem))


def _should_be(left: sp.Expr, condition: tuple[sp.Symbol, sp.Symbol, bool] | None, context: _Context) -> str:
    """For a wrong ∂A/∂B (A defined in the text, B an input entry): what softgrad derives for it, in the page's
    names and indices ('ŷ_j·(δ_ij − ŷ_i)'), or '' where it cannot say."""
    if not isinstance(left, Partial) or not isinstance(left.var, sp.Indexed) \
            or str(left.var.base) in context.definitions:
        return ""
    target, variable = left.expr, left.var
    if isinstance(target, sp.Indexed) and len(target.indices) == 1 and str(target.base) in context.definitions:
        name, wanted = str(target.base), "jacobian"
        if condition is not None and {condition[0], condition[1]} == {target.indices[0], variable.indices[0]}:
            wanted = "jacobian_equal" if condition[2] else "jacobian_distinct"
    elif isinstance(target, sp.Symbol) and str(target) in context.definitions:
        name, wanted = str(target), "gradient"
    else:
        return ""
    try:
        return str(_derived(name, str(variable.base), wanted, target, variable, context))
    except Exception:  # the page's functions may be beyond what derive reads: then nothing is said
        return ""


def _derived(name: str, wrt: str, wanted: str, target: sp.Expr, variable: sp.Indexed, context: _Context) -> str:
    from softgrad.derive import derive_spec, load_spec

    needed, pending = [], [name]
    while pending:  # the definitions the function reads, first ones first
        current = pending.pop()
        if current in needed or current not in context.definitions:
            continue
        needed.append(current)
        expr = context.definitions[current].expr
        pending += [n for n in _arrays(expr) | {str(s) for s in expr.free_symbols} if n in context.definitions]
    order = [n for n in context.definitions if n in needed]
    safe = {n: re.sub(r"\W", "", n.replace("\u0302", "hat").replace("\u0303", "tilde").replace("\u0304", "bar"))
            or "v" for n in {*order, *(a for n in order for a in _arrays(context.definitions[n].expr))}}
    safe = {n: (f"{s}_" if s in ("sum", "size", "exp", "log") else s) for n, s in safe.items()}

    def spec_text(expr: sp.Expr) -> str:
        renamed = expr.replace(lambda e: isinstance(e, sp.Sum),
                               lambda e: sp.Function("sum")(e.function, e.limits[0][0]))
        renamed = renamed.xreplace({sp.IndexedBase(n): sp.IndexedBase(s) for n, s in safe.items()})
        renamed = renamed.xreplace({sp.Symbol(n): sp.Symbol(s) for n, s in safe.items()})
        return str(sp.sstr(renamed))

    lines = []
    for n in order:
        definition = context.definitions[n]
        head = f"{safe[n]}[{', '.join(map(str, definition.indices))}]" if definition.indices else safe[n]
        lines.append(f"{head} = {spec_text(definition.expr)}")
    derivation = derive_spec(load_spec("\n".join(lines)), wrt=safe.get(wrt, wrt), time_limit=None)
    result = derivation.results[wanted]
    back = {sp.IndexedBase(s): sp.IndexedBase(n) for n, s in safe.items()}
    rhs = result.rhs.xreplace(back)
    (derived_variable,) = [p.var for p in result.lhs.atoms(Partial)] or [None]
    renaming: dict[sp.Expr, sp.Expr] = {}
    if isinstance(derived_variable, sp.Indexed):
        renaming[derived_variable.indices[0]] = variable.indices[0]
    if isinstance(target, sp.Indexed) and isinstance(result.lhs, Partial) and isinstance(result.lhs.expr, sp.Indexed):
        renaming[result.lhs.expr.indices[0]] = target.indices[0]
    placeholders = {old: sp.Dummy() for old in renaming}
    rhs = rhs.xreplace(placeholders).xreplace({placeholders[old]: new for old, new in renaming.items()})
    return _plain(rhs)


def _plain(expr: sp.Expr) -> str:
    """A result in page notation: ŷ_j·(δ_ij − ŷ_i)."""
    text = sp.sstr(expr.replace(lambda e: isinstance(e, sp.Sum), lambda e: sp.Function("Σ_" + str(e.limits[0][0]))(
        e.function)))
    text = re.sub(r"KroneckerDelta\((\w), (\w)\)", r"δ_\1\2", text)
    text = re.sub(r"(\w[\u0302\u0303\u0304]?)\[(\w)\]", r"\1_\2", text)
    return unicodedata.normalize("NFC", text.replace("*", "·").replace(" - ", " − "))


def _scope(free: list[sp.Symbol], condition: tuple[sp.Symbol, sp.Symbol, bool] | None, proved: bool) -> str:
    where = "" if condition is None else f" ({condition[0]} {'=' if condition[2] else '≠'} {condition[1]})"
    indices = f", every {', '.join(map(str, free))}{where}" if free else where
    how = (f"proved (SymPy reduces the difference to 0) at n = {PROOF_SIZES[0]}…{PROOF_SIZES[-1]}, and equal at "
           if proved else "equal (not proved: SymPy did not reduce the difference to 0) at ")
    return f"{how}{DRAWS} random points at n = {SIZES[0]}…{SIZES[-1]}{indices}"


def _reads_definitions(expr: sp.Expr, context: _Context) -> bool:
    return bool(_arrays(expr) & set(context.definitions)) or any(
        isinstance(s, sp.Symbol) and str(s) in context.definitions for s in expr.free_symbols)


def _inputs(expr: sp.Expr, context: _Context, seen: frozenset[str] = frozenset()) -> set[str]:
    """The input arrays expr reads, through the definitions; _NotEvaluable for what has no value."""
    found: set[str] = set()
    unusable = (_arrays(expr) | {str(s) for s in expr.free_symbols}) & context.unusable
    if unusable:
        raise _NotEvaluable(f"{sorted(unusable)[0]} has a definition in the text that cannot be used as written")
    for name in _arrays(expr):
        if name.startswith(BOLD):
            raise _NotEvaluable("vector notation (a bold symbol), not read entrywise")
        if name in context.definitions and name not in seen:
            found |= _inputs(context.definitions[name].expr, context, seen | {name})
        elif name not in context.definitions:
            found.add(name)
    labels = {entry.base.label for entry in expr.atoms(sp.Indexed)}
    for symbol in expr.free_symbols:
        name = str(symbol)
        if not isinstance(symbol, sp.Symbol) or symbol in labels or symbol.is_integer or symbol == CLASSES \
                or name in seen:
            continue
        if name.startswith(BOLD) or name in {d for d in context.definitions if context.definitions[d].indices}:
            raise _NotEvaluable(f"vector notation ({name.removeprefix(BOLD)} without an index)")
        if name in context.definitions:
            found |= _inputs(context.definitions[name].expr, context, seen | {name})
        elif any(isinstance(p.expr, sp.Symbol) and p.expr == symbol for p in expr.atoms(Partial)):
            continue  # a loss the text never defines (the l of ∂l/∂y_j): see _derivative
        elif re.fullmatch(r"[A-Za-z]", name):
            found.add(name)  # a constant the text names (N, the batch size): any positive value
        else:
            raise _NotEvaluable(f"{name} has no definition in the text")
    return found


#: The row and column index of matrix notation read entrywise (M_ρκ; a column vector v_ρ, a row vector v_κ).
ROW, COLUMN = index("ρ"), index("κ")


def _vector_names(context: _Context) -> set[str]:
    return context.arrays | {name for name, d in context.definitions.items() if len(d.indices) == 1}


def _in_matrix_notation(expr: sp.Expr, context: _Context) -> bool:
    vectors = _vector_names(context)
    labels = {entry.base.label for entry in expr.atoms(sp.Indexed)}
    return bool(expr.atoms(Transposed, Diagonal, Hadamard)) or any(
        isinstance(s, sp.Symbol) and s not in labels and (not s.is_commutative or str(s) in vectors)
        for s in expr.free_symbols)


def _entrywise(expr: sp.Expr, context: _Context) -> tuple[sp.Expr, str]:
    """Matrix notation read entry by entry: (the entry at row ρ and column κ, its shape: scalar, column,
    row or matrix). y yᵀ is y_ρ y_κ, yᵀ g is Σ_m y_m g_m, diag(y) is δ_ρκ y_ρ, ∂y/∂x is ∂y_ρ/∂x_κ."""
    vectors = _vector_names(context)
    if isinstance(expr, sp.Symbol):
        if str(expr) in vectors:
            return sp.IndexedBase(str(expr))[ROW], "column"
        if not expr.is_commutative and str(expr) not in context.definitions:
            raise _NotEvaluable(f"{expr} has no definition in the text (a vector or a matrix?)")
        return sp.Symbol(str(expr)), "scalar"
    if expr.is_Number or isinstance(expr, sp.Indexed) or not expr.free_symbols:
        return expr, "scalar"
    if isinstance(expr, Transposed):
        inner, shape = _entrywise(expr.args[0], context)
        swapped = inner.xreplace({ROW: COLUMN, COLUMN: ROW})
        return swapped, {"column": "row", "row": "column"}.get(shape, shape)
    if isinstance(expr, Diagonal):
        inner, shape = _entrywise(expr.args[0], context)
        if shape != "column":
            raise _NotEvaluable("diag of something that is not a vector")
        return sp.KroneckerDelta(ROW, COLUMN) * inner, "matrix"
    if isinstance(expr, Hadamard):
        (first, first_shape), (second, second_shape) = (_entrywise(a, context) for a in expr.args)
        if first_shape != second_shape and "scalar" not in (first_shape, second_shape):
            raise _NotEvaluable("⊙ of two different shapes")
        return first * second, first_shape if first_shape != "scalar" else second_shape
    if isinstance(expr, Partial):
        loss = expr.expr
        if isinstance(loss, sp.Symbol) and str(loss) not in vectors and str(loss) not in context.definitions:
            loss = sp.Symbol(str(loss))  # a loss the text never defines (∂l/∂x): see _derivative
        (top, top_shape), (bottom, bottom_shape) = _entrywise(loss, context), _entrywise(expr.var, context)
        if top_shape == "column" and bottom_shape == "column":
            return Partial(top, bottom.xreplace({ROW: COLUMN})), "matrix"  # the Jacobian, ∂y_ρ/∂x_κ
        if top_shape == "scalar" and bottom_shape == "column":
            return Partial(top, bottom), "column"  # the gradient, ∂l/∂x_ρ
        raise _NotEvaluable("a derivative of a matrix")
    if expr.is_Add:
        terms = [_entrywise(a, context) for a in expr.args]
        shapes = {shape for _, shape in terms} - {"scalar"}
        if len(shapes) > 1:
            raise _NotEvaluable("a sum of different shapes")
        return sp.Add(*[term for term, _ in terms]), shapes.pop() if shapes else "scalar"
    if expr.is_Mul:
        value, shape = sp.S.One, "scalar"
        for factor in expr.args:  # in order: y yᵀ is not yᵀ y
            value, shape = _times(value, shape, *_entrywise(factor, context))
        return value, shape
    if expr.is_Pow and expr.exp.is_Integer:
        base, shape = _entrywise(expr.base, context)
        if shape != "scalar":
            raise _NotEvaluable("a power of a vector or matrix")
        return base ** expr.exp, shape
    if isinstance(expr, (sp.exp, sp.log)):
        inner, shape = _entrywise(expr.args[0], context)
        return expr.func(inner), shape  # entry by entry
    raise _NotEvaluable("matrix notation not read here")


def _times(left: sp.Expr, left_shape: str, right: sp.Expr, right_shape: str) -> tuple[sp.Expr, str]:
    """The product of two entrywise factors by their shapes (a vector times a vector of the same kind is
    taken entry by entry, as ML pages write y·g)."""
    inner = index("μ")
    if "scalar" in (left_shape, right_shape) or left_shape == right_shape != "matrix":
        return left * right, right_shape if left_shape == "scalar" else left_shape
    total = {("column", "row"): (None, "matrix"), ("row", "column"): ((COLUMN, ROW), "scalar"),
             ("matrix", "column"): ((COLUMN, ROW), "column"), ("row", "matrix"): ((COLUMN, ROW), "row"),
             ("matrix", "matrix"): ((COLUMN, ROW), "matrix")}.get((left_shape, right_shape))
    if total is None:
        raise _NotEvaluable(f"a {left_shape} times a {right_shape}")
    summed, shape = total
    if summed is None:
        return left * right, shape
    first, second = summed
    return sp.Sum(left.xreplace({first: inner}) * right.xreplace({second: inner}), (inner, 0, CLASSES - 1)), shape


def _index_values(free: list[sp.Symbol], condition: Any, size: int) -> Iterator[dict[sp.Symbol, int]]:
    """Every value of the free indices at n = size that the display's condition (i = j, i ≠ j) allows."""
    for values in itertools.product(range(size), repeat=len(free)):
        indices = dict(zip(free, values))
        if condition is not None and condition[0] in indices and condition[1] in indices and (
                (indices[condition[0]] == indices[condition[1]]) != condition[2]):
            continue
        yield indices


def _compare(left: sp.Expr, right: sp.Expr, free: list[sp.Symbol], condition: Any, inputs: set[str],
             targets: list[str], context: _Context, kind: str) -> str | None:
    """None if the sides are equal at every size, index value and draw; else the first counterexample."""
    generator = np.random.default_rng(7)
    for size in SIZES:
        for indices in _index_values(free, condition, size):
            for _ in range(DRAWS):
                arrays = {name: generator.uniform(0.2, 1.5, size if _is_array(name, left, right, context) else 1)
                          for name in sorted(inputs)}
                for name in targets:
                    if kind == "simplex":
                        arrays[name] = arrays[name] / arrays[name].sum()
                    elif kind == "onehot":
                        arrays[name] = np.eye(size)[generator.integers(size)]
                point = _Point(size, indices, arrays, generator.normal(size=size))
                a, b = _value(left, point, context), _value(right, point, context)
                if not np.isfinite(a) or not np.isfinite(b) or abs(a - b) > tolerances.STEP * max(1.0, abs(a), abs(b)):
                    where = ", ".join(f"{k} = {v}" for k, v in indices.items())
                    return (f"at n = {size}{', ' + where if where else ''}, the left side is {a:.6g} and the right "
                            f"side {b:.6g}")
    return None


def _is_array(name: str, left: sp.Expr, right: sp.Expr, context: _Context) -> bool:
    """Whether an input is read with an index anywhere (else it is a named constant such as N)."""
    expressions = [left, right, *(definition.expr for definition in context.definitions.values())]
    return any(name in _arrays(expr) for expr in expressions)


def _written(expr: sp.Expr, point: _Point, context: _Context) -> sp.Expr:
    """expr written out at a point's size and index values: ∂ taken exactly, definitions and sums expanded,
    a polynomial-and-exp expression in the inputs' entries."""
    concrete = expr.replace(lambda e: isinstance(e, Partial), lambda e: _D(e.expr, e.var))
    concrete = concrete.subs(CLASSES, point.size).subs(point.indices)
    return _expand(concrete, point, context)


#: Beyond this size (SymPy operations) a difference is not put to SymPy for a proof.
LARGEST_PROVED = 2500
#: Class counts at which a link that holds numerically is also proved.
PROOF_SIZES = (1, 2, 3)


def _proved(left: sp.Expr, right: sp.Expr, free: list[sp.Symbol], condition: Any, inputs: set[str],
            context: _Context) -> bool:
    """Whether SymPy reduces left − right to 0 at n = 1, 2, 3 and every index value, the inputs symbols:
    exp(o_k) is a positive u_k (o_k = log u_k), so that a softmax is a rational function and cancels."""
    for size in PROOF_SIZES:
        for indices in _index_values(free, condition, size):
            point = _Point(size, indices, {}, np.zeros(size))
            difference = _written(left, point, context) - _written(right, point, context)
            symbols: dict[sp.Expr, sp.Expr] = {}
            for name in inputs:
                for k in range(size):
                    entry = sp.Symbol(f"{name}_{k}", positive=True)
                    symbols[sp.IndexedBase(name)[k]] = sp.log(entry) if name in context.differentiated else entry
                symbols[sp.Symbol(name)] = sp.Symbol(name, positive=True)
            symbols.update({sp.IndexedBase("_upstream")[k]: sp.Symbol(f"g_{k}", real=True) for k in range(size)})
            difference = sp.sympify(difference).xreplace(symbols)
            if sp.count_ops(difference) > LARGEST_PROVED:
                return False
            try:
                reduced = sp.cancel(sp.together(sp.expand_log(difference, force=True)))
            except (sp.PolynomialError, TypeError, ValueError):
                return False
            if reduced != 0:
                return False
    return True


def _value(expr: sp.Expr, point: _Point, context: _Context) -> float:
    """expr at a point: indices and n put in, ∂ taken exactly, definitions written out, entries as numbers."""
    concrete = _written(expr, point, context)
    numbers: dict[sp.Expr, sp.Expr] = {sp.IndexedBase(name)[k]: sp.Float(float(value[k]), 30)
                                       for name, value in point.values.items() for k in range(len(value))}
    numbers.update({sp.Symbol(name): sp.Float(float(value[0]), 30) for name, value in point.values.items()})
    numbers.update({sp.IndexedBase("_upstream")[k]: sp.Float(float(point.upstream[k]), 30)
                    for k in range(point.size)})
    result = sp.sympify(concrete).xreplace(numbers)
    try:
        return float(sp.N(result, 30))
    except TypeError as problem:
        raise _NotEvaluable(f"a value that is not a number ({sp.sstr(result)[:60]})") from problem


def _expand(expr: sp.Expr, point: _Point, context: _Context, keep: frozenset[str] = frozenset()) -> sp.Expr:
    """expr with sums written out at the point's size, partial derivatives taken, and every defined name but
    those in `keep` replaced by its definition."""
    expr = sp.sympify(expr).doit() if expr.has(sp.Sum) else expr
    partials = sorted(expr.atoms(_D), key=lambda p: sp.count_ops(p))
    for partial in partials:
        if partial not in expr.atoms(_D):
            continue
        expr = expr.xreplace({partial: _derivative(partial, point, context)})
    replacements: dict[sp.Expr, sp.Expr] = {}
    for entry in expr.atoms(sp.Indexed):
        name = str(entry.base)
        if name in context.definitions and name not in keep:
            definition = context.definitions[name]
            if len(definition.indices) != len(entry.indices):
                raise _NotEvaluable(f"{name} is read with {len(entry.indices)} index(es), defined with "
                                    f"{len(definition.indices)}")
            body = definition.expr.subs(CLASSES, point.size).subs(dict(zip(definition.indices, entry.indices)))
            replacements[entry] = _expand(body, point, context, keep)
    for symbol in expr.free_symbols:
        name = str(symbol)
        if name in context.definitions and name not in keep and not context.definitions[name].indices:
            body = context.definitions[name].expr.subs(CLASSES, point.size)
            replacements[symbol] = _expand(body, point, context, keep)
    expr = expr.xreplace(replacements) if replacements else expr
    return expr.doit() if expr.has(sp.Sum) else expr


def _derivative(partial: _D, point: _Point, context: _Context) -> sp.Expr:
    numerator, variable = partial.args
    if not isinstance(variable, sp.Indexed) or not all(i.is_Integer for i in variable.indices):
        raise _NotEvaluable("a derivative with respect to something other than one entry")
    keep = frozenset({str(variable.base)}) if str(variable.base) in context.definitions else frozenset()
    undefined = [s for s in numerator.free_symbols if isinstance(s, sp.Symbol) and not s.is_integer
                 and str(s) not in context.definitions and s not in {e.base.label for e in numerator.atoms(sp.Indexed)}]
    if isinstance(numerator, sp.Symbol) and undefined:
        # a loss the text never defines: l = Σ_k g_k y_k, y the array it is differentiated against here or
        # in the chain rule (∂l/∂y_j = g_j, ∂l/∂x_i = Σ_k g_k ∂y_k/∂x_i)
        against = next((name for name in context.definitions if context.definitions[name].indices), None)
        if against is None:
            raise _NotEvaluable(f"{numerator} has no definition in the text")
        numerator = sp.Add(*[sp.IndexedBase("_upstream")[k] * sp.IndexedBase(against)[k] for k in range(point.size)])
        if str(variable.base) == against:
            keep = frozenset({against})
    written = _expand(numerator, point, context, keep)
    reads = {str(entry.base) for entry in sp.sympify(written).atoms(sp.Indexed)}
    if str(variable.base) not in reads:
        undefined = sorted(reads - set(context.definitions) - {"_upstream"})
        if undefined:  # ∂y_i/∂x_j where y is not defined: not 0, just unknown
            raise _NotEvaluable(f"{undefined[0]} has no definition in the text (give one with --against SPEC)")
    return sp.diff(written, variable)
