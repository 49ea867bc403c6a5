"""Lowering of tensor derivations (several index ranges) to NumPy: every statement an array expression.

Each subexpression becomes array code whose axes are its own indices, in a fixed order. Entrywise
operations broadcast; a sum of a product is one `np.einsum(…, optimize=True)` (BLAS for the
contractions: Σ_d W_cd X_bd is a matrix product); a sum of anything else is `np.sum` over its axes.
Label picks (P[b, label_b]) are advanced indexing. Stability: a normalised exponential
(P = exp(E)/Σ_k exp(E)) is shifted by its row maximum, log P is computed as E − max − log Σ, and a
log Σ exp is shifted the same way. A subexpression the statements of one function repeat (layer norm's x − m,
softmax regression's P − T) is computed once, into a temporary, and a block's rows of a result are written by its
last multiplication (`out=`), not copied in; a block's part of a sum over rows that is a matrix product (dW) is
written by matmul into the array on the first block and added after, its scale applied to the smaller operand.
No Python loop runs over entries; where the row-blocking pass (codegen.lower.blocking) finds one, the NumPy module runs
a function a block of rows at a time (a loop over blocks, each an array expression), so that attention's n × n
arrays exist for one block of query rows only.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import sympy as sp

from softgrad.codegen.backends.numpy.dialects import NUMPY, ArrayDialect
from softgrad.codegen.lower.blocking import RowBlocking, accumulated_ranges, split_sum_over_rows
from softgrad.codegen.lower.kernel import guarded_product
from softgrad.codegen.lower.plan import (
    checked_arrays,
    divided_sizes,
    functions,
    integer_formula,
    printed_names,
    saved_name,
    saving,
    shape_of,
    size_variable,
)
from softgrad.codegen.lower.rows import log_sum_parts, stable_array_forms
from softgrad.derive import algebra
from softgrad.derive.spec import Definition, Spec
from softgrad.derive.steps import Derivation
from softgrad.derive.symbols import Bracket, Masked
from softgrad.errors import SoftgradError

_LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
#: where a block of rows starts (a position on the blocked axis, relative to the block in arrays it holds)
_ROW_START = sp.Symbol("_r0", integer=True)


@dataclass
class Statement:
    name: str  # the printed name of the array computed
    lines: list[str]
    logs_read: set[str] = field(default_factory=set)  # normalised exponentials P whose _log_P it reads
    reads: set[str] = field(default_factory=set)  # the printed names of the arrays and parameters it reads


@dataclass
class ArrayModule:
    """What the NumPy template prints: arguments, size checks, the forward and backward statements."""

    inputs: list[tuple[str, str, tuple[str, ...]]]  # (printed name, spec name, ranges)
    labels: dict[str, str]  # printed label name → range of its values
    parameters: list[str]
    #: (size variable, input printed name, axis) that fixes each range; axis −1: a formula in other sizes instead
    sizes: list[tuple[str, str, int]]
    forward: list[Statement]
    output: str
    output_is_scalar: bool
    backward: list[Statement] = field(default_factory=list)
    upstream: str | None = None
    gradients: list[tuple[str, str]] = field(default_factory=list)  # (input printed name, gradient printed name)
    output_ranges: tuple[str, ...] = ()
    gradients_forward: list[Statement] = field(default_factory=list)  # the forward statements gradients() needs
    blocked: bool = False  # whether a function runs a block of rows at a time
    #: forward_saving() and backward() (NumPy): the forward's statements that also keep `saved` (none: forward()
    #: keeps nothing but its output, and forward_saving() calls it), and the backward's from what was kept
    saving_forward: list[Statement] = field(default_factory=list)
    saved: list[str] = field(default_factory=list)
    output_read: bool = False
    backward_inputs: list[str] = field(default_factory=list)
    backward_from_saved: list[Statement] = field(default_factory=list)
    #: (range, size variable) of the ranges the function divides by: an empty one is refused (no value there)
    divided: list[tuple[str, str]] = field(default_factory=list)

    @property
    def output_rank(self) -> int:
        return len(self.output_ranges)

    def calls(self, helper: str) -> bool:
        """Whether a statement calls a helper (`_window(`, `_unless_nan(`): a template defines only those."""
        statements = [*self.forward, *self.gradients_forward, *self.backward, *self.saving_forward,
                      *self.backward_from_saved]
        return any(helper in line for statement in statements for line in statement.lines)

    @property
    def cache(self) -> list[str]:
        """The names of what backward() reads, in its order: inputs, the output, the arrays forward_saving() kept."""
        return [*self.backward_inputs, *([self.output] if self.output_read else []), *self.saved]


class _Compiler:
    def __init__(self, derivation: Derivation, printed: dict[str, str], dialect: ArrayDialect = NUMPY):
        self.dialect = dialect
        self.spec = derivation.spec
        self.tensor = derivation.tensor
        self.axes = self.tensor.axes
        self.printed = printed
        self.normalised: dict[str, tuple[sp.Expr, sp.Symbol]] = {}  # P → (exponent, the index rows sum over)
        self.logs_needed: set[str] = set()
        self.plain_read: set[str] = set()  # arrays the statement being compiled reads as themselves (not their logs)
        self.derived_read: set[str] = set()  # and the arrays made beside others that it reads (_log_P, _exp_y)
        #: log-softmax arrays y whose exp the forward makes beside them (_exp_y, the softmax: jax.jit computes the
        #: exponentials once for both), and those a statement read
        self.exponentials: set[str] = set()
        self.exponentials_needed: set[str] = set()
        self.temporary = 0
        #: the row blocking the statements are compiled for (None: whole arrays), and the arrays held for a block
        self.block: RowBlocking | None = None
        self.local: set[str] = set()
        #: arrays made by extra lines, by what they hold, for the statements that follow in the same function body
        self.made: dict[tuple[Any, ...], str] = {}
        #: subexpressions the statements compiled together compile more than once (common_subexpressions), and
        #: those already held in a temporary of their own, by (expression, ranges of its indices)
        self.repeated: dict[tuple[Any, ...], int] = {}  # how often each is met
        self.common: dict[tuple[Any, ...], tuple[str, tuple[Any, ...]]] = {}
        #: the statements that have read each temporary so far (numbered), and whether the last reading of one may
        #: update it in place (torch: x − m made once, squared for v, then scaled in place into x̂)
        self.readers: dict[tuple[Any, ...], list[int]] = {}
        self.statement_number = 0
        self.last_reader_updates = True
        self.updated: set[tuple[Any, ...]] = set()  # the temporaries a last reading updates in place
        self.from_zero: set[str] = set()  # sums over rows that start from zeros (no terms without the rows)
        #: temporaries of the backward its one later reading may update in place (torch: dP − r, then ·P, into dP),
        #: by the number of the statement that reads them; those whose own statement made a new array
        self.temporaries: set[str] = set()
        self.read_once_by: dict[str, int] = {}
        self.handed_over: set[str] = set()
        self.gemm = False  # whether a statement of the block being compiled multiplies two matrices

    def size(self, range_name: str) -> str:
        """A range's extent in the arrays the statements make: a block's rows on the blocked range."""
        if self.block is not None and range_name == self.block.blocked:
            return "(_r1 - _r0)"
        return size_variable(range_name)

    # ------------------------------------------------------------ expressions
    def compile(self, e: sp.Expr, ranges: dict[sp.Symbol, str], order: list[sp.Symbol]) -> tuple[str, tuple[Any, ...]]:
        """Array code for e and the indices of its axes. A subexpression the statements compiled together use more
        than once (layer norm's x − m and 1/√(v + ε)) is computed once, into a temporary the others read."""
        if not self.repeated:  # nothing in this scope is met twice: no key to make
            return self.compile_node(e, ranges, order)
        canonical = None if e.is_Atom or isinstance(e, sp.Indexed) else _canonical_indices(e, ranges)
        key = None if canonical is None else _key_of(e, canonical)
        if key in self.common:  # its axes under the names this occurrence gives its indices
            name, canonical_axes = self.common[key]
            named = {c: s for s, c in canonical.items()} if canonical is not None else {}
            readers = self.readers.setdefault(key, [])
            alone = self.statement_number not in readers  # its one reading in this statement
            readers.append(self.statement_number)
            if (self.dialect.chain_in_place and self.last_reader_updates and alone
                    and len(readers) == self.repeated[key]):
                name = f"({name})"  # the last reading: a new array to this statement, updated in place
                self.updated.add(key)
            return name, tuple(named[c] for c in canonical_axes)
        code, have = self.compile_node(e, ranges, order)
        if key in self.repeated and canonical is not None and have and not _CHEAP.fullmatch(code):
            name = self.temp()
            self.pending.append(f"{name} = {code}")
            self.common[key] = (name, tuple(canonical[s] for s in have))
            self.readers[key] = [self.statement_number]
            return name, have
        return code, have

    def compile_node(self, e: sp.Expr, ranges: dict[sp.Symbol, str],
                     order: list[sp.Symbol]) -> tuple[str, tuple[Any, ...]]:
        """Array code for e, its subexpressions through compile."""
        if e.is_Number:
            return (repr(float(e)) if not e.is_Integer else str(int(e))), ()
        if e.is_NumberSymbol:
            return repr(float(e)), ()
        if isinstance(e, sp.Symbol):
            if str(e).startswith("n_") and str(e)[2:] in self.spec.sizes:
                return size_variable(str(e)[2:]), ()  # the spec's size as a value: every row, not a block's
            if e == _ROW_START:
                return "_r0", ()
            if e in ranges:
                if self.block is not None and ranges[e] == self.block.blocked:
                    return self.dialect.arange.format("_r0, _r1"), (e,)
                return self.dialect.arange.format(self.size(ranges[e])), (e,)
            return self.printed[str(e)], ()
        if isinstance(e, sp.Indexed):
            return self.entry(e, ranges, order)
        if isinstance(e, sp.KroneckerDelta):
            first = self.compile(e.args[0], ranges, order)
            second = self.compile(e.args[1], ranges, order)
            want = self.union([first[1], second[1]], order)
            equal = self.dialect.call(self.dialect.equal, self.align(*first, want), self.align(*second, want))
            return equal + self.dialect.float_cast, want
        if e.is_Mul or (e.is_Add and len(e.args) == 2):
            fused = self.fused_softmax(e, ranges, order)
            if fused is not None:
                return fused
        if e.is_Mul:
            return self.product([self.compile(a, ranges, order) for a in e.args], order)
        if e.is_Add:
            # a − b, not −b + a; the axes in the order of the first terms (arrays before the deltas subtracted);
            # each term compiled once, as it is added or subtracted (a log-sum-exp's shift is one line)
            terms = sorted(e.args, key=lambda term: bool(term.could_extract_minus_sign()))
            signs = [bool(term.is_Mul and term.args[0] == -1) for term in terms]
            terms = [-term if negative else term for term, negative in zip(terms, signs)]
            scattered = self.one_hot_added(terms, signs, ranges, order)
            if scattered is not None:
                return scattered
            # a product's factors compiled one by one (torch multiplies in place), unless the product is shared
            factors = [[self.compile(a, ranges, order) for a in term.args]
                       if term.is_Mul and _shared_key(term, ranges) not in self.repeated else None for term in terms]
            pieces = [self.product(parts, order) if parts else self.compile(term, ranges, order)
                      for term, parts in zip(terms, factors)]
            want = self.union([have for _, have in pieces], order)
            aligned = [self.align(code, have, want) for code, have in pieces]
            # a new array of the result's shape goes first and the others update it in place (torch): dy − e^y·s
            # as (e^y·s).neg_().add_(dy), one array allocated instead of two; a product added to it is added by
            # addcmul_, not made first: (g·dy).addcmul_(x̂, c, value=-1)
            owned = [self.owned(code, have, want) for code, have in pieces]
            lead = next((k for k in range(len(terms)) if owned[k] and not signs[k]),
                        next((k for k in range(len(terms)) if owned[k]), 0))
            order_of_terms = [lead, *(k for k in range(len(terms)) if k != lead)]
            if owned[lead]:
                text = f"{aligned[lead]}.neg_()" if signs[lead] else aligned[lead]
                for k in order_of_terms[1:]:
                    parts = sorted(factors[k] or [], key=lambda piece: len(piece[1]))
                    rest = self.product(parts[:-1], order) if len(parts) >= 2 else ("", ())
                    if rest[1] and set(parts[-1][1]) == set(want):  # addcmul_ takes two tensors
                        text += (f".addcmul_({self.align(*parts[-1], want)}, {self.align(*rest, want)}"
                                 f"{', value=-1' if signs[k] else ''})")
                    else:
                        text = f"{text}.{'sub_' if signs[k] else 'add_'}({aligned[k]})"
                return f"({text})", want
            text = ("-" if signs[lead] else "") + aligned[lead]
            for k in order_of_terms[1:]:
                text += (" - " if signs[k] else " + ") + aligned[k]
            return f"({text})", want
        if e.is_Pow:
            base = self.compile(e.base, ranges, order)
            # a scalar stays a Python float (NumPy's weak scalar): float32 arrays stay float32
            root = self.dialect.sqrt if base[1] else self.dialect.scalar_sqrt
            if e.exp == sp.Rational(1, 2):
                return self.entrywise(root, base), base[1]
            if e.exp == -sp.Rational(1, 2):
                return f"(1 / {root}({base[0]}))", base[1]
            if e.exp.is_Integer and e.exp == 2:
                return self.entrywise(f"{self.dialect.namespace}.square", base), base[1]
            if e.exp.is_Integer and e.exp == -1:
                return f"(1 / {base[0]})", base[1]
            exponent = self.compile(e.exp, ranges, order)
            want = self.union([base[1], exponent[1]], order)
            return self.dialect.call(self.dialect.power, self.align(*base, want), self.align(*exponent, want)), want
        if isinstance(e, sp.Sum):
            if e.function.has(guarded_product) and self.dialect.unless_nan("", "") is not None:
                return self.guarded_lazily(e, ranges, order)
            return self.total(e, ranges, order)
        if isinstance(e, guarded_product):
            pieces = [self.compile(a, ranges, order) for a in e.args]
            want = self.union([p[1] for p in pieces], order)
            weight, factor = (self.align(*piece, want) for piece in pieces)
            # never 0·inf: no NaN, no warning
            return f"({weight} * {self.dialect.where(f'{weight} == 0', '0', factor)})", want
        if isinstance(e, sp.log) and isinstance(e.args[0], sp.Indexed) and str(e.args[0].base) in self.normalised:
            name = str(e.args[0].base)
            self.logs_needed.add(name)
            self.logs_read.add(self.printed[name])
            return self.entry(e.args[0], ranges, order, log=True)
        if (log_sum := log_sum_parts(e)) is not None:
            return self.log_sum_exp(log_sum[1], ranges, order, log_sum[0])
        if isinstance(e, sp.exp) and isinstance(e.args[0], sp.Indexed) and str(e.args[0].base) in self.exponentials:
            self.exponentials_needed.add(str(e.args[0].base))
            return self.entry(e.args[0], ranges, order, prefix="_exp_")
        if isinstance(e, (sp.Max, sp.Min)):
            pieces = [self.compile(a, ranges, order) for a in e.args]
            want = self.union([p[1] for p in pieces], order)
            code, array = self.align(*pieces[0], want), bool(pieces[0][1])
            for piece in pieces[1:]:
                code = self.dialect.extreme(isinstance(e, sp.Max), (code, array), (self.align(*piece, want),
                                                                                  bool(piece[1])))
                array = array or bool(piece[1])
            return code, want
        if isinstance(e, sp.Heaviside):
            inner = self.compile(e.args[0], ranges, order)
            return self.dialect.heaviside(inner[0]), inner[1]
        if isinstance(e, Masked):  # a masked softmax's exponent: −inf where the mask is 0
            pieces = [self.compile(a, ranges, order) for a in e.args]
            want = self.union([p[1] for p in pieces], order)
            exponent_code, mask = (self.align(*piece, want) for piece in pieces)
            return self.dialect.where(f"{mask} > 0", exponent_code, f"-{self.dialect.namespace}.inf"), want
        if isinstance(e, Bracket):  # [u ≥ 0] on indices: a 0/1 array over them
            inner = self.compile(e.args[0], ranges, order)
            return f"({inner[0]} >= 0){self.dialect.float_cast}", inner[1]
        function = self.dialect.functions.get(e.func)
        if function is not None and len(e.args) == 1:
            inner = self.compile(e.args[0], ranges, order)
            if not inner[1] and e.func in self.dialect.scalar_functions:  # a Python float, weak beside float32
                return f"{self.dialect.scalar_functions[e.func]}({inner[0]})", ()
            return self.entrywise(function, inner), inner[1]
        raise SoftgradError(f"cannot generate {self.dialect.name} code for {type(e).__name__} in a spec with several "
                            "indices")

    def entry(self, e: sp.Indexed, ranges: dict[sp.Symbol, str], order: list[sp.Symbol],
              log: bool = False, prefix: str = "") -> tuple[str, tuple[Any, ...]]:
        """An array read at these positions; log: its log (_log_P), prefix: an array the forward makes beside it
        (_exp_y)."""
        prefix = "_log_" if log else prefix
        name = prefix + self.printed[str(e.base)]
        if prefix:
            self.derived_read.add(name)
        else:
            self.plain_read.add(str(e.base))
        positions = list(e.indices)
        axes = self.axes.get(str(e.base), ())
        blocked = [a for a, r in enumerate(axes) if self.block is not None and r == self.block.blocked]
        if (all(isinstance(p, sp.Symbol) for p in positions) and len(set(positions)) == len(positions)
                and all(ranges.get(p, r) == r for p, r in zip(positions, axes))):
            if blocked and str(e.base) not in self.local:  # a whole array: the block's rows of it
                name += "[" + ", ".join("_r0:_r1" if a in blocked else ":" for a in range(blocked[-1] + 1)) + "]"
            elif (not prefix and str(e.base) in self.handed_over
                  and self.read_once_by.get(str(e.base)) == self.statement_number):
                name = f"({name})"  # its one reading, after which nothing reads it: a new array to update in place
            return name, tuple(positions)
        if blocked and str(e.base) in self.local:  # held for the block: its rows count from the block's first
            e = e.base[tuple(p - _ROW_START if a in blocked else p for a, p in enumerate(positions))]
            positions = list(e.indices)
        windowed = self.windowed_entry(e, name, ranges)
        if windowed is not None:
            return windowed
        sliced = self.sliced_entry(e, name, ranges, order)
        if sliced is not None:
            return sliced
        first, rest = positions[0], positions[1:]
        if (not blocked and isinstance(first, sp.Indexed) and str(first.base) in self.spec.labels
                and all(isinstance(p, sp.Symbol) and ranges.get(p) == r for p, r in zip(rest, axes[1:]))
                and len(set(rest)) == len(rest) and not first.free_symbols & set(rest)):
            labels, have = self.compile(first, ranges, order)
            if len(have) == 1:  # W[label[b], d]: whole rows picked (W[label]), not entry by entry from two grids
                return f"{name}[{labels}{self.dialect.index_cast}]", (*have, *rest)
        # label picks, repeated indices and shifted positions (x[t + k]): advanced indexing with one index
        # array per axis; a position that may fall outside its axis reads 0 there (a convolution's edge)
        pieces = [self.compile(p, ranges, order) for p in positions]
        want = self.union([p[1] for p in pieces], order)
        grids = [self.align(code, have, want) + self.dialect.index_cast if have else code for code, have in pieces]
        inside, clipped = self.edges(e, dict(enumerate(grids)), ranges)
        code = f"{name}[{', '.join(clipped[a] for a in range(len(grids)))}]"
        return (self.dialect.where(inside, code, "0") if inside else code), want

    def edges(self, e: sp.Indexed, grids: dict[int, str], ranges: dict[sp.Symbol, str]) -> tuple[str, dict[int, str]]:
        """(where every position of e is inside its axis, or "" where none can leave; the index arrays clipped
        into their axes): a shifted read outside an array reads 0, never past its end."""
        outside = [axis for axis in grids if self.may_leave(e, axis, ranges)]
        extents = {axis: self.size(self.axes[str(e.base)][axis]) for axis in outside}
        inside = " & ".join(f"({grids[a]} >= 0) & ({grids[a]} < {extents[a]})" for a in outside)
        return inside, {a: self.dialect.call("clip", grid, "0", f"{extents[a]} - 1") if a in outside else grid
                        for a, grid in grids.items()}

    def windowed_entry(self, e: sp.Indexed, name: str,
                       ranges: dict[sp.Symbol, str]) -> tuple[str, tuple[Any, ...]] | None:
        """x[b, c, t − k] or x[b, c, i + p − 1, j + q − 1] as sliding windows over x (a view, padded with zeros
        where reads leave it), where every other axis is read at its own index: no index arrays, no gathered copy
        of B·C·T·K entries and no mask (einsum turns the windows into the matrix a matrix product reads, as
        im2col does). None where the library has no such view or a position is not u ± v + c."""
        if self.dialect.window("x", "()") is None or self.block is not None:
            return None
        positions, axes = list(e.indices), self.axes.get(str(e.base), ())
        spans, kept, windows = [], list(e.indices), []
        for axis, position in enumerate(positions):
            if isinstance(position, sp.Symbol):
                if ranges.get(position) != axes[axis]:
                    return None
                continue
            offset, rest = position.as_coeff_Add()
            signs: dict[sp.Symbol, int] = {}
            for term in sp.Add.make_args(rest):
                coefficient, symbol = term.as_coeff_Mul()
                if not isinstance(symbol, sp.Symbol) or symbol not in ranges or coefficient not in (1, -1):
                    return None
                signs[symbol] = int(coefficient)
            if not offset.is_Integer or len(signs) != 2 or 1 not in signs.values():
                return None
            # u is added; v (the window's index) is the one subtracted, or of two added the later name
            u, v = sorted(signs, key=lambda symbol: (-signs[symbol], str(symbol)))
            spans.append(f"({axis}, {int(offset)}, {self.size(ranges[u])}, {self.size(ranges[v])}, {signs[v]})")
            kept[axis] = u
            windows.append(v)
        have = (*kept, *windows)
        if not spans or len(set(have)) != len(have):
            return None
        return str(self.dialect.window(name, f"({', '.join(spans)},)")), have

    def sliced_entry(self, e: sp.Indexed, name: str, ranges: dict[sp.Symbol, str],
                     order: list[sp.Symbol]) -> tuple[str, tuple[Any, ...]] | None:
        """x[b, c, t + k] as x[:, :, grid]: the axes read at their own index whole (slices, no index arrays), the
        shifted ones — one block of neighbouring axes — by index arrays over their indices; None where the
        entry is not of that form (a label pick, a repeated index, shifted axes apart)."""
        positions = list(e.indices)
        axes = self.axes.get(str(e.base), ())
        shifted = [a for a, p in enumerate(positions) if p.is_Add or p.is_Mul or p.is_Integer]
        if not shifted or shifted != list(range(shifted[0], shifted[-1] + 1)):
            return None
        plain = [p for a, p in enumerate(positions) if a not in shifted]
        inside_symbols = {s for a in shifted for s in positions[a].free_symbols}
        if (not all(isinstance(p, sp.Symbol) and ranges.get(p) == axes[positions.index(p)] for p in plain)
                or len(set(plain)) != len(plain) or set(plain) & inside_symbols):
            return None
        pieces = [self.compile(positions[a], ranges, order) for a in shifted]
        block = self.union([p[1] for p in pieces], order)
        grids = [self.align(code, have, block) + self.dialect.index_cast if have else code for code, have in pieces]
        have = (*positions[:shifted[0]], *block, *positions[shifted[-1] + 1:])
        inside, clipped = self.edges(e, dict(zip(shifted, grids)), ranges)
        code = f"{name}[{', '.join(clipped.get(a, ':') for a in range(len(positions)))}]"
        return (self.dialect.where(self.align(f"({inside})", block, have), code, "0") if inside else code), have

    def may_leave(self, e: sp.Indexed, axis: int, ranges: dict[sp.Symbol, str]) -> bool:
        """Whether a shifted position of e may fall outside its axis, given the ranges of its indices."""
        position = e.indices[axis]
        if position.is_Symbol or isinstance(position, sp.Indexed) or str(e.base) not in self.axes:
            return False
        row = position + _ROW_START  # b − _r0 in an array held for the block: b runs over the block's rows
        if self.block is not None and row.is_Symbol and ranges.get(row) == self.block.blocked:
            return False
        sizes = self.spec.sizes
        extent = self.spec.derived_sizes.get(self.axes[str(e.base)][axis], sizes[self.axes[str(e.base)][axis]])
        highest = {s: self.spec.derived_sizes.get(r, sizes[r]) - 1 for s, r in ranges.items()}
        return bool(algebra.simplify_brackets(Bracket(position) * Bracket(extent - 1 - position), highest) != 1)

    def guarded_lazily(self, e: sp.Sum, ranges: dict[sp.Symbol, str],
                       order: list[sp.Symbol]) -> tuple[str, tuple[Any, ...]]:
        """Σ t·f with its products guarded (0 where t = 0, never 0·inf) only where the plain sum is NaN: the same
        values (a plain product differs from a guarded one only where it is NaN, and a sum of terms without a NaN
        has none unless it adds +inf to −inf, which the guarded sum then does too), without the guard's passes."""
        plain = e.replace(lambda node: isinstance(node, guarded_product), lambda node: sp.Mul(*node.args))
        unguarded, have = self.total(plain, ranges, order)
        guarded, guarded_have = self.total(e, ranges, order)
        code = self.dialect.unless_nan(unguarded, self.align(guarded, guarded_have, have))
        assert code is not None and set(have) == set(guarded_have)
        return code, have

    def total(self, e: sp.Sum, ranges: dict[sp.Symbol, str], order: list[sp.Symbol]) -> tuple[str, tuple[Any, ...]]:
        bounds = [limit[0] for limit in e.limits]
        inner_order = order + [b for b in reversed(bounds) if b not in order]
        scalars, varying = summand_factors(e, ranges)
        scale = [self.compile(f, ranges, order) for f in scalars]
        missing = [b for b in bounds if not any(b in f.free_symbols for f in varying)]
        product = self.matrix_product(varying, bounds, ranges, order) if len(varying) == 2 else None
        if product is None and len(varying) == 2 and _shared_key(sp.Mul(*varying), ranges) in self.repeated:
            varying = [sp.Mul(*varying)]  # Σ_b dy·x̂ where dx reads dy·x̂ too: the product made once, then summed
        if product is not None:
            code, result = product
        elif len(varying) >= 2:  # einsum takes each operand in its own axis order: none is transposed for it
            pieces = [self.compile(f, ranges, []) for f in varying]
            symbols = self.union([p[1] for p in pieces], inner_order)
            letter = {s: _LETTERS[k] for k, s in enumerate(symbols)}
            result = tuple(s for s in symbols if s not in bounds)
            subscripts = ",".join("".join(letter[s] for s in have) for _, have in pieces)
            # two operands over the same indices (Σ_b dy[b, a]·x[b, a]) are one pass of einsum's own loop: with
            # optimize=True NumPy routes them through tensordot, 50× slower; a batched product (Σ_j P[b, i, j]
            # V[b, j, f]) and three or more operands need its BLAS calls and contraction order
            elementwise = len(pieces) == 2 and set(pieces[0][1]) == set(pieces[1][1])
            if elementwise and not self.dialect.einsum_optimize:  # torch, jax: a product and a sum (einsum is slower)
                have = pieces[0][1]
                result = tuple(s for s in have if s not in bounds)
                code = self.dialect.total(f"({pieces[0][0]} * {self.align(*pieces[1], have)})",
                                          tuple(have.index(b) for b in bounds if b in have))
            else:
                optimize = "" if elementwise or not self.dialect.einsum_optimize else ", optimize=True"
                self.gemm = self.gemm or (not elementwise and sum(len(have) >= 2 for _, have in pieces) >= 2)
                code = (f'{self.dialect.namespace}.einsum("{subscripts}->{"".join(letter[s] for s in result)}", '
                        f'{", ".join(code for code, _ in pieces)}{optimize})')
        elif (varying and self.dialect.einsum_optimize and varying[0].is_Pow and varying[0].exp == 2
              and not varying[0].base.is_Atom):
            # Σ_k d², d an array expression: one pass of einsum over d (np.square would make a second array first)
            inner, have = self.compile(varying[0].base, ranges, [])
            if not _CHEAP.fullmatch(inner):
                held = self.temp()
                self.pending.append(f"{held} = {inner}")
                inner = held
            letter = {s: _LETTERS[k] for k, s in enumerate(have)}
            result = tuple(s for s in have if s not in bounds)
            subscripts = "".join(letter[s] for s in have)
            code = (f'{self.dialect.namespace}.einsum("{subscripts},{subscripts}->{"".join(letter[s] for s in result)}"'
                    f', {inner}, {inner})')
        elif varying:  # summed in the summand's own axis order: nothing is transposed for the sum
            inner, have = self.compile(varying[0], ranges, [])
            axes = tuple(have.index(b) for b in bounds if b in have)
            result = tuple(s for s in have if s not in bounds)
            code = self.dialect.total(inner, axes)
        else:
            code, result = "1", ()
        pieces = [(code, result)] + scale + [(self.size(ranges[b]), ()) for b in missing]
        want = self.union([p[1] for p in pieces], order)
        return "(" + " * ".join(self.align(c, h, want) for c, h in pieces) + ")", want

    def matrix_product(self, factors: list[sp.Expr], bounds: list[sp.Symbol], ranges: dict[sp.Symbol, str],
                       order: list[sp.Symbol]) -> tuple[str, tuple[Any, ...]] | None:
        """Σ_k A_ik B_kj as `A @ B` (transposed views where the axes are the other way round: BLAS reads
        them without a copy), when the sum is one matrix or matrix–vector product."""
        operands = self.matrix_operands(factors, bounds, ranges, order)
        if operands is None:
            return None
        first, second, axes = operands
        return f"({first} @ {second})", axes

    def matrix_operands(self, factors: list[sp.Expr], bounds: list[sp.Symbol], ranges: dict[sp.Symbol, str],
                        order: list[sp.Symbol]) -> tuple[str, str, tuple[Any, ...]] | None:
        """The two operands of matrix_product's `A @ B` (transposed views where they must be) and its axes."""
        if len(bounds) != 1:
            return None
        (bound,) = bounds
        (first, have_first), (second, have_second) = (self.compile(f, ranges, []) for f in factors)
        if bound not in have_first or bound not in have_second or not 1 <= len(have_first) <= 2 \
                or not 1 <= len(have_second) <= 2:
            return None
        left = [s for s in have_first if s != bound]
        right = [s for s in have_second if s != bound]
        if set(left) & set(right) or len(left) + len(right) == 0:
            return None
        if len(left) == 1 and len(right) == 1 and list(self.union([tuple(left + right)], order)) == right + left:
            # the statement wants the other orientation: Σ_k B_kj A_ik computed as Bᵀ Aᵀ, never transposed after
            (first, have_first), (second, have_second) = (second, have_second), (first, have_first)
            left, right = right, left
        if len(have_first) == 2:
            first = first if have_first[1] == bound else f"{first}.T"
        if len(have_second) == 2:
            second = second if have_second[0] == bound else f"{second}.T"
        if len(have_first) == 1:  # v_k B_kj: vector–matrix
            return first, second, tuple(right)
        self.gemm = True  # a matrix–matrix product: BLAS wants tall blocks
        return first, second, tuple(left + right)

    def log_sum_exp(self, total: sp.Sum, ranges: dict[sp.Symbol, str], order: list[sp.Symbol],
                    offset: sp.Expr = sp.S.Zero) -> tuple[str, tuple[Any, ...]]:
        """log(c + Σ_k exp(E)) = M + log(c·exp(−M) + Σ_k exp(E − M)), M the maximum over k (−inf rows stay −inf),
        floored at 0 where c > 0."""
        bounds = [limit[0] for limit in total.limits]
        inner_order = order + [b for b in reversed(bounds) if b not in order]
        exponent, have = self.compile(total.function.args[0], ranges, inner_order)
        axes = tuple(have.index(b) for b in bounds if b in have)
        result = tuple(s for s in have if s not in bounds)
        shift, d = self.temp(), self.dialect
        self.pending.append(f"{shift} = {d.maximum_over(exponent, axes, keepdims=True)}")
        kept = f"{shift} > 0" if offset != 0 else d.call('isfinite', shift)  # floored at 0 beside a constant
        self.pending.append(f"{shift} = {d.where(kept, shift, '0')}")
        difference = f"{exponent} - {shift}"
        exponential = (self.entrywise(f"{d.namespace}.exp", (f"({difference})", have)) if d.chain_in_place
                       else d.call("exp", difference))
        summed = d.total(exponential, axes)
        if offset != 0:
            summed = f"{float(offset)!r} * {d.call('exp', f'-{d.squeeze(shift, axes)}')} + {summed}"
        code = f"({d.squeeze(shift, axes)} + {d.call('log', summed)})"
        return code, result

    def one_hot_added(self, terms: list[sp.Expr], signs: list[bool], ranges: dict[sp.Symbol, str],
                      order: list[sp.Symbol]) -> tuple[str, tuple[Any, ...]] | None:
        """P[b, c] − w·δ(c, label[b]): the other terms made, then w subtracted at one entry per row (a scatter, n_b
        entries), not a one-hot matrix made and subtracted (two passes over P, one of them transposed: 35 ms
        of a softmax regression's 190 in NumPy); None where no term is of that form."""
        for position, term in enumerate(terms):
            deltas = [f for f in sp.Mul.make_args(term) if isinstance(f, sp.KroneckerDelta)]
            if len(deltas) != 1 or len(terms) < 2:
                continue
            index, read = sorted(deltas[0].args, key=lambda a: isinstance(a, sp.Indexed))
            if not (isinstance(index, sp.Symbol) and index in ranges and isinstance(read, sp.Indexed)
                    and str(read.base) in self.spec.labels and len(read.indices) == 1):
                continue
            row = read.indices[0]
            weight = sp.Mul(*[f for f in sp.Mul.make_args(term) if f is not deltas[0]])
            rest = sp.Add(*[-t if negative else t for k, (t, negative) in enumerate(zip(terms, signs))
                            if k != position])
            if row == index or row not in ranges or not (weight.free_symbols & set(ranges)) <= {row} \
                    or set(rest.free_symbols) & set(ranges) != {index, row}:
                continue
            code, have = self.compile(rest, ranges, order)
            if set(have) != {index, row}:
                continue
            labels, _ = self.compile(read, ranges, order)
            at = {row: self.dialect.arange.format(self.size(ranges[row])), index: labels + self.dialect.index_cast}
            subscript = ", ".join(at[axis] for axis in have)
            amount, _ = self.compile(weight, ranges, order)
            key = (code, subscript, amount, signs[position])
            if key in self.made:  # dW and dbias both read P − onehot: made once
                return self.made[key], have
            target, d = self.temp(), self.dialect
            self.made[key] = target
            if d.in_place:
                self.pending += [f"{target} = {code}{'' if self.new_array(code) else d.copy}",
                                 f"{target}[{subscript}] {'-' if signs[position] else '+'}= {amount}"]
            else:
                self.pending.append(f"{target} = {code}.at[{subscript}].add({'-' if signs[position] else ''}{amount})")
            return target, have
        return None

    def fused_softmax(self, e: sp.Expr, ranges: dict[sp.Symbol, str],
                      order: list[sp.Symbol]) -> tuple[str, tuple[Any, ...]] | None:
        """y·(g − Σ_k g·y) or g − exp(y)·Σ_k g along one axis of arrays y and g read at the same indices — the
        backward of a softmax or of a log-softmax, whatever y is — and x − log Σ_k exp(x), a log-softmax, by the
        library's fused kernel where it has one (torch: one pass over the arrays instead of four); None otherwise."""
        if self.dialect.softmax_backward("g", "y", 0, False) is None and self.dialect.log_softmax("x", 0) is None:
            return None  # a library without either kernel (NumPy): nothing to look for
        if e.is_Mul:  # y·(g − Σ g·y), and any other factors (1/T) multiplied after
            for first in e.args:
                for second in e.args:
                    if not (isinstance(first, sp.Indexed) and second.is_Add and len(second.args) == 2):
                        continue
                    for upstream, negated in (second.args, second.args[::-1]):
                        axis = self._summed_axis(-negated, first, upstream, [upstream, first], ranges)
                        fused = None if axis is None else self._fused(upstream, first, axis, False, ranges, order)
                        if fused is not None:
                            rest = [self.compile(a, ranges, order) for a in e.args if a not in (first, second)]
                            return self.product([fused, *rest], order)
            return None
        found = self.log_softmax_of(e, ranges) if self.dialect.log_softmax("x", 0) is not None else None
        if found is not None:  # x − log Σ_k exp(x): the forward of a log-softmax
            code, have = self.compile(found[0], ranges, order)
            if have == tuple(found[0].indices):
                return str(self.dialect.log_softmax(code, found[1])), have
        for first, second in (e.args, e.args[::-1]):
            fused = self._fused_through_log(first, second, ranges, order)
            if fused is not None:
                return fused
            if isinstance(first, sp.Indexed) and (-second).is_Mul and len((-second).args) == 2:
                for exponential, total in ((-second).args, (-second).args[::-1]):
                    if isinstance(exponential, sp.exp) and isinstance(exponential.args[0], sp.Indexed):
                        axis = self._summed_axis(total, exponential.args[0], first, [first], ranges)
                        if axis is not None:
                            return self._fused(first, exponential.args[0], axis, True, ranges, order)
        return None

    def log_softmax_of(self, e: sp.Expr, ranges: dict[sp.Symbol, str]) -> tuple[sp.Indexed, int] | None:
        """(x, axis) where e is x − log Σ_k exp(x) along one axis of the array x; None otherwise."""
        if not (e.is_Add and len(e.args) == 2):
            return None
        for first, second in (e.args, e.args[::-1]):
            logarithm = -second
            if (isinstance(first, sp.Indexed) and isinstance(logarithm, sp.log)
                    and isinstance(logarithm.args[0], sp.Sum) and isinstance(logarithm.args[0].function, sp.exp)):
                total = logarithm.args[0]
                axis = self._summed_axis(sp.Sum(total.function.args[0], *total.limits), first, first, [first], ranges)
                if axis is not None:
                    return first, axis
        return None

    def _fused_through_log(self, first: sp.Expr, second: sp.Expr, ranges: dict[sp.Symbol, str],
                           order: list[sp.Symbol]) -> tuple[str, tuple[Any, ...]] | None:
        """g − P·Σ_k g (or P·Σ_k g − g) with P a normalised exponential of the forward: the backward of a
        log-softmax read through log P, which the forward makes (a cross-entropy's (Σ_k t)·P − t), so that the
        backward keeps log P, not P."""
        negated = first.could_extract_minus_sign()
        upstream, scaled = (-first, second) if negated else (first, -second)
        if not isinstance(upstream, sp.Indexed) or not scaled.is_Mul or len(scaled.args) != 2:
            return None
        for output, total in (scaled.args, scaled.args[::-1]):
            if isinstance(output, sp.Indexed) and str(output.base) in self.normalised:
                axis = self._summed_axis(total, output, upstream, [upstream], ranges)
                fused = None if axis is None else self._fused(upstream, output, axis, True, ranges, order,
                                                              read=sp.log(output))
                if fused is not None:
                    return (f"{fused[0]}.neg_()" if negated else fused[0]), fused[1]
        return None

    @staticmethod
    def _summed_axis(total: sp.Expr, output: sp.Indexed, upstream: sp.Expr, summand: list[sp.Indexed],
                     ranges: dict[sp.Symbol, str]) -> int | None:
        """The axis of `output` a sum over all of it runs along, where `upstream` is read at the same indices and
        the sum adds up the `summand` entries with that index renamed; None if `total` is not such a sum."""
        indices = output.indices
        if (not isinstance(total, sp.Sum) or len(total.limits) != 1 or not isinstance(upstream, sp.Indexed)
                or upstream.indices != indices or len(set(indices)) != len(indices)
                or not all(isinstance(index, sp.Symbol) for index in indices)):
            return None
        bound = total.limits[0][0]
        for axis, index in enumerate(indices):
            if ranges.get(bound) is not None and ranges.get(bound) == ranges.get(index) and \
                    total.function == sp.Mul(*(entry.xreplace({index: bound}) for entry in summand)):
                return axis
        return None

    def _fused(self, upstream: sp.Indexed, output: sp.Indexed, axis: int, log: bool, ranges: dict[sp.Symbol, str],
               order: list[sp.Symbol], read: sp.Expr | None = None) -> tuple[str, tuple[Any, ...]] | None:
        """The fused backward of upstream through output (read: what is read for it, log P for P)."""
        if self.dialect.softmax_backward("g", "y", 0, log) is None:
            return None
        pieces = [self.compile(entry, ranges, order) for entry in (upstream, output if read is None else read)]
        if any(have != tuple(output.indices) for _, have in pieces):  # read as they are stored: no transposition
            return None
        code = self.dialect.softmax_backward(pieces[0][0], pieces[1][0], axis, log)
        return (code, tuple(output.indices)) if code is not None else None

    def product(self, pieces: list[tuple[str, tuple[Any, ...]]], order: list[sp.Symbol]) -> tuple[str, tuple[Any, ...]]:
        """The product of compiled factors. Fewest axes first: (1/n)·c[b]·x̂[b, k] scales the vector, then makes one
        pass over the matrix; of the factors with the most axes, a new array last, scaled in place (torch):
        (dy − s)·y as (dy − s).mul_(y)."""
        if len(pieces) == 1:
            return pieces[0]
        want = self.union([p[1] for p in pieces], order)
        pieces = sorted(pieces, key=lambda piece: (len(piece[1]), self.owned(piece[0], piece[1], want)))
        largest = pieces[-1]
        if not self.owned(largest[0], largest[1], want):
            return "(" + " * ".join(self.align(code, have, want) for code, have in pieces) + ")", want
        # the smaller factors multiplied together while their product stays smaller than the result; one that
        # would make it as large (x̂ beside c[b], γ[k] beside c[b]) scales the result by itself, allocating nothing
        code, group, axes = largest[0], list[str](), set[Any]()
        for piece_code, have in pieces[:-1]:
            if group and axes | set(have) == set(want):
                code += f".mul_({' * '.join(group)})"
                group, axes = [], set()
            group.append(self.align(piece_code, have, want))
            axes |= set(have)
        return f"({code}.mul_({' * '.join(group)}))", want

    def entrywise(self, function: str, argument: tuple[str, tuple[Any, ...]]) -> str:
        """function(argument), in place where the argument is a new array of this statement: torch.exp(a·b) as
        (a·b).exp_() (torch's entrywise functions have in-place methods: exp_, sqrt_, square_, sigmoid_, …)."""
        code, have = argument
        method = self.dialect.in_place_method(function)
        if method is not None and self.owned(code, have, have):
            return f"{code}.{method}()"
        return f"{function}({code})"

    def owned(self, code: str, have: tuple[Any, ...], want: tuple[Any, ...]) -> bool:
        """Whether a value may be updated in place: the dialect has in-place chains (torch), the value has the
        result's every axis, and it is a new array this statement made — a parenthesised operation or a call of
        an entrywise function, not a name, a view or a broadcast of one. A temporary of 16 MB costs fresh
        pages on every call, so each one saved is a pass of memory saved."""
        if not self.dialect.chain_in_place or have != want or not want:
            return False
        return self.new_array(code)

    def new_array(self, code: str) -> bool:
        """Whether code makes a new array (a parenthesised operation or a call of an entrywise function), not a
        name, a view or a broadcast of one."""
        return code.startswith("(") or any(code.startswith(f + "(") for f in self.dialect.functions.values())

    def shape(self, range_names: Iterable[str]) -> str:
        sizes = [self.size(r) for r in range_names]
        return f"({', '.join(sizes)}{',' if len(sizes) == 1 else ''})"

    def temp(self) -> str:
        self.temporary += 1
        return f"_t{self.temporary}"

    @staticmethod
    def union(groups: list[tuple[Any, ...]], order: list[sp.Symbol]) -> tuple[Any, ...]:
        found = [s for group in groups for s in group]
        ranked = [s for s in order if s in found]
        return tuple(ranked + [s for s in dict.fromkeys(found) if s not in ranked])

    def align(self, code: str, have: tuple[Any, ...], want: tuple[Any, ...]) -> str:
        """Array code with axes `have` arranged as `want` (transposed, size-1 axes where it has none)."""
        if have == want or not have:
            return code
        present = [s for s in want if s in have]
        permutation = [have.index(s) for s in present]
        if permutation != list(range(len(have))):
            code = f"{self.dialect.transpose}({code}, {tuple(permutation)})"
        if len(present) != len(want):
            code = f"{code}[{', '.join(':' if s in have else 'None' for s in want)}]"
        return code

    # ------------------------------------------------------------ statements
    def statement(self, definition: Definition, accumulate: bool = False) -> Statement:
        """One definition's lines; accumulate: add a block's part of a sum over rows to the array. An array handed
        over to this reading (read_once) must be read exactly once in the lines printed — a sum compiled twice
        (plain and guarded) or a form that repeats the read would see it updated in place — else the statement
        is printed again without the hand-over."""
        statement = self._statement(definition, accumulate)
        handed = [name for name, number in self.read_once_by.items()
                  if number == self.statement_number and name in self.handed_over]
        text = "\n".join(statement.lines)
        unsafe = {name for name in handed
                  if len(re.findall(rf"(?<![\w.]){re.escape(self.printed[name])}(?!\w)", text)) != 1}
        if not unsafe:
            return statement
        self.handed_over -= unsafe
        return self._statement(definition, accumulate)

    def _statement(self, definition: Definition, accumulate: bool = False) -> Statement:
        self.statement_number += 1
        self.pending: list[str] = []
        self.logs_read: set[str] = set()
        self.plain_read = set()
        self.derived_read = set()
        name = self.printed[definition.name]
        order = list(definition.indices)
        ranges = algebra.definition_ranges(definition, self.axes, self.spec.sizes)
        rows = ""  # a whole array written a block of rows at a time: the slice of the block's rows
        axes = self.axes.get(definition.name, ())
        if self.block is not None and definition.name not in self.local and self.block.blocked in axes:
            blocked = axes.index(self.block.blocked)
            rows = "[" + ", ".join("_r0:_r1" if a == blocked else ":" for a in range(blocked + 1)) + "]"
        normalised = self._normalised(definition)
        if normalised is not None:
            exponent, free = normalised
            code, have = self.compile(exponent, ranges, order)
            full = tuple(definition.indices)
            d = self.dialect
            code = self.align(code, have, full) if set(have) == set(full) else \
                d.call("broadcast_to", self.align(code, have, full), self.shape(ranges[s] for s in full))
            axis = (full.index(free),)
            held = f"_{name}_rows" if rows else name  # a block's rows, then copied into the whole array
            # the library's softmax where it has one; else two arrays allocated (the shifted exponent and the
            # result), every other step in place
            lines = [*self.pending, f"_exponent = {code}", *(d.normalised(held, axis[0]) or [
                f"_shifted = _exponent - _finite({d.maximum_over('_exponent', axis, keepdims=True)})",
                f"{held} = {d.call('exp', '_shifted')}",
                f"_total = {d.total(held, axis, keepdims=True)}",
                f"{held} /= _total",
                f"_log_{name}{rows} = " + (d.call("subtract", "_shifted", d.call("log", "_total"), "out=_shifted")
                                           if d.in_place else f"_shifted - {d.call('log', '_total')}")])]
            if rows:
                lines.append(f"{name}{rows} = {held}")
            self.normalised[definition.name] = normalised
            return Statement(name, lines, self.logs_read, self.names_in(exponent))
        expr = self.stable(definition.expr, set(self.normalised))
        full = tuple(definition.indices)
        target = name + rows
        if accumulate and self.dialect.in_place and not self.dialect.chain_in_place:
            added = self.product_added(expr, target, ranges, order, full, definition.name in self.from_zero)
            if added is not None:
                return Statement(name, [*self.pending, added], self.logs_read, self.reads_of(expr))
        if target != name and not accumulate:
            written = self.multiplied_into(expr, target, ranges, order, full)
            if written is not None:  # the last multiplication writes the block's rows: no temporary copied in
                return Statement(name, [*self.pending, written], self.logs_read, self.reads_of(expr))
        code, have = self.compile(expr, ranges, order)
        if set(have) != set(full):
            shape = self.shape(ranges[s] for s in full)
            code = self.dialect.call("broadcast_to", self.align(code, have, full), shape) + self.dialect.copy
        else:
            code = self.align(code, have, full)
        if definition.name in self.read_once_by and target == name and self.owned(code, full, full):
            self.handed_over.add(definition.name)
        lines = [*self.pending, f"{target} += {code}" if accumulate else
                 f"{target} = {code}" if target != name else f"{name} = {self.dialect.array.format(code)}"]
        found = self.log_softmax_of(expr, ranges) if self.dialect.softmax("x", 0) is not None else None
        if found is not None and target == name:  # its exp, the softmax, beside it: kept if a statement reads it
            exponent, _ = self.compile(found[0], ranges, order)
            lines.append(f"_exp_{name} = {self.dialect.softmax(exponent, found[1])}")
            self.exponentials.add(definition.name)
        return Statement(name, lines, self.logs_read, self.reads_of(expr))

    def product_added(self, expr: sp.Expr, target: str, ranges: dict[sp.Symbol, str], order: list[sp.Symbol],
                      full: tuple[sp.Symbol, ...], from_zero: bool) -> str | None:
        """A block's part of a sum over rows that is a scaled matrix product, s·Σ_b A[b, c]·X[b, d] (dW of softmax
        regression), added by `_add_product`: s scales the smaller operand, not the product, and the first block
        writes the product over the array instead of adding a new one to zeros (at 32000 × 4096 the product and
        its scaled copy were 512 MiB each, fresh pages every call: 2.0 s where the matrix product takes 0.75);
        None where the sum is not of that form."""
        factors = sp.Mul.make_args(expr)
        totals = [f for f in factors if isinstance(f, sp.Sum)]
        if len(totals) != 1 or _shared_key(expr, ranges) in self.repeated:
            return None
        inner_scalars, varying = summand_factors(totals[0], ranges)
        scalars = [f for f in factors if f is not totals[0]] + inner_scalars
        bounds = [limit[0] for limit in totals[0].limits]
        if (len(varying) != 2 or any(_indices(f, ranges) for f in scalars)
                or not all(any(b in f.free_symbols for f in varying) for b in bounds)
                or _shared_key(sp.Mul(*varying), ranges) in self.repeated):
            return None
        operands = self.matrix_operands(varying, bounds, ranges, order)
        if operands is None or operands[2] != full:
            return None
        scale = " * ".join(self.compile(f, ranges, order)[0] for f in scalars) or "1"
        return f"_add_product({target}, {'_r0 == 0' if from_zero else 'False'}, {scale}, {operands[0]}, {operands[1]})"

    def multiplied_into(self, expr: sp.Expr, target: str, ranges: dict[sp.Symbol, str], order: list[sp.Symbol],
                        full: tuple[sp.Symbol, ...]) -> str | None:
        """`np.multiply(a, b, out=dx[_r0:_r1])` for a product with every axis of the result, in a library whose
        functions write into a given array (NumPy); None otherwise."""
        if not (expr.is_Mul and self.dialect.in_place and not self.dialect.chain_in_place
                and _shared_key(expr, ranges) not in self.repeated and _indices(expr, ranges) == set(full)):
            return None
        pieces = sorted((self.compile(a, ranges, order) for a in expr.args), key=lambda piece: len(piece[1]))
        aligned = [self.align(code, have, full) for code, have in pieces]
        return self.dialect.call("multiply", " * ".join(aligned[:-1]), aligned[-1], f"out={target}")

    def read_once(self, definitions: list[Definition]) -> dict[str, int]:
        """The temporaries (self.temporaries: a backward's arrays that are not gradients) that exactly one entry of
        one later statement reads, by the number that statement will have (statement() counts them)."""
        if not self.dialect.chain_in_place:
            return {}
        readings: dict[str, list[int]] = {}
        for position, definition in enumerate(definitions):
            for node in sp.preorder_traversal(definition.expr):
                if isinstance(node, sp.Indexed) and str(node.base) in self.temporaries:
                    readings.setdefault(str(node.base), []).append(position)
        return {name: self.statement_number + 1 + positions[0] for name, positions in readings.items()
                if len(positions) == 1}

    def body(self, definitions: list[Definition], block: RowBlocking | None) -> list[Statement]:
        """One function's statements: as written, or a block of rows at a time as the row blocking says (the
        fixed ranges stay whole axes here: NumPy takes them at once). A statement may read an array an earlier
        one of the same body made."""
        self.made, self.from_zero = {}, set()
        if block is None:
            self.read_once_by, self.handed_over = self.read_once(definitions), set()
            try:
                return self.scoped(definitions)
            finally:
                self.read_once_by, self.handed_over = {}, set()
        parts: dict[int, Definition] = {}
        firsts: dict[int, Definition] = {}
        for position in sorted(block.accumulated):  # each sum over rows starts from its terms that have none
            summed, rest = split_sum_over_rows(definitions[position], self.axes, self.spec.sizes, block)
            parts[position] = dataclasses.replace(definitions[position], expr=summed)
            if rest != 0:
                firsts[position] = dataclasses.replace(definitions[position], expr=rest)
            else:
                self.from_zero.add(definitions[position].name)
        statements = self.scoped([definitions[p] for p in block.before] + list(firsts.values()))
        firsts_made = statements[len(block.before):]
        del statements[len(block.before):]
        for position in sorted(block.accumulated):
            definition = definitions[position]
            name = self.printed[definition.name]
            if position in firsts:  # in an array of its own (np.array copies: the terms may be an input as it is)
                first = firsts_made.pop(0)
                first.lines[-1] = first.lines[-1].replace(f"{name} = np.asarray(", f"{name} = np.array(", 1)
                statements.append(first)
            else:
                shape = self.shape(self.axes.get(definition.name, ()))
                statements.append(Statement(name, [f"{name} = {self.dialect.namespace}.zeros({shape}, dtype=_dtype)"]))
        self.block, self.local, self.made = block, set(block.local), {}
        self.gemm = False
        for position in block.inside:  # whole arrays written a block of rows at a time are made first
            name = definitions[position].name
            axes = self.axes.get(name, ())
            if position not in parts and name not in block.local and block.blocked in axes:
                statements.append(Statement(self.printed[name], [
                    f"{prefix}{self.printed[name]} = {self.dialect.namespace}.empty({shape_of(axes)}, dtype=_dtype)"
                    for prefix in ("", *(["_log_"] if self._normalised(definitions[position]) else []))]))
        inner = self.scoped([parts.get(position, definitions[position]) for position in block.inside],
                            [position in parts for position in block.inside])
        self.block, self.local, self.made = None, set(), {}
        rows = size_variable(block.blocked)
        per_row = " + ".join(" * ".join([*(size_variable(r) for r in self.axes[name] if r != block.blocked), "1"])
                             for name in sorted(block.local))
        sums = " + ".join(" * ".join([*(size_variable(r) for r in ranges), "1"])
                          for ranges in accumulated_ranges(definitions, self.axes, block, False)) or "0"
        # blocks that multiply matrices are tall (BLAS wants them so); others stay in cache, where a pass over a
        # block is cheap and its temporaries are not fresh pages (layer norm: 2.2× faster than in 32 MiB blocks)
        budget = "_BLOCK_BYTES" if self.gemm else "_CACHE_BYTES"
        lines = [f"# {', '.join(sorted(self.printed[n] for n in block.local))}: held for a block of rows of "
                 f"{block.blocked} at a time ({budget} of them), and as many entries as the sums over the rows they "
                 "add into",
                 f"_rows = max(1, min({rows}, max({budget} // (_dtype.itemsize * ({per_row})), "
                 f"-(-({sums}) // ({per_row})))))",
                 f"_rows = -(-{rows} // -(-{rows} // _rows)) if {rows} else 1  # blocks of one size",
                 f"for _r0 in range(0, {rows}, _rows):",
                 f"    _r1 = min(_r0 + _rows, {rows})",
                 *("    " + line for statement in inner for line in statement.lines)]
        statements.append(Statement(", ".join(s.name for s in inner), lines,
                                    set().union(*(s.logs_read for s in inner)), set().union(*(s.reads for s in inner))))
        statements += self.scoped([definitions[p] for p in block.after])
        return statements

    def scoped(self, definitions: list[Definition], accumulate: list[bool] | None = None) -> list[Statement]:
        """The statements of definitions printed one after another in one scope, a subexpression they repeat
        computed once."""
        accumulate = accumulate or [False] * len(definitions)
        forms, made = self.compiled_forms(definitions), dict(self.made)
        self.repeated, self.common, self.readers, self.updated = common_subexpressions(forms), {}, {}, set()
        statements = [self.statement(definition, accumulate=adds) for definition, adds in zip(definitions, accumulate)]
        if any(len(self.readers[key]) > self.repeated[key] for key in self.updated):
            # read more often than the walk counted: a reading thought the last one updated it in place; again,
            # every reading leaving it as it is (and the arrays the statements thrown away made forgotten)
            self.last_reader_updates, self.made = False, made
            statements = self.scoped(definitions, accumulate)
            self.last_reader_updates = True
            return statements
        held = [name for name, _ in self.common.values()]
        self.repeated, self.common, self.readers, self.updated = {}, {}, {}, set()
        return _inline_single_uses(statements, held)

    def compiled_forms(self, definitions: list[Definition]) -> list[tuple[sp.Expr, dict[sp.Symbol, str]]]:
        """What statement() compiles of each definition (a normalised exponential's exponent, else the stable
        array form), with the ranges of its indices."""
        normalised, forms = set(self.normalised), []
        for definition in definitions:
            ranges = algebra.definition_ranges(definition, self.axes, self.spec.sizes)
            found = self._normalised(definition)
            if found is not None:
                normalised.add(definition.name)
                forms.append((found[0], ranges))
            else:
                forms.append((self.stable(definition.expr, normalised), ranges))
        return forms

    def stable(self, expr: sp.Expr, normalised: set[str]) -> sp.Expr:
        """A statement's expression as the array lowering computes it: its stable forms, without the brackets that
        only state where a shifted read is inside its array (a read outside reads 0 here)."""
        return implied_brackets_dropped(stable_array_forms(expr, self.spec, normalised), self.spec, self.axes)

    def reads_of(self, expr: sp.Expr) -> set[str]:
        """What the statement just compiled from expr reads: the names in expr, but a normalised exponential P
        its code reads only as log P (a log-softmax's fused backward) or a log-softmax y read only as exp y is not
        read — the arrays made beside them are (_log_P, _exp_y)."""
        through_others = {name for name in [*self.normalised, *self.exponentials] if name not in self.plain_read}
        return self.names_in(expr) - {self.printed[name] for name in through_others} | self.derived_read

    def names_in(self, expr: sp.Expr) -> set[str]:
        """The printed names an expression reads: arrays (its entries) and parameters."""
        names = {str(e.base) for e in expr.atoms(sp.Indexed)} | {str(s) for s in expr.free_symbols}
        return {self.printed[name] for name in names if name in self.printed}

    def _normalised(self, definition: Definition) -> tuple[sp.Expr, sp.Symbol] | None:
        return algebra.normalised_exponential(definition)


#: array code that reads arrays without computing anything (a name, a slice, a transposed view): never a temporary
_CHEAP = re.compile(r"[A-Za-z_][\w.]*(\[[^\[\]]*\])*(\.T)?")


def _shared_key(e: sp.Expr, ranges: dict[sp.Symbol, str]) -> tuple[Any, ...] | None:
    """What makes two compiled subexpressions the same array: the expression with its indices named by their
    ranges (dy[b, k2]·x̂[b, k2] in dx is dy[b, k]·x̂[b, k] in dγ); None for an entry or a number, never worth a
    temporary."""
    if e.is_Atom or isinstance(e, sp.Indexed):
        return None
    return _key_of(e, _canonical_indices(e, ranges))


def _key_of(e: sp.Expr, canonical: dict[sp.Symbol, sp.Symbol]) -> tuple[Any, ...]:
    return (e.xreplace(canonical), tuple(sorted(str(c) for c in canonical.values())))


def _indices(e: sp.Expr, ranges: dict[sp.Symbol, str]) -> set[sp.Symbol]:
    return {s for s in e.free_symbols if s in ranges}


def _canonical_indices(e: sp.Expr, ranges: dict[sp.Symbol, str]) -> dict[sp.Symbol, sp.Symbol]:
    """e's free indices renamed after their ranges: _k_0, _k_1, … (several of one range in the order of names)."""
    found = sorted((s for s in e.free_symbols if s in ranges), key=lambda s: (ranges[s], str(s)))
    counts: dict[str, int] = {}
    canonical = {}
    for symbol in found:
        position = counts.get(ranges[symbol], 0)
        counts[ranges[symbol]] = position + 1
        canonical[symbol] = sp.Symbol(f"_{ranges[symbol]}_{position}")
    return canonical


def _inline_single_uses(statements: list[Statement], held: list[str]) -> list[Statement]:
    """The statements with a temporary of a shared subexpression written back where it is read once after all (the
    walk counts what compile may not meet twice): a named array is never updated in place, a new one may be
    (NumPy reuses a temporary for `(a·b) − c`)."""
    for statement in statements:  # (_t1) only where it is updated in place: (_t1).mul_(…)
        statement.lines = [re.sub(rf"(?<![\w.\])])\(({'|'.join(held)})\)(?!\.\w+_\()", r"\1", line) if held else line
                           for line in statement.lines]
    for name in held:
        word = re.compile(rf"\b{name}\b")
        uses = sum(len(word.findall(line)) for statement in statements for line in statement.lines)
        if uses != 2:
            continue
        for statement in statements:
            defining = next((line for line in statement.lines if line.lstrip().startswith(f"{name} = ")), None)
            if defining is not None:
                statement.lines.remove(defining)
                code = defining.split(" = ", 1)[1]
                for other in statements:
                    other.lines = [word.sub(lambda _: code, line) for line in other.lines]
                break
    return statements


def summand_factors(total: sp.Sum, ranges: dict[sp.Symbol, str]) -> tuple[list[sp.Expr], list[sp.Expr]]:
    """The factors of a Σ's summand that do not vary with its bounds, and those that do, the latter multiplied
    together where they read the same indices and there are more than two: Σ_b (1 − h²)·dh·X is a matrix
    product of (1 − h²)·dh and X."""
    bounds = {limit[0] for limit in total.limits}
    factors = sp.Mul.make_args(total.function)
    scalars = [f for f in factors if not (f.free_symbols & bounds)]
    varying = [f for f in factors if f.free_symbols & bounds]
    if len(varying) > 2:
        groups: dict[frozenset[sp.Symbol], list[sp.Expr]] = {}
        for factor in varying:
            groups.setdefault(frozenset(s for s in factor.free_symbols if s in ranges), []).append(factor)
        if len(groups) >= 2:
            varying = [sp.Mul(*group) if len(group) > 1 else group[0] for group in groups.values()]
    return scalars, varying


def implied_brackets_dropped(expr: sp.Expr, spec: Spec, axes: dict[str, tuple[str, ...]]) -> sp.Expr:
    """[u ≥ 0]·x[…, p, …] → x[…, p, …] where u is p or (extent − 1 − p): the bracket holds wherever the read is
    inside x, and outside it the read is 0 (a convolution's edges [k ≤ t], [t < k + n_t] beside x[t − k])."""
    def drop(product: sp.Expr) -> sp.Expr:
        implied = set()
        for entry in (f for f in product.args if isinstance(f, sp.Indexed) and str(f.base) in axes):
            for axis, position in enumerate(entry.indices):
                if isinstance(position, sp.Symbol) or not position.free_symbols:
                    continue
                range_name = axes[str(entry.base)][axis]
                extent = spec.derived_sizes.get(range_name, spec.sizes[range_name])
                implied |= {sp.expand(position), sp.expand(extent - 1 - position)}
        kept = [f for f in product.args if not (isinstance(f, Bracket) and sp.expand(f.args[0]) in implied)]
        return product.func(*kept) if len(kept) != len(product.args) else product

    return expr.replace(lambda e: e.is_Mul, drop)


def common_subexpressions(forms: list[tuple[sp.Expr, dict[sp.Symbol, str]]]) -> dict[tuple[Any, ...], int]:
    """The subexpressions compile() meets more than once in these expressions, walked as it walks them (the terms
    of a sum without their signs, the factors of a Σ's summand); one inside a repeated one counts once."""
    seen: set[tuple[Any, ...]] = set()
    repeated: dict[tuple[Any, ...], int] = {}

    def visit(e: sp.Expr, ranges: dict[sp.Symbol, str]) -> None:
        key = _shared_key(e, ranges)
        if key is None:
            return
        if key in seen:
            repeated[key] = repeated.get(key, 1) + 1
            return
        seen.add(key)
        if e.is_Add:
            children = [-term if term.is_Mul and term.args[0] == -1 else term for term in e.args]
        elif isinstance(e, sp.Sum):
            scalars, varying = summand_factors(e, ranges)
            if len(varying) == 2 and _indices(varying[0], ranges) == _indices(varying[1], ranges):
                visit(sp.Mul(*varying), ranges)  # Σ_b dy·x̂, no matrix product: made as one product where repeated
            children = [*scalars, *varying]
        else:
            children = list(e.args)
        for child in children:
            visit(child, ranges)

    for expr, ranges in forms:
        visit(expr, ranges)
    return repeated


def lower_arrays(derivation: Derivation, dialect: ArrayDialect = NUMPY) -> ArrayModule:
    """The array module's parts for a tensor derivation, printed in one array library's dialect."""
    tensor = derivation.tensor
    spec = derivation.spec
    printed = printed_names(derivation)
    compiler = _Compiler(derivation, printed, dialect)
    # the NumPy module runs a block of rows at a time where it can (torch and JAX keep whole arrays: their
    # compilers fuse, and a Python loop would break a traced graph)
    plan = functions(derivation, blocked=dialect is NUMPY)
    forward = compiler.body(plan.forward, plan.forward_block)
    sizes: list[tuple[str, str, int]] = []
    fixed: set[str] = set()
    for name in spec.inputs:
        for axis, range_name in enumerate(tensor.axes.get(name, ())):
            if range_name not in fixed:
                fixed.add(range_name)
                sizes.append((compiler.size(range_name), printed[name], axis))
    # n_t = n_s − n_k + 1 from the shapes of a shifted read's arrays: a formula in other sizes (axis −1)
    solved = dict(spec.size_formulas(sorted(fixed))[0])
    in_variables = {symbol: compiler.size(name) for name, symbol in spec.sizes.items()}
    for range_name, formula in solved.items():
        fixed.add(range_name)
        sizes.append((compiler.size(range_name), integer_formula(formula, in_variables), -1))
    for axis, range_name in enumerate(tensor.axes.get(tensor.upstream, ()) if tensor.upstream else ()):
        if range_name not in fixed:  # a range only the upstream gradient has
            fixed.add(range_name)
            sizes.append((compiler.size(range_name), printed[tensor.upstream], axis))
    for range_name in spec.sizes:
        if range_name not in fixed and range_name not in spec.labels.values():
            raise SoftgradError(f"the size of range {range_name} is not fixed by any input: index it in an input")
    for range_name in spec.labels.values():
        if range_name not in fixed:
            raise SoftgradError(f"the number of classes (range {range_name}) is not fixed by any input array")
    if not plan.blocked:  # the forward statements the backward needs, a body of their own (not forward()'s: a
        # statement left out may hold a subexpression the others share)
        gradients_forward = compiler.body([d for d in plan.forward if d.name in plan.needed], None)
        # the backward's own arrays, not its results: what nothing reads after its one reading may be updated there
        compiler.temporaries = {d.name for d in plan.backward} - set(tensor.gradients.values())
        backward = compiler.body(plan.backward, None)
        compiler.temporaries = set()
    else:
        gradients_forward, backward = [], compiler.body(plan.gradients, plan.gradients_block)
    saving_forward: list[Statement] = []
    from_saved: list[Statement] = []
    pair = saving(derivation, plan) if dialect is NUMPY else None  # torch and JAX keep what their backward reads
    if pair is not None:
        saving_forward = compiler.body(plan.forward, pair.forward_block) if pair.saved else []
        from_saved = compiler.body(pair.backward, pair.backward_block)
    kept = {f"_log_{printed[n]}" for n in compiler.logs_needed} | {
        f"_exp_{printed[n]}" for n in compiler.exponentials_needed}
    for statement in [*forward, *gradients_forward, *backward, *saving_forward, *from_saved]:
        # log P, exp y only where a statement reads them
        statement.lines = [line for line in statement.lines if not (line.lstrip().startswith(("_log_", "_exp_"))
                                                                    and line.split()[0].split("[")[0] not in kept)]
    if dialect.normalised("P", 0) is not None:  # the library's softmax, one line: left out where nothing reads P
        read = set().union(*(statement.reads for statement in [*forward, *gradients_forward, *backward]))
        unread = {printed[name] for name in compiler.normalised} - read - {printed[spec.output.name]}
        for statement in [*forward, *gradients_forward, *backward]:
            if statement.name in unread:
                statement.lines = [line for line in statement.lines if not line.startswith(f"{statement.name} = ")]
    inputs = [(printed[name], name, tensor.axes.get(name, ())) for name in spec.inputs]
    return ArrayModule(
        inputs=inputs, labels={printed[k]: v for k, v in spec.labels.items()},
        parameters=[printed[p] for p in spec.parameters], sizes=sizes, forward=forward,
        output=printed[spec.output.name], output_is_scalar=not spec.output.is_vector, backward=backward,
        upstream=printed[tensor.upstream] if tensor.upstream else None,
        gradients=[(printed[name], printed[gradient]) for name, gradient in tensor.gradients.items()],
        output_ranges=tuple(tensor.axes.get(spec.output.name, ())), gradients_forward=gradients_forward,
        divided=[(name, compiler.size(name)) for name in divided_sizes(derivation)],
        blocked=plan.blocked or bool(pair and (pair.forward_block or pair.backward_block)),
        saving_forward=saving_forward, saved=[saved_name(name, printed) for name in pair.saved] if pair else [],
        output_read=bool(pair and pair.output_read),
        backward_inputs=[printed[name] for name in pair.inputs_read] if pair else [], backward_from_saved=from_saved)


def emit_arrays_numpy(derivation: Derivation, header: dict[str, Any], render: Any) -> str:
    """The NumPy module's text."""
    module = lower_arrays(derivation)
    return str(render("numpy/arrays.py.j2", module=module, cache_names=module.cache,
                      **checked_arrays(derivation, printed_names(derivation)), **header))
