"""Lowering of derivations with several index ranges to C99: BLAS for the contractions, fused loops for the rest.

Each statement is a loop nest over its indices, row-major arrays read by flat offsets. A statement that is a
contraction of two arrays (Σ_d W[c, d]·X[b, d], possibly scaled and plus an elementwise term, possibly batched
over leading indices) is one gemm call per batch entry: factors that are not arrays of the spec ((P − T)[b, c])
are first written to a work array. Everything else is loops the compiler vectorizes (`omp simd`, softgrad's
branch-free exp and log, the one C printer of codegen.backends.printers): a sum is computed in a loop of its own,
hoisted to the outermost loop where all its free indices are bound, and accumulated in double whatever the
element type. A normalised exponential is shifted by its row maximum, exp computed once per entry (stashed
in the output, then scaled), and its log written as (E − max − log Σ) where it is read; any other log Σ exp(E)
is M + log Σ exp(E − M), M the maximum of E. Where the row-blocking
pass (codegen.lower.blocking) finds one, a function runs a block of rows at a time: its n × n work arrays (attention's
S, P, dP, dS) are held for one block, the sums over rows accumulate block after block (a gemm writes the first
block's part over the array, beta 0, and adds the others), extra memory O(rows·n). A costly part of a statement
that does not change along its innermost loop (1/√(v[b] + ε)) is computed once outside it. Besides forward() and
gradients(), the pair forward_saving() and backward() that codegen.lower.plan.saving plans: the forward writes what the
backward reads and would otherwise make again.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import sympy as sp

from softgrad.codegen.backends.c import vector_math
from softgrad.codegen.backends.printers import CKernelPrinter
from softgrad.codegen.build import RECOMMENDED_FLAGS
from softgrad.codegen.lower.blocking import RowBlocking, accumulated_ranges, split_sum_over_rows
from softgrad.codegen.lower.kernel import guarded_product
from softgrad.codegen.lower.plan import (
    checked_arrays,
    divided_sizes,
    functions,
    printed_names,
    saved_name,
    saving,
)
from softgrad.codegen.lower.rows import log_sum_parts, stable_array_forms
from softgrad.derive import algebra
from softgrad.derive.spec import Definition
from softgrad.derive.steps import Derivation
from softgrad.derive.symbols import Bracket, Masked
from softgrad.errors import SoftgradError

#: where a gemm's block starts on the blocked axis: the block's first row
_ROW_START = sp.Symbol("_r0", integer=True)


class _Printer(CKernelPrinter):
    """The C printer of every kernel, with entries as flat offsets, indices as loop variables and sums as the
    double temporaries that hold them (read rounded once to the element type)."""

    def __init__(self, compiler: _Compiler, dtype: str) -> None:
        super().__init__(dtype, vector_exp=True)
        self.compiler = compiler

    def _print_Indexed(self, expr: Any) -> str:
        return self.compiler.entry(expr)

    def _print_Symbol(self, expr: Any) -> str:
        return self.compiler.symbol(expr)

    def _print_Pow(self, expr: Any) -> Any:
        if expr.exp == -sp.S.Half:
            return f"(1/sqrt{self.suffix}({self._print(expr.base)}))"
        if expr.exp == 2:
            base = self._print(expr.base)
            return f"(({base})*({base}))"
        return super()._print_Pow(expr)

    def _print_KroneckerDelta(self, expr: Any) -> str:
        if not all(a.is_Symbol or isinstance(a, sp.Indexed) for a in expr.args):
            first, second = (self.compiler.signed(a) for a in expr.args)
        else:
            first, second = (self.compiler.position(a) for a in expr.args)
        return f"(softgrad_real)(({first}) == ({second}))"

    def _print_Bracket(self, expr: Any) -> str:
        return f"(softgrad_real)({self.compiler.signed(expr.args[0])} >= 0)"

    _print_Edge = _print_Bracket  # a padded read's edge (SymPy's code printers look a function up by its name)

    def _print_Masked(self, expr: Any) -> str:  # a masked softmax's exponent: −inf where the mask is 0
        return f"(({self._print(expr.args[1])}) > 0 ? ({self._print(expr.args[0])}) : -INFINITY)"

    def _print_Sum(self, expr: Any) -> str:  # pragma: no cover - every sum is hoisted before printing
        raise SoftgradError("internal: a sum reached the C printer")


@dataclass
class CStatement:
    comment: str
    lines: list[str]


@dataclass
class WorkArray:
    """An array a function allocates: its name, its extents as C expressions (`_rows` for a block's rows), type."""

    name: str
    extents: tuple[str, ...]
    type: str = "softgrad_real"


@dataclass
class CBody:
    """One function's statements, the work arrays it allocates, and the lines that size them first."""

    statements: list[CStatement]
    work: list[WorkArray]
    setup: list[str] = field(default_factory=list)


@dataclass
class CModule:
    """What the C templates print."""

    inputs: list[tuple[str, tuple[str, ...], bool]]  # (printed name, ranges, is a label)
    parameters: list[str]
    ranges: list[str]
    output: str
    output_ranges: tuple[str, ...]
    output_is_scalar: bool
    forward: CBody
    gradients_body: CBody  # gradients(): the forward statements it needs, then the backward ones
    backward_body: CBody  # backward(): from the inputs it reads and what forward_saving() kept
    forward_saving: CBody | None  # forward() that also writes `saved` (None: it keeps nothing but the output)
    saved: list[tuple[str, tuple[str, ...]]]  # (printed name, ranges) of what forward_saving() keeps
    output_read: bool  # whether backward() reads the output
    backward_inputs: list[tuple[str, tuple[str, ...], bool]]  # the inputs backward() reads, as `inputs` lists them
    upstream: str | None
    gradients: list[tuple[str, str, tuple[str, ...]]]  # (input, gradient name, ranges)
    blas: bool = False  # whether a statement calls gemm
    budgets: list[str] = field(default_factory=list)  # the byte budgets its blocks of rows are sized by
    divided: list[str] = field(default_factory=list)  # ranges it divides by the size of: empty ones are refused

    @property
    def cache(self) -> list[str]:
        """The names of what backward() reads, in its order: inputs, the output, the arrays forward_saving() kept."""
        return [*(name for name, _, _ in self.backward_inputs), *([self.output] if self.output_read else []),
                *(name for name, _ in self.saved)]


@dataclass
class _Operand:
    """One side of a contraction: an array's entry as written, or a factor to write to a work array first."""

    expr: sp.Expr
    indices: tuple[sp.Symbol, ...]  # its axes, in memory order
    array: sp.Indexed | None  # the spec's array it reads as is, if it is one
    batched: bool = True  # whether it has the batch axes (else the same matrix serves every batch entry)


@dataclass
class _Gemm:
    """Σ_K alpha·first[batch, M, K]·second[batch, K, N] into the statement's array [batch, M, N] (either
    operand's M/K or K/N axes may be the other way round: a transposed operand)."""

    alpha: sp.Expr
    first: _Operand
    second: _Operand
    batch: tuple[sp.Symbol, ...]
    rows: tuple[sp.Symbol, ...]  # M
    columns: tuple[sp.Symbol, ...]  # N
    inner: tuple[sp.Symbol, ...]  # K


class _Compiler:
    def __init__(self, derivation: Derivation, printed: dict[str, str], dtype: str, openmp: bool = False):
        self.openmp = openmp
        self.dtype = dtype
        self.spec = derivation.spec
        self.axes = dict(derivation.tensor.axes)
        self.printed = printed
        self.loop_names: dict[sp.Symbol, str] = {}
        self.temporaries = 0
        self.printer = _Printer(self, dtype)
        self.normalised: set[str] = set()
        self.logs_needed: set[str] = set()
        #: work arrays the statements compiled so far add
        self.scratch: list[WorkArray] = []
        #: the row blocking the statements are compiled for (None: whole arrays)
        self.block: RowBlocking | None = None
        #: arrays held for one block of rows: name → how many leading (fixed) axes they drop
        self.local: dict[str, int] = {}
        #: the current statement's indices over fixed ranges: bound by the block's loops, not its own
        self.fixed_symbols: set[sp.Symbol] = set()
        self.ranges: dict[sp.Symbol, str] = {}  # the current statement's indices → their ranges
        self.blas = False
        #: (factor with its axes as positions, ranges) → the work array a gemm operand was written to
        self.written: dict[tuple[sp.Expr, tuple[str, ...]], str] = {}
        self.first_block_writes: set[str] = set()  # sums over rows from 0 whose first block writes them (gemm, beta 0)
        self.suffix = "f" if dtype == "float32" else ""

    # ------------------------------------------------------------ pieces the printer asks for
    def size(self, range_name: str) -> str:
        return f"_n_{range_name}"

    def symbol(self, symbol: sp.Symbol) -> str:
        if symbol in self.loop_names:
            return f"(softgrad_real){self.loop_names[symbol]}"
        name = str(symbol)
        if name.startswith("_s"):  # a sum, accumulated in double: rounded once to the element type
            return f"(softgrad_real){name}" if self.dtype == "float32" else name
        if name.startswith("_"):
            return name  # another temporary of the generator's own
        if name.startswith("n_") and name[2:] in self.spec.sizes:
            return f"(softgrad_real){self.size(name[2:])}"
        if name in self.spec.inputs:  # a scalar input (T) is passed as a pointer to its one value
            return f"{self.printed[name]}[0]"
        return self.printed[name]

    def position(self, expr: sp.Expr) -> str:
        """An index position as a size_t expression: a loop variable or a label's entry."""
        if isinstance(expr, sp.Symbol) and expr in self.loop_names:
            return self.loop_names[expr]
        if expr == _ROW_START:
            return "_r0"
        if isinstance(expr, sp.Indexed):
            return f"(size_t){self.entry(expr)}"
        return f"(size_t)({self.signed(expr)})"

    def signed(self, expr: sp.Expr) -> str:
        """Integer arithmetic on indices and sizes (t + k, s − k, n_t − 1 − s) as a ptrdiff_t expression."""
        if expr.is_Integer:
            return f"(ptrdiff_t){int(expr)}" if expr < 0 else str(int(expr))
        if isinstance(expr, sp.Symbol):
            if expr in self.loop_names:
                return f"(ptrdiff_t){self.loop_names[expr]}"
            if str(expr).startswith("n_") and str(expr)[2:] in self.spec.sizes:
                return f"(ptrdiff_t){self.size(str(expr)[2:])}"
        if expr.is_Add:  # added terms first, then those subtracted, the number last: (t + k), (s - k - 1)
            constant, rest = expr.as_independent(*expr.free_symbols, as_Add=True)
            terms = sorted(sp.Add.make_args(rest), key=lambda t: (bool(t.could_extract_minus_sign()), str(t)))
            text = ""
            for term in terms:
                negative = bool(term.could_extract_minus_sign())
                printed = self.signed(-term if negative else term)
                text += (" - " if negative else " + ") + printed if text else ("-" if negative else "") + printed
            if constant:
                text += f" {'-' if constant < 0 else '+'} {abs(int(constant))}"
            return f"({text})"
        if expr.is_Mul and expr.args[0].is_Integer:
            return f"{int(expr.args[0])} * {self.signed(sp.Mul(*expr.args[1:]))}"
        raise SoftgradError(f"cannot use {expr} as an index in C")

    def array(self, expr: sp.Indexed) -> tuple[str, tuple[str, ...], str]:
        """(its printed name, its ranges, the name it is held for one block under) of an entry's array."""
        name = str(expr.base)
        if name.startswith("_log_"):  # the log array of a normalised definition
            return "_log_" + self.printed[name[5:]], self.axes[name[5:]], name[5:]
        if name.startswith("_c"):  # a factor written to a work array before a gemm
            return name, self.axes[name], name
        return self.printed[name], self.axes[name], name

    def entry(self, expr: sp.Indexed) -> str:
        array, ranges, key = self.array(expr)
        dropped = self.local.get(key)  # None: the whole array
        offset = ""
        for axis, position in enumerate(expr.indices):
            if dropped is not None and axis < dropped:
                continue  # a fixed index: the block holds one value of it
            if dropped is not None and self.block is not None and ranges[axis] == self.block.blocked:
                index, size = "0" if position == _ROW_START else f"({self.position(position)} - _r0)", "_rows"
            else:
                index, size = self.position(position), self.size(ranges[axis])
            offset = f"({offset}) * {size} + {index}" if offset else index
        read = f"{array}[{offset}]" if offset else f"{array}[0]"
        # a shifted position outside its axis reads 0 (a convolution's edge, padding), never past the array
        inside = [f"{self.signed(p)} >= 0 && {self.signed(p)} < (ptrdiff_t){self.size(ranges[axis])}"
                  for axis, p in enumerate(expr.indices) if not (p.is_Symbol or isinstance(p, sp.Indexed))]
        return f"(({' && '.join(inside)}) ? {read} : (softgrad_real)0)" if inside else read

    def code(self, expr: sp.Expr) -> str:
        return str(self.printer.doprint(expr))

    # ------------------------------------------------------------ loop nests
    def loops(self, symbols: list[sp.Symbol], ranges: dict[sp.Symbol, str], body: list[str],
              simd: str | None = None) -> list[str]:
        """`for` loops over symbols (outermost first) around body; simd: the innermost loop's `omp simd`
        clauses ("" for none) when its body is straight-line code the compiler can vectorize."""
        lines = body
        running = [symbol for symbol in symbols if symbol not in self.fixed_symbols]  # the block's loops bind those
        for position, symbol in enumerate(reversed(running)):
            variable = self.loop_names[symbol]
            pragma = []
            straight = not any(line.lstrip().startswith(("for ", "#")) for line in lines)
            if position == 0 and simd is not None and straight:
                pragma = [f"#pragma omp simd{simd}"]
            start, end = ("_r0", "_r1") if self.is_blocked(ranges[symbol]) else ("0", self.size(ranges[symbol]))
            lines = [*pragma, f"for (size_t {variable} = {start}; {variable} < {end}; ++{variable}) {{",
                     *["    " + line for line in lines], "}"]
        return lines

    def is_blocked(self, range_name: str) -> bool:
        return self.block is not None and range_name == self.block.blocked

    def allocate(self, name: str, ranges: tuple[str, ...], ctype: str = "softgrad_real") -> None:
        """A work array for the statements compiled now: held for one block where one holds its rows."""
        if self.block is not None and self.block.blocked in ranges:
            self.local[name] = 0
        self.scratch.append(WorkArray(name, work_extents(ranges, self.block if name in self.local else None, 0),
                                      ctype))

    def bind(self, symbols: list[sp.Symbol]) -> None:
        for symbol in symbols:
            self.loop_names.setdefault(symbol, f"_ix_{symbol}")

    def nest(self, expr: sp.Expr, loops: list[sp.Symbol], ranges: dict[sp.Symbol, str],
             assign: Any, simd: str = "", hoist: bool = True) -> list[str]:
        """Loops over `loops` around `assign(printed expr)`, each sum of expr computed at the outermost
        level where its free indices are bound (and, where hoist, each costly part that is invariant along the
        innermost loop: invariants_hoisted)."""
        self.bind(loops)
        expr, shifts = self.shifted_log_sums(expr)
        sums = outermost_sums(expr)
        levels: dict[int, list[tuple[sp.Sum, sp.Symbol]]] = {}
        replacements = {}
        for total in sorted(sums, key=sp.default_sort_key):
            free = algebra.index_symbols(total) - {limit[0] for limit in total.limits}
            level = max((loops.index(s) + 1 for s in free if s in loops), default=0)
            self.temporaries += 1
            temporary = sp.Symbol(f"_s{self.temporaries}")
            levels.setdefault(level, []).append((total, temporary))
            replacements[total] = temporary
        depths = {temporary: level for level, found in levels.items() for _, temporary in found}
        depths.update({shifts[total][0]: level for level, found in levels.items() for total, _ in found
                       if total in shifts})  # a shift is known where its sum is: what reads it waits until there
        invariant: dict[int, list[tuple[sp.Symbol, sp.Expr]]] = {}
        value = expr.xreplace(replacements)
        value = self.invariants_hoisted(value, loops, depths, invariant) if hoist else value
        assigned = assign(self.code(value))
        inner = assigned if isinstance(assigned, list) else [assigned]
        for depth in range(len(loops), -1, -1):
            before = [line for total, temporary in levels.get(depth, [])
                      for line in [*(self.maximum(shifts[total], ranges) if total in shifts else []),
                                   *self.reduction(total, temporary, ranges)]]
            before += [f"softgrad_real {temporary} = {self.code(hoisted)};"
                       for temporary, hoisted in invariant.get(depth, [])]
            inner = before + inner
            if depth > 0:
                inner = self.loops([loops[depth - 1]], ranges, inner, simd if depth == len(loops) else None)
        return inner

    def invariants_hoisted(self, expr: sp.Expr, loops: list[sp.Symbol], depths: dict[sp.Symbol, int],
                           hoisted: dict[int, list[tuple[sp.Symbol, sp.Expr]]]) -> sp.Expr:
        """expr with each costly part that does not change along the innermost loop (a division or a function of
        outer indices: layer norm's 1/√(v[b] + ε), −Σ/n) read from a temporary computed once where its indices are
        bound (`hoisted`, by depth) — a multiplication per entry instead of a division or a call."""
        innermost = len(loops)

        def level(e: sp.Expr) -> int:
            return max([*(loops.index(s) + 1 for s in algebra.index_symbols(e) if s in loops),
                        *(depths.get(s, 0) for s in e.free_symbols)], default=0)

        def costly(e: sp.Expr) -> bool:
            return any(isinstance(a, sp.Function) or (a.is_Pow and not (a.exp.is_Integer and a.exp > 0))
                       for a in sp.preorder_traversal(e) if isinstance(a, sp.Expr))

        def temporary(e: sp.Expr) -> sp.Symbol:
            self.temporaries += 1
            name = sp.Symbol(f"_h{self.temporaries}")
            hoisted.setdefault(level(e), []).append((name, e))
            return name

        def walk(e: sp.Expr) -> sp.Expr:
            if e.is_Atom or isinstance(e, (sp.Indexed, Bracket, Masked, sp.KroneckerDelta, guarded_product)):
                return e
            if level(e) < innermost:
                return temporary(e) if costly(e) else e
            if e.is_Mul:
                outer = [f for f in e.args if level(f) < innermost]
                if outer and costly(sp.Mul(*outer)):
                    return sp.Mul(temporary(sp.Mul(*outer)), *(walk(f) for f in e.args if level(f) == innermost))
            return e.func(*(walk(a) for a in e.args))

        return walk(expr) if innermost else expr

    def shifted_log_sums(self, expr: sp.Expr) -> tuple[sp.Expr, dict[sp.Sum, tuple[sp.Symbol, sp.Sum, bool]]]:
        """expr with each log(c + Σ_k exp(E)) (c ≥ 0 a constant) written M + log(c·exp(−M) + Σ_k exp(E − M)), M the
        maximum of E over k, floored at 0 where c > 0 (so that it stays finite where exp(E) overflows, and c·exp(−M)
        where E is very negative), and for each new sum its M, the sum of E that M is the maximum of, and the
        floor."""
        shifts: dict[sp.Sum, tuple[sp.Symbol, sp.Sum, bool]] = {}

        def shifted(logarithm: sp.Expr) -> sp.Expr:
            parts = log_sum_parts(logarithm)
            assert parts is not None  # walk asked
            offset, total = parts
            self.temporaries += 1
            shift = sp.Symbol(f"_m{self.temporaries}")
            exponent = total.function.args[0]
            new_total = sp.Sum(sp.exp(exponent - shift), *total.limits)
            shifts[new_total] = (shift, sp.Sum(exponent, *total.limits), offset != 0)
            return shift + sp.log(offset * sp.exp(-shift) + new_total)

        def walk(e: sp.Expr) -> sp.Expr:  # a log-sum inside another sum is shifted where that sum is computed
            if isinstance(e, sp.Sum) or e.is_Atom or isinstance(e, sp.Indexed):
                return e
            if log_sum_parts(e) is not None:
                return shifted(e)
            arguments = [walk(argument) for argument in e.args]
            return e.func(*arguments) if arguments != list(e.args) else e

        return walk(expr), shifts

    def maximum(self, shift: tuple[sp.Symbol, sp.Sum, bool], ranges: dict[sp.Symbol, str]) -> list[str]:
        """`shift` = the maximum of a sum's terms over its indices (0 where it is not finite: a row of −inf), from
        0 up where it is floored."""
        name, total, floored = shift
        bounds = [limit[0] for limit in reversed(total.limits)]
        s = self.suffix
        return [f"softgrad_real {name} = {'0' if floored else '-INFINITY'};",
                *self.nest(total.function, bounds, ranges, lambda code: f"{name} = softgrad_max{s}({name}, {code});",
                           simd=f" reduction(max:{name})"),
                f"if (!isfinite({name})) {name} = 0;  // a row of -inf: a harmless shift"]

    def reduction(self, total: sp.Sum, temporary: sp.Symbol, ranges: dict[sp.Symbol, str]) -> list[str]:
        """`temporary` = the sum, accumulated in double in loops of its own (`ranges` knows its indices)."""
        bounds = [limit[0] for limit in reversed(total.limits)]
        return [f"double {temporary} = 0.0;",
                *self.nest(total.function, bounds, ranges, lambda code: f"{temporary} += {code};",
                           simd=f" reduction(+:{temporary})")]

    # ------------------------------------------------------------ statements
    def statement(self, definition: Definition, target: str, accumulate: bool = False,
                  overwrite: bool = True) -> CStatement:
        """The lines computing one definition. accumulate: add one block's part of a sum over rows to what
        target holds; overwrite: a running total written over target each block is also right (nothing else
        was put in it first)."""
        ranges = algebra.definition_ranges(definition, self.axes, self.spec.sizes)
        self.loop_names, self.ranges = {}, ranges
        self.fixed_symbols = {s for s, r in ranges.items() if self.block is not None and r in self.block.fixed}
        for symbol in self.fixed_symbols:
            self.loop_names[symbol] = f"_blk_{ranges[symbol]}"
        loops = list(definition.indices)
        assign = "+=" if accumulate else "="

        expr = self.with_logs(stable_array_forms(definition.expr, self.spec, self.normalised))
        normalised = self.normalised_form(definition)
        comment = f"{definition.name}[{', '.join(map(str, definition.indices))}]" if loops else definition.name
        if normalised is not None:
            return CStatement(comment, self.threaded(self.normalised_statement(definition, normalised, ranges),
                                                     definition.indices))
        if not loops:
            return CStatement(comment, self.nest(expr, [], ranges, lambda code: f"{target}[0] {assign} {code};"))
        self.bind(loops)
        written = sp.IndexedBase(definition.name)[tuple(loops)]
        flat = self.entry(written)
        contracted = self.contractions(definition, expr)
        if contracted is not None:
            gemms, rest = contracted
            lines = [] if rest == 0 else self.threaded(
                self.nest(rest, loops, ranges, lambda code: f"{flat} {assign} {code};"), definition.indices)
            # a sum over rows from 0 that this gemm writes first: the first block writes it (beta 0), not added to
            # zeros written before (a pass over dW, 512 MiB for 32000 classes, saved and not read back)
            first_block = (accumulate and overwrite and rest == 0 and self.block is not None and not self.block.fixed)
            if first_block:
                self.first_block_writes.add(target)
            for number, gemm in enumerate(gemms):
                beta = "(_r0 == 0 ? 0 : 1)" if first_block and number == 0 else \
                    "1" if accumulate or number or rest != 0 else "0"
                lines += self.gemm(gemm, written, ranges, beta)
            return CStatement(comment + " (BLAS gemm)", lines)
        expr, lines = self.hoisted(expr, definition.indices, ranges)
        comment += " (its contractions by BLAS gemm)" if lines else ""
        across = self.across_rows(expr, loops, ranges, flat) if overwrite else None
        if across is not None:
            return CStatement(comment, lines + across)
        return CStatement(comment, lines + self.threaded(
            self.nest(expr, loops, ranges, lambda code: f"{flat} {assign} {code};"), definition.indices))

    def across_rows(self, expr: sp.Expr, loops: list[sp.Symbol], ranges: dict[sp.Symbol, str],
                    flat: str) -> list[str] | None:
        """A sum over a leading axis of what it reads (dbias[c] = Σ_b dz[b, c]) with the loops turned
        inside out: rows outer, the statement's entries inner, accumulated in a double array — reading memory
        in order instead of one entry per row. None where the statement is not such a sum."""
        sums = outermost_sums(expr)
        if len(sums) != 1 or sums[0].function.has(sp.Sum):
            return None
        total = sums[0]
        bounds = [limit[0] for limit in reversed(total.limits)]
        if algebra.index_symbols(total) - set(bounds) != set(loops) or not any(
                position < len(entry.indices) - 1 and entry.indices[position] in bounds
                and set(entry.indices[position + 1:]) & set(loops)
                for entry in total.atoms(sp.Indexed) for position in range(len(entry.indices))):
            return None
        self.bind(bounds + loops)
        self.temporaries += 1
        sums_name = f"_a{self.temporaries}"
        self.scratch.append(WorkArray(sums_name, work_extents(tuple(ranges[s] for s in loops), None, 0), "double"))
        offset = ""
        for symbol in loops:
            variable = self.loop_names[symbol]
            offset = f"({offset}) * {self.size(ranges[symbol])} + {variable}" if offset else variable
        accumulate = self.nest(total.function, bounds + loops, ranges,
                               lambda code: f"{sums_name}[{offset}] += {code};")
        value = expr.xreplace({total: sp.Symbol(f"_s_{sums_name}")})
        write = self.nest(value, loops, ranges, lambda code: f"{flat} = {code};", hoist=False)  # reads _s_ by index
        return [*accumulate,
                *[line.replace(f"_s_{sums_name}", f"(softgrad_real){sums_name}[{offset}]") for line in write]]

    def hoisted(self, expr: sp.Expr, indices: tuple[sp.Symbol, ...],
                ranges: dict[sp.Symbol, str]) -> tuple[sp.Expr, list[str]]:
        """expr with each sum inside it that is a contraction over two arrays (tanh(Σ_d W[j, d]·X[b, d])) read
        from a work array that a gemm call fills first, and the lines that fill them."""
        lines: list[str] = []
        replacements = {}
        for total in outermost_sums(expr):  # an inner sum of another sum is computed inside its loops
            free = algebra.index_symbols(total) - {limit[0] for limit in total.limits} - self.fixed_symbols
            target = tuple(s for s in indices if s in free)
            gemm = self.contraction(total, target) if len(target) == len(free) else None
            if gemm is None:
                continue
            self.temporaries += 1
            name = f"_c{self.temporaries}"
            self.axes[name] = tuple(ranges[s] for s in target)
            self.allocate(name, self.axes[name])
            lines += self.gemm(gemm, sp.IndexedBase(name)[target], ranges, "0")
            replacements[total] = sp.IndexedBase(name)[target]
        return expr.xreplace(replacements), lines

    def threaded(self, lines: list[str], indices: tuple[sp.Symbol, ...]) -> list[str]:
        """With --openmp, the statement's loop over its array's first index shared among threads: each
        iteration writes its own entries and sums in its own order, so every thread count gives the same
        bits. (A sum over all entries, such as a loss, stays on one thread.) In a block of rows, the loop over
        the block's rows or the first index after the fixed ones; the blocks themselves run in order."""
        running = [s for s in indices if s not in self.fixed_symbols]
        if not self.openmp or not running:
            return lines
        start = "_r0" if self.is_blocked(self.ranges.get(running[0], "")) else "0"
        outer = f"for (size_t {self.loop_names[running[0]]} = {start};"  # at the top level: the statement's loop
        threaded: list[str] = []
        for line in lines:
            if line.startswith(outer):
                threaded.append("#pragma omp parallel for schedule(static)")
            threaded.append(line)
        return threaded

    def with_logs(self, expr: sp.Expr) -> sp.Expr:
        """log(P[…]) of a normalised P read from its log array (E − max − log Σ, never log of an underflow)."""
        def replace(e: sp.Expr) -> sp.Expr:
            entry = e.args[0]
            self.logs_needed.add(str(entry.base))
            return sp.IndexedBase("_log_" + str(entry.base))[entry.indices]

        return expr.replace(lambda e: isinstance(e, sp.log) and isinstance(e.args[0], sp.Indexed)
                            and str(e.args[0].base) in self.normalised, replace)

    def normalised_form(self, definition: Definition) -> tuple[sp.Expr, sp.Symbol] | None:
        form = algebra.normalised_exponential(definition)
        if form is not None:
            self.normalised.add(definition.name)
        return form

    def normalised_statement(self, definition: Definition, form: tuple[sp.Expr, sp.Symbol],
                             ranges: dict[sp.Symbol, str]) -> list[str]:
        """Per row: the maximum m of E, exp(E − m) stashed in the output while Σ accumulates in double,
        then every entry scaled by 1/Σ (and its log written as E − m − log Σ where it is read)."""
        exponent, free = form
        outer = [s for s in definition.indices if s != free]
        self.bind([*outer, free])
        flat = self.entry(sp.IndexedBase(definition.name)[tuple(definition.indices)])
        self.temporaries += 1
        shift, total, scale = f"_m{self.temporaries}", f"_t{self.temporaries}", f"_r{self.temporaries}"
        s = self.suffix
        body = [f"softgrad_real {shift} = -INFINITY;",
                *self.nest(exponent, [free], ranges, lambda code: f"{shift} = softgrad_max{s}({shift}, {code});",
                           simd=f" reduction(max:{shift})"),
                f"if (!isfinite({shift})) {shift} = 0;  // a row of -inf: a harmless shift",
                f"double {total} = 0.0;",
                *self.nest(exponent, [free], ranges,
                           lambda code: [f"{flat} = softgrad_exp{s}({code} - {shift});", f"{total} += {flat};"],
                           simd=f" reduction(+:{total})"),
                f"const softgrad_real {scale} = (softgrad_real)(1.0 / {total});"]
        write = [f"{flat} *= {scale};"]
        if definition.name in self.logs_needed:
            body.append(f"const softgrad_real _l{self.temporaries} = (softgrad_real)log({total});")
            write.insert(0, f"_log_{flat} = ({{code}} - {shift}) - _l{self.temporaries};")
        body += self.nest(exponent, [free], ranges, lambda code: [line.replace("{code}", code) for line in write])
        return self.loops(outer, ranges, body) if outer else body

    # ------------------------------------------------------------ functions, a block of rows at a time
    def taken_scratch(self) -> list[WorkArray]:
        """The work arrays the statements compiled since the last call added (one function's)."""
        taken, self.scratch = self.scratch, []
        return taken

    def body(self, definitions: list[Definition], block: RowBlocking | None) -> list[CStatement]:
        """One function's statements: as written, or as the row blocking says — some once before, the rest
        for every block of rows (the sums over rows added block after block), some once after."""
        self.written = {}  # a factor written for a gemm in another function is not written in this one
        if block is None:
            return [self.statement(d, self.printed[d.name]) for d in definitions]
        statements = [self.statement(definitions[p], self.printed[definitions[p].name]) for p in block.before]
        parts: dict[int, tuple[Definition, bool]] = {}
        zeros: dict[str, CStatement] = {}  # the sums over rows that start from zeros, by the array they fill
        for position in sorted(block.accumulated):  # each sum over rows starts from the terms that have none
            definition = definitions[position]
            target = self.printed[definition.name]
            summed, rest = split_sum_over_rows(definition, self.axes, self.spec.sizes, block)
            if rest != 0:
                statements.append(self.statement(dataclasses.replace(definition, expr=rest), target))
            else:
                extent = " * ".join(self.size(r) for r in self.axes.get(definition.name, ()))
                zeros[target] = CStatement(f"{definition.name}: a sum over the blocks of rows, from 0", [
                    f"memset({target}, 0, {extent} * sizeof(softgrad_real));" if extent else f"{target}[0] = 0;"])
                statements.append(zeros[target])
            parts[position] = (dataclasses.replace(definition, expr=summed), rest == 0)
        self.block, self.written, self.first_block_writes = block, {}, set()
        self.local = {name: len(block.fixed) for name in block.local}
        made: dict[int, CStatement] = {}
        for position in block.inside:
            definition, overwrite = parts.get(position, (definitions[position], True))
            made[position] = self.statement(definition, self.printed[definition.name],
                                            accumulate=position in parts, overwrite=overwrite)
        # the statements at a row fused into one pass over the rows; the sums over the rows after it, each a pass
        # of its own (fused, their accumulators and the row's arrays overflowed L1: 1.2x slower on layer norm)
        by_row = [made[p] for p in block.inside if p not in parts]
        fused = None if self.openmp or len(by_row) < 2 else fused_rows(by_row)
        unfused = made.values() if fused is None else [made[p] for p in block.inside if p in parts]
        inner = [*(fused or []), *(line for statement in unfused for line in (f"// {statement.comment}",
                                                                           *statement.lines))]
        self.block, self.local, self.written, self.fixed_symbols = None, {}, {}, set()
        rows = self.size(block.blocked)
        for target in self.first_block_writes:  # zeros only where no block runs, for a sum the first block writes
            zeros[target].comment += ", written by the first block (zeros only where there is none)"
            zeros[target].lines = [f"if ({rows} == 0) {line}" for line in zeros[target].lines]
        lines = [f"for (size_t _r0 = 0; _r0 < {rows}; _r0 += _rows) {{",
                 f"    const size_t _r1 = {rows} - _r0 < _rows ? {rows} : _r0 + _rows;",
                 *(["    (void)_r1;"] if not any("_r1" in line for line in inner) else []),
                 *("    " + line for line in inner), "}"]
        for fixed in reversed(block.fixed):
            lines = [f"for (size_t _blk_{fixed} = 0; _blk_{fixed} < {self.size(fixed)}; ++_blk_{fixed}) {{",
                     *("    " + line for line in lines), "}"]
        held = ", ".join(sorted(block.local))
        one_at_a_time = f", {', '.join(block.fixed)} one value at a time" if block.fixed else ""
        statements.append(CStatement(f"{held}: held for a block of rows of {block.blocked}{one_at_a_time}", lines))
        statements += [self.statement(definitions[p], self.printed[definitions[p].name]) for p in block.after]
        return statements

    # ------------------------------------------------------------ contractions through BLAS
    def contractions(self, definition: Definition, expr: sp.Expr) -> tuple[list[_Gemm], sp.Expr] | None:
        """The statement as gemm calls and an elementwise rest, or None where a term with a sum is not a
        contraction of two arrays laid out for gemm (those stay loops)."""
        gemms, rest = [], []
        for term in sp.Add.make_args(expr):
            if not term.has(sp.Sum):
                rest.append(term)
                continue
            gemm = self.contraction(term, tuple(s for s in definition.indices if s not in self.fixed_symbols))
            if gemm is None:
                return None
            gemms.append(gemm)
        return (gemms, sp.Add(*rest)) if gemms else None

    def contraction(self, term: sp.Expr, target: tuple[sp.Symbol, ...]) -> _Gemm | None:
        sums = [f for f in sp.Mul.make_args(term) if isinstance(f, sp.Sum)]
        if len(sums) != 1 or sums[0].function.has(sp.Sum):
            return None
        total = sums[0]
        alpha = term / total
        inner = tuple(limit[0] for limit in total.limits)
        if algebra.index_symbols(alpha) - self.fixed_symbols or alpha.atoms(sp.Indexed):
            return None
        groups: dict[frozenset[sp.Symbol], list[sp.Expr]] = {}
        for factor in sp.Mul.make_args(total.function):
            indices = frozenset(algebra.index_symbols(factor) - self.fixed_symbols)
            if not indices:
                alpha *= factor
                continue
            groups.setdefault(indices, []).append(factor)
        for smaller in sorted(groups, key=len):  # a factor over fewer indices joins one over more
            larger = next((other for other in groups if other != smaller and smaller < other), None)
            if larger is not None:
                groups[larger] += groups.pop(smaller)
        if len(groups) != 2:
            return None
        (first_set, first), (second_set, second) = groups.items()
        if not set(inner) <= first_set & second_set or (first_set | second_set) - set(inner) != set(target):
            return None
        # the batch: the leading indices of the target that both operands have, and those after them that one
        # operand has alone (a convolution's b: the kernel's matrix serves every row), as few as the rest allows
        common = {s for s in target if s in first_set and s in second_set}
        for count in range(len(target) + 1):
            batch = target[:count]
            rest = target[count:]
            rows = tuple(s for s in rest if s in first_set and s not in second_set)
            columns = tuple(s for s in rest if s in second_set and s not in first_set)
            if common <= set(batch) and rest in (rows + columns, columns + rows) and all(
                    set(batch) <= side or not set(batch) & side for side in (first_set, second_set)):
                break
        else:
            return None
        if not (rows or columns):
            return None
        if target[len(batch):] == columns + rows:  # (AB)ᵀ = BᵀAᵀ: the operands swap
            first, second, rows, columns = second, first, columns, rows
        elif target[len(batch):] != rows + columns:
            return None
        first_batch = batch if set(batch) <= first_set else ()
        second_batch = batch if set(batch) <= second_set else ()
        a = self.operand(sp.Mul(*first), first_batch, rows, inner)
        if a is None:
            return None
        order = a.indices[len(first_batch):]
        inner = tuple(s for s in order if s in inner) or inner  # the inner axes as the first operand has them
        b = self.operand(sp.Mul(*second), second_batch, columns, inner)
        if b is None:
            return None
        inner_b = tuple(s for s in b.indices[len(second_batch):] if s in inner)
        if inner_b != inner:
            a = self.operand(sp.Mul(*first), first_batch, rows, inner_b, written=True)
            if a is None:
                return None
            inner = inner_b
        gemm = _Gemm(alpha, a, b, batch, rows, columns, inner)
        layouts = (a.indices, b.indices, target)
        if self.block is not None and not all(self.contiguous(layout, gemm) for layout in layouts):
            return None  # a block's rows would not be one strided matrix there: loops instead
        return gemm

    def contiguous(self, layout: tuple[sp.Symbol, ...], gemm: _Gemm) -> bool:
        """Whether a block of rows of an array laid out so is one strided matrix for the gemm: the blocked
        index, if it has it, leads its group (batch, rows, columns or inner)."""
        for group in (gemm.batch, gemm.rows, gemm.columns, gemm.inner):
            in_order = [s for s in layout if s in group]
            if any(self.is_blocked(self.ranges[s]) for s in in_order[1:]):
                return False
        return True

    def operand(self, factor: sp.Expr, batch: tuple[sp.Symbol, ...], outer: tuple[sp.Symbol, ...],
                inner: tuple[sp.Symbol, ...], written: bool = False) -> _Operand | None:
        """The factor as a gemm operand: an array of the spec whose axes are batch, then outer and inner
        each in one piece (either first), or else a work array laid out batch, outer, inner."""
        leading = 0  # fixed indices first in memory: the block's offset, not an axis of the operand
        if isinstance(factor, sp.Indexed):
            while leading < len(factor.indices) and factor.indices[leading] in self.fixed_symbols:
                leading += 1
        if (isinstance(factor, sp.Indexed) and not written and str(factor.base) not in self.spec.labels
                and all(isinstance(p, sp.Symbol) and p not in self.fixed_symbols for p in factor.indices[leading:])):
            indices = tuple(factor.indices[leading:])
            rest = indices[len(batch):]
            inner_as_read = tuple(s for s in rest if s in inner)
            if (len(set(indices)) == len(indices) and indices[:len(batch)] == batch
                    and rest in (outer + inner_as_read, inner_as_read + outer)
                    and set(rest) == set(outer) | set(inner)):
                return _Operand(factor, indices, factor, bool(batch))
        # a work array, laid out as the entries it reads are (so that writing it reads them in order)
        layouts = [batch + outer + inner, batch + inner + outer]
        reads = [tuple(e.indices) for e in sorted(factor.atoms(sp.Indexed), key=sp.default_sort_key)]
        chosen = next((layout for read in reads for layout in layouts
                       if tuple(s for s in read if s in layout) == tuple(s for s in layout if s in read)
                       and len(set(read) & set(layout)) > 1), layouts[0])
        return _Operand(factor, chosen, None, bool(batch))

    def gemm(self, gemm: _Gemm, target: sp.Indexed, ranges: dict[sp.Symbol, str], beta: str) -> list[str]:
        """The gemm call (one per batch entry) writing target, after the loops that write its operands that are
        not arrays of the spec; beta: 1 adds to what target holds, 0 writes over it."""
        self.blas = True
        lines = []
        pointers, keys = [], []
        for operand in (gemm.first, gemm.second):
            if operand.array is not None:
                pointers.append(self.pointer(operand.array))
                keys.append(str(operand.array.base))
                continue
            positions = {s: sp.Symbol(f"_p{number}") for number, s in enumerate(operand.indices)}
            key = (operand.expr.xreplace(positions), tuple(ranges[s] for s in operand.indices))
            if key not in self.written:  # the same factor, laid out the same way, is written once
                self.temporaries += 1
                name = self.written[key] = f"_c{self.temporaries}"
                self.axes[name] = key[1]
                self.allocate(name, key[1])
                self.bind(list(operand.indices))
                flat = self.entry(sp.IndexedBase(name)[operand.indices])
                lines += self.threaded(self.nest(operand.expr, list(operand.indices), ranges,
                                                 lambda code, flat=flat: f"{flat} = {code};"), operand.indices)
            pointers.append(self.written[key])
            keys.append(self.written[key])

        def extent(symbols: tuple[sp.Symbol, ...]) -> str:
            return " * ".join("(_r1 - _r0)" if self.is_blocked(ranges[s]) else self.size(ranges[s])
                              for s in symbols) or "1"

        m, n, k = extent(gemm.rows), extent(gemm.columns), extent(gemm.inner)
        first_rest = gemm.first.indices[len(gemm.batch) if gemm.first.batched else 0:]
        second_rest = gemm.second.indices[len(gemm.batch) if gemm.second.batched else 0:]
        transpose_first = bool(gemm.rows) and first_rest[0] not in gemm.rows
        transpose_second = bool(gemm.columns) and second_rest[0] in gemm.columns
        alpha = self.code(gemm.alpha)
        target_pointer = self.pointer(target)
        # leading dimensions and batch strides: from the arrays' extents (a block's rows may be fewer)
        lead_first, lead_second, lead_target = (m if transpose_first else k), (k if transpose_second else n), n
        strides = [f"({m}) * ({k})", f"({k}) * ({n})", f"({m}) * ({n})"]
        if self.block is not None:
            target_rest = tuple(s for s in target.indices if s not in self.fixed_symbols)[len(gemm.batch):]
            layouts = [(keys[0], first_rest, len(gemm.inner if transpose_first else gemm.rows)),
                       (keys[1], second_rest, len(gemm.columns if transpose_second else gemm.inner)),
                       (str(target.base), target_rest, len(gemm.rows))]
            lead_first, lead_second, lead_target = (self.held(key, rest[first:], ranges)
                                                    for key, rest, first in layouts)
            strides = [self.held(key, rest, ranges) for key, rest, _ in layouts]

        def at(pointer: str, block: str, batched: bool = True) -> str:  # the batch entry's block of an array
            return f"{pointer} + _batch * {block}" if gemm.batch and batched else pointer

        call = (f"SOFTGRAD_GEMM(CblasRowMajor, {'CblasTrans' if transpose_first else 'CblasNoTrans'}, "
                f"{'CblasTrans' if transpose_second else 'CblasNoTrans'}, (int)({m}), (int)({n}), (int)({k}), "
                f"{alpha}, {at(pointers[0], strides[0], gemm.first.batched)}, (int)({lead_first}), "
                f"{at(pointers[1], strides[1], gemm.second.batched)}, (int)({lead_second}), "
                f"{beta}, {at(target_pointer, strides[2])}, (int)({lead_target}));")
        if not gemm.batch:
            return [*lines, call]
        return [*lines, f"for (size_t _batch = 0; _batch < {extent(gemm.batch)}; ++_batch) {{", "    " + call, "}"]

    def held(self, key: str, axes: tuple[sp.Symbol, ...], ranges: dict[sp.Symbol, str]) -> str:
        """The number of entries an array holds along these axes of it (`_rows` on the blocked axis of an
        array held for one block)."""
        return " * ".join("_rows" if key in self.local and self.is_blocked(ranges[s]) else self.size(ranges[s])
                          for s in axes) or "1"

    def pointer(self, entry: sp.Indexed) -> str:
        """Where a gemm's part of an array starts: its fixed indices at the block's values and the blocked one at
        the block's first row (an array held for one block starts there), every other index at 0."""
        array, axis_ranges, key = self.array(entry)
        if self.block is None or key in self.local:
            return array
        terms = []
        for axis, position in enumerate(entry.indices):
            if position in self.fixed_symbols:
                start = self.loop_names[position]
            elif self.is_blocked(axis_ranges[axis]):
                start = "_r0"
            else:
                continue
            terms.append(" * ".join([start, *(self.size(r) for r in axis_ranges[axis + 1:])]))
        return f"{array} + {' + '.join(terms)}" if terms else array


def fused_rows(statements: list[CStatement]) -> list[str] | None:
    """A block's statements as one loop over its rows that does each statement's work for a row in turn, so that
    the next statement finds the row in L1 cache, not in L2 (layer norm's backward: six passes over each row),
    or None where a statement is not one such loop between declarations and lines after it (a gemm call reads
    the whole block). Legal because a block reads what it writes at its own rows only (softgrad.codegen.lower.blocking):
    the lines after a loop, which finish a sum over the rows, may wait until every statement has run."""
    header: str | None = None
    before: list[str] = []
    rows: list[str] = []
    after: list[str] = []
    for statement in statements:
        lines = statement.lines
        start = next((k for k, line in enumerate(lines) if line.startswith("for (") and "= _r0;" in line), None)
        if start is None or any(not line.startswith(("double ", "softgrad_real ", "float ")) for line in lines[:start]):
            return None
        if header is not None and lines[start] != header:
            return None
        header = lines[start]
        end = lines.index("}", start)
        if any("SOFTGRAD_GEMM" in line for line in lines):
            return None
        before += lines[:start]
        rows += [f"    // {statement.comment}", *lines[start + 1:end]]
        after += lines[end + 1:]
    if header is None:
        return None
    return [*before, header, *rows, "}", *after]


def outermost_sums(expr: sp.Expr) -> list[sp.Sum]:
    """The sums of expr that no other sum holds, in a fixed order. A sum may be both inside another and
    outside it (Σ_k e^x[k] in a denominator, also inside Σ_i …): it is an outermost one too."""
    found: dict[sp.Sum, None] = {}

    def walk(node: sp.Basic) -> None:
        if isinstance(node, sp.Sum):
            found.setdefault(node)
            return
        for argument in node.args:
            walk(argument)
    walk(expr)
    return sorted(found, key=sp.default_sort_key)


def work_extents(ranges: tuple[str, ...], block: RowBlocking | None, dropped: int) -> tuple[str, ...]:
    """A work array's extents in C: its sizes, or for one held for a block of rows, `_rows` on the blocked
    axis and its `dropped` leading (fixed) axes left out."""
    if block is None:
        return tuple(f"_n_{r}" for r in ranges)
    return tuple("_rows" if r == block.blocked else f"_n_{r}" for r in ranges[dropped:])


def block_setup(block: RowBlocking | None, work: list[WorkArray], accumulated: list[tuple[str, ...]],
                budget: str = "SOFTGRAD_BLOCK_BYTES") -> list[str]:
    """The lines that choose a block's rows: as many as fill the budget (SOFTGRAD_BLOCK_BYTES where the block
    calls gemm, which wants tall blocks; SOFTGRAD_CACHE_BYTES where it makes only passes over rows, which should
    find the block in cache) with the arrays held for one block, but no fewer than hold as many entries as the
    arrays the blocks add into (accumulated_ranges), at least one, at most all."""
    held = [array for array in work if "_rows" in array.extents]
    if block is None or not held:
        return []
    per_row = " + ".join(" * ".join([*(e for e in array.extents if e != "_rows"), f"sizeof({array.type})"])
                         for array in held)
    row_entries = " + ".join(" * ".join([*(e for e in array.extents if e != "_rows"), "1"]) for array in held)
    sums = " + ".join(" * ".join([*(f"_n_{r}" for r in ranges), "(size_t)1"]) for ranges in accumulated) or "0"
    rows = f"_n_{block.blocked}"
    return [f"// {', '.join(a.name for a in held)}: held for a block of rows of {block.blocked} at a time",
            f"size_t _rows = (size_t){budget} / ({per_row});",
            f"const size_t _least = ({sums} + ({row_entries}) - 1) / ({row_entries});"
            "  // as many entries as the sums over the rows it adds into",
            "if (_rows < _least) _rows = _least;",
            "if (_rows < 1) _rows = 1;",
            f"if (_rows > {rows}) _rows = {rows};",
            f"if (_rows > 0) _rows = ({rows} + ({rows} + _rows - 1) / _rows - 1) / (({rows} + _rows - 1) / _rows);"
            "  // blocks of one size, not a short last one"]


def lower_arrays_c(derivation: Derivation, dtype: str = "float64", openmp: bool = False) -> CModule:
    tensor, spec = derivation.tensor, derivation.spec
    printed = printed_names(derivation)
    compiler = _Compiler(derivation, printed, dtype, openmp)
    for definition in spec.definitions:  # which normalised arrays need their log (scan first)
        compiler.normalised_form(definition)
    plan = functions(derivation)
    for definition in [*spec.definitions, *plan.backward]:  # as statement() reads them: log(q/P) is log q − log P
        compiler.with_logs(stable_array_forms(definition.expr, spec, compiler.normalised))
    output = spec.output

    def work(names: list[str], block: RowBlocking | None, logged: list[str] | None = None) -> list[WorkArray]:
        """The work arrays: `names`, and the logs of `logged` (default: of names) that a statement reads."""
        logged = names if logged is None else logged
        arrays = []
        for prefix, group in (("", names), ("_log_", [n for n in sorted(compiler.logs_needed) if n in logged])):
            for name in group:
                held = block if block is not None and name in block.local else None
                arrays.append(WorkArray(prefix + printed[name], work_extents(
                    tensor.axes.get(name, ()), held, len(held.fixed) if held else 0)))
        return arrays

    forward = compiler.body(plan.forward, plan.forward_block)
    forward_scratch = compiler.taken_scratch()
    forward_body = CBody(forward, work(plan.forward_work, plan.forward_block) + forward_scratch)
    if not plan.blocked:  # the forward statements as forward() has them
        statements = [statement for statement, definition in zip(forward, plan.forward)
                      if definition.name in plan.needed] + compiler.body(plan.backward, None)
        scratch = forward_scratch + compiler.taken_scratch()
    else:
        statements = compiler.body(plan.gradients, plan.gradients_block)
        scratch = compiler.taken_scratch()
    gradients_body = CBody(statements, work(plan.gradients_work, plan.gradients_block) + scratch)

    def kept_array(name: str) -> tuple[str, tuple[str, ...]]:  # printed name and ranges of a kept array or log
        array = name if name in printed else name.removeprefix("_log_")
        return saved_name(name, printed), tensor.axes.get(array, ())

    pair = saving(derivation, plan)
    saving_body = CBody(compiler.body(plan.forward, pair.forward_block) if pair.saved else [], [])
    saving_body.work = work(pair.forward_work, pair.forward_block, [  # a kept array's log may be work, not kept
        d.name for d in spec.definitions if f"_log_{d.name}" not in pair.saved]) + compiler.taken_scratch()
    backward_body = CBody(compiler.body(pair.backward, pair.backward_block), [])
    backward_body.work = work(pair.backward_work, pair.backward_block) + compiler.taken_scratch()
    budgets = set()
    for body, block, definitions in ((forward_body, plan.forward_block, plan.forward),
                                     (gradients_body, plan.gradients_block, plan.gradients),
                                     (saving_body, pair.forward_block, plan.forward),
                                     (backward_body, pair.backward_block, pair.backward)):
        calls_gemm = any("SOFTGRAD_GEMM(" in line for statement in body.statements for line in statement.lines)
        budget = "SOFTGRAD_BLOCK_BYTES" if calls_gemm else "SOFTGRAD_CACHE_BYTES"
        body.setup = block_setup(block, body.work, accumulated_ranges(definitions, tensor.axes, block, True)
                                 if block is not None else [], budget)
        budgets |= {budget} if body.setup else set()
    return CModule(
        inputs=[(printed[n], tensor.axes.get(n, ()), n in spec.labels) for n in spec.inputs],
        parameters=[printed[p] for p in spec.parameters], ranges=list(spec.sizes), output=printed[output.name],
        output_ranges=tuple(tensor.axes.get(output.name, ())), output_is_scalar=not output.is_vector,
        forward=forward_body, gradients_body=gradients_body,
        upstream=printed[tensor.upstream] if tensor.upstream else None,
        gradients=[(printed[n], printed[g], tensor.axes[n]) for n, g in tensor.gradients.items()],
        blas=compiler.blas, budgets=sorted(budgets), forward_saving=saving_body if pair.saved else None,
        saved=[kept_array(name) for name in pair.saved], output_read=pair.output_read,
        backward_inputs=[(printed[n], tensor.axes.get(n, ()), n in spec.labels) for n in pair.inputs_read],
        backward_body=backward_body, divided=divided_sizes(derivation))


def emit_arrays_c(derivation: Derivation, header: dict[str, Any], render: Any, module_name: str,
                  dtype: str, openmp: bool = False) -> tuple[dict[str, str], bool]:
    """The C source, header and ctypes loader, and whether the source calls BLAS (it then links one)."""
    module = lower_arrays_c(derivation, dtype, openmp)
    flags = RECOMMENDED_FLAGS + (["-fopenmp"] if openmp else [])
    context = dict(header, module=module, name=module_name, dtype=dtype, openmp=openmp, cache_names=module.cache,
                   **checked_arrays(derivation, printed_names(derivation)),
                   ctype="double" if dtype == "float64" else "float", helper_types=vector_math.helper_types(dtype),
                   compile_flags=" ".join(flags), gemm="dgemm" if dtype == "float64" else "sgemm")
    files = {f"{module_name}.h": str(render("c/arrays.h.j2", **context)),
             f"{module_name}.c": str(render("c/arrays.c.j2", **context)),
             f"{module_name}_ctypes.py": str(render("c/arrays_loader.py.j2", **context))}
    return files, module.blas

