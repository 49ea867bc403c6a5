"""Lowering of tensor derivations (several index ranges) to C99 loop nests.

Each statement is a loop nest over its indices, row-major arrays read by flat offsets. A sum is computed
in a loop of its own, hoisted to the outermost loop where all its free indices are bound (Σ_k exp(z_bk)
once per row b, not once per entry). A normalised exponential is computed with its row maximum shift,
and its log as (E − max − log Σ). Contractions are plain loops (correct, not BLAS-fast): each statement
that is a matrix product says in a comment which BLAS call would replace it. Arithmetic is printed by
SymPy's C99 printer; <tgmath.h> picks the float or double functions for the element type (softgrad_real: a name
no spec can take).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import sympy as sp
from sympy.printing.c import C99CodePrinter

from softgrad.codegen.tensor_numpy import backward_definitions, checked_arrays, printed_names
from softgrad.derive import tensor_algebra as ta
from softgrad.derive.spec import Definition
from softgrad.derive.steps import Derivation
from softgrad.errors import SoftgradError


class _Printer(C99CodePrinter):
    """C99 for one statement: entries as flat offsets, indices as loop variables, constants in softgrad_real."""

    def __init__(self, compiler: _Compiler) -> None:
        super().__init__({"strict": False})
        self.compiler = compiler

    def _print_Indexed(self, expr: Any) -> str:
        return self.compiler.entry(expr)

    def _print_Symbol(self, expr: Any) -> str:
        return self.compiler.symbol(expr)

    def _print_Float(self, expr: Any) -> str:
        return f"(softgrad_real){float(expr)!r}"

    def _print_Rational(self, expr: Any) -> str:
        return f"((softgrad_real){expr.p}/(softgrad_real){expr.q})"

    def _print_Integer(self, expr: Any) -> str:
        return f"(softgrad_real){int(expr)}"

    def _print_Pow(self, expr: Any) -> str:
        base = self._print(expr.base)
        if expr.exp == sp.S.Half:
            return f"sqrt({base})"
        if expr.exp == -sp.S.Half:
            return f"((softgrad_real)1/sqrt({base}))"
        if expr.exp == -1:
            return f"((softgrad_real)1/({base}))"
        if expr.exp == 2:
            return f"(({base})*({base}))"
        return f"pow({base}, {self._print(expr.exp)})"

    def _print_KroneckerDelta(self, expr: Any) -> str:
        first, second = (self.compiler.position(a) for a in expr.args)
        return f"(({first}) == ({second}) ? (softgrad_real)1 : (softgrad_real)0)"

    def _print_sigmoid(self, expr: Any) -> str:
        return f"((softgrad_real)1/((softgrad_real)1 + exp(-({self._print(expr.args[0])}))))"

    def _print_softplus(self, expr: Any) -> str:
        u = self._print(expr.args[0])
        return f"(fmax({u}, (softgrad_real)0) + log1p(exp(-fabs({u}))))"

    def _print_log1p(self, expr: Any) -> str:
        return f"log1p({self._print(expr.args[0])})"

    def _print_Heaviside(self, expr: Any) -> str:
        u = self._print(expr.args[0])
        return f"(({u}) > 0 ? (softgrad_real)1 : (({u}) < 0 ? (softgrad_real)0 : (softgrad_real)0.5))"

    def _print_Max(self, expr: Any) -> str:
        code = str(self._print(expr.args[0]))
        for argument in expr.args[1:]:
            code = f"fmax({code}, {self._print(argument)})"
        return code

    def _print_Min(self, expr: Any) -> str:
        code = str(self._print(expr.args[0]))
        for argument in expr.args[1:]:
            code = f"fmin({code}, {self._print(argument)})"
        return code

    def _print_Sum(self, expr: Any) -> str:  # pragma: no cover - every sum is hoisted before printing
        raise SoftgradError("internal: a sum reached the C printer")


@dataclass
class CStatement:
    comment: str
    lines: list[str]


@dataclass
class CModule:
    """What the C templates print."""

    inputs: list[tuple[str, tuple[str, ...], bool]]  # (printed name, ranges, is a label)
    parameters: list[str]
    ranges: list[str]
    output: str
    output_ranges: tuple[str, ...]
    output_is_scalar: bool
    forward: list[CStatement]
    backward: list[CStatement]
    forward_work: list[tuple[str, tuple[str, ...]]]  # arrays the forward pass allocates
    backward_work: list[tuple[str, tuple[str, ...]]]
    upstream: str | None
    gradients: list[tuple[str, str, tuple[str, ...]]]  # (input, gradient name, ranges)
    blas: list[str] = field(default_factory=list)


class _Compiler:
    def __init__(self, derivation: Derivation, printed: dict[str, str], openmp: bool = False):
        self.openmp = openmp
        self.spec = derivation.spec
        self.axes = derivation.tensor.axes
        self.printed = printed
        self.loop_names: dict[sp.Symbol, str] = {}
        self.temporaries = 0
        self.printer = _Printer(self)
        self.normalised: set[str] = set()
        self.logs_needed: set[str] = set()

    # ------------------------------------------------------------ pieces the printer asks for
    def size(self, range_name: str) -> str:
        return f"_n_{range_name}"

    def symbol(self, symbol: sp.Symbol) -> str:
        if symbol in self.loop_names:
            return f"(softgrad_real){self.loop_names[symbol]}"
        name = str(symbol)
        if name.startswith("_"):
            return name  # a hoisted temporary
        if name.startswith("n_") and name[2:] in self.spec.sizes:
            return f"(softgrad_real){self.size(name[2:])}"
        return self.printed[name]

    def position(self, expr: sp.Expr) -> str:
        """An index position as a size_t expression: a loop variable or a label's entry."""
        if isinstance(expr, sp.Symbol):
            return self.loop_names[expr]
        if isinstance(expr, sp.Indexed):
            return f"(size_t){self.entry(expr)}"
        raise SoftgradError(f"cannot use {expr} as an index in C")

    def entry(self, expr: sp.Indexed) -> str:
        name = str(expr.base)
        array, ranges = self.printed[name] if name in self.printed else "", ()
        if name.startswith("_log_"):  # the log array of a normalised definition
            array, ranges = "_log_" + self.printed[name[5:]], self.axes[name[5:]]
        else:
            ranges = self.axes[name]
        offset = ""
        for axis, position in enumerate(expr.indices):
            index = self.position(position)
            offset = index if axis == 0 else f"({offset}) * {self.size(ranges[axis])} + {index}"
        return f"{array}[{offset}]" if offset else f"{array}[0]"

    # ------------------------------------------------------------ loop nests
    def loops(self, symbols: list[sp.Symbol], ranges: dict[sp.Symbol, str], body: list[str]) -> list[str]:
        lines = body
        for symbol in reversed(symbols):
            variable = self.loop_names[symbol]
            lines = [f"for (size_t {variable} = 0; {variable} < {self.size(ranges[symbol])}; ++{variable}) {{",
                     *["    " + line for line in lines], "}"]
        return lines

    def bind(self, symbols: list[sp.Symbol]) -> None:
        for symbol in symbols:
            self.loop_names.setdefault(symbol, f"_ix_{symbol}")

    def nest(self, expr: sp.Expr, loops: list[sp.Symbol], ranges: dict[sp.Symbol, str],
             assign: Any) -> list[str]:
        """Loops over `loops` around `assign(printed expr)`, each sum of expr computed at the outermost
        level where its free indices are bound."""
        self.bind(loops)
        sums = [s for s in expr.atoms(sp.Sum) if not any(s != other and other.has(s) for other in expr.atoms(sp.Sum))]
        levels: dict[int, list[tuple[sp.Sum, sp.Symbol]]] = {}
        replacements = {}
        for total in sorted(sums, key=sp.default_sort_key):
            free = ta.index_symbols(total) - {limit[0] for limit in total.limits}
            level = max((loops.index(s) + 1 for s in free if s in loops), default=0)
            self.temporaries += 1
            temporary = sp.Symbol(f"_s{self.temporaries}")
            levels.setdefault(level, []).append((total, temporary))
            replacements[total] = temporary
        assigned = assign(self.printer.doprint(expr.xreplace(replacements)))
        inner = assigned if isinstance(assigned, list) else [assigned]
        for depth in range(len(loops), -1, -1):
            before = [line for total, temporary in levels.get(depth, []) for line in self.reduction(total, temporary,
                                                                                                     ranges)]
            inner = before + inner
            if depth > 0:
                inner = self.loops([loops[depth - 1]], ranges, inner)
        return inner

    def reduction(self, total: sp.Sum, temporary: sp.Symbol, ranges: dict[sp.Symbol, str]) -> list[str]:
        """`temporary` = the sum, in loops of its own (`ranges` knows its indices: every sum of the statement)."""
        bounds = [limit[0] for limit in reversed(total.limits)]
        return [f"softgrad_real {temporary} = 0;",
                *self.nest(total.function, bounds, ranges, lambda code: f"{temporary} += {code};")]

    # ------------------------------------------------------------ statements
    def statement(self, definition: Definition, target: str) -> CStatement:
        ranges = ta.index_ranges(definition.expr, self.axes, self.spec.sizes,
                                 dict(zip(definition.indices, self.axes.get(definition.name, ()))))
        loops = list(definition.indices)
        expr = self.with_logs(definition.expr)
        normalised = self.normalised_form(definition)
        comment = f"{definition.name}[{', '.join(map(str, definition.indices))}]" if loops else definition.name
        product = _matrix_product(definition.expr)
        if product:
            comment += f" (a matrix product: BLAS {product} would replace this loop nest)"
        if normalised is not None:
            return CStatement(comment, self.threaded(self.normalised_statement(definition, normalised, ranges, target),
                                                     definition.indices))
        if not loops:
            return CStatement(comment, self.nest(expr, [], ranges, lambda code: f"{target}[0] = {code};"))
        self.bind(loops)
        flat = self.entry(sp.IndexedBase(definition.name)[tuple(loops)])
        return CStatement(comment, self.threaded(self.nest(expr, loops, ranges, lambda code: f"{flat} = {code};"),
                                                 definition.indices))

    def threaded(self, lines: list[str], indices: tuple[sp.Symbol, ...]) -> list[str]:
        """With --openmp, the statement's loop over its array's first index shared among threads: each
        iteration writes its own entries and sums in its own order, so every thread count gives the same
        bits. (A sum over all entries, such as a loss, stays on one thread.)"""
        if not self.openmp or not indices:
            return lines
        outer = f"for (size_t {self.loop_names[indices[0]]} = 0;"  # at the top level: the statement's own loop
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
        form = ta.normalised_exponential(definition)
        if form is not None:
            self.normalised.add(definition.name)
        return form

    def normalised_statement(self, definition: Definition, form: tuple[sp.Expr, sp.Symbol],
                             ranges: dict[sp.Symbol, str], target: str) -> list[str]:
        exponent, free = form
        outer = [s for s in definition.indices if s != free]
        self.bind([*outer, free])
        flat = self.entry(sp.IndexedBase(definition.name)[tuple(definition.indices)])
        log_entry = "_log_" + flat
        self.temporaries += 1
        shift, total = f"_m{self.temporaries}", f"_t{self.temporaries}"
        body = [f"softgrad_real {shift} = -INFINITY;",
                *self.nest(exponent, [free], ranges, lambda code: f"{shift} = fmax({shift}, {code});"),
                f"if (!isfinite({shift})) {shift} = 0;  // a row of -inf: a harmless shift",
                f"softgrad_real {total} = 0;",
                *self.nest(exponent, [free], ranges, lambda code: f"{total} += exp({code} - {shift});")]
        write = [f"{flat} = exp({{code}} - {shift}) / {total};"]
        if definition.name in self.logs_needed:
            write.append(f"{log_entry} = ({{code}} - {shift}) - log({total});")
        body += self.nest(exponent, [free], ranges, lambda code: [line.replace("{code}", code) for line in write])
        return self.loops(outer, ranges, body) if outer else body


def _matrix_product(expr: sp.Expr) -> str:
    """'gemm' or 'gemv' when expr is (a multiple of) one contraction of two arrays, else ''."""
    sums = list(expr.atoms(sp.Sum))
    if len(sums) != 1 or len(sums[0].limits) != 1:
        return ""
    factors = [f for f in sp.Mul.make_args(sums[0].function) if f.atoms(sp.Indexed)]
    if len(factors) != 2 or not all(isinstance(f, sp.Indexed) for f in factors):
        return ""
    return "gemm" if all(len(f.indices) == 2 for f in factors) else "gemv"


def lower_tensor_c(derivation: Derivation, openmp: bool = False) -> CModule:
    tensor, spec = derivation.tensor, derivation.spec
    printed = printed_names(derivation)
    compiler = _Compiler(derivation, printed, openmp)
    for definition in spec.definitions:  # which normalised arrays need their log (scan first)
        compiler.normalised_form(definition)
    backward_arrays = backward_definitions(derivation)
    for definition in [*spec.definitions, *backward_arrays]:
        compiler.with_logs(definition.expr)
    output = spec.output
    forward = [compiler.statement(d, printed[d.name]) for d in spec.definitions]
    gradient_names = {printed[g] for g in tensor.gradients.values()}
    backward = [compiler.statement(d, printed[d.name]) for d in backward_arrays]
    work = [(printed[d.name], tensor.axes.get(d.name, ())) for d in spec.definitions if d is not output]
    work += [("_log_" + printed[name], tensor.axes[name]) for name in sorted(compiler.logs_needed)]
    backward_work = [(printed[d.name], tensor.axes.get(d.name, ())) for d in tensor.backward
                     if printed[d.name] not in gradient_names]
    return CModule(
        inputs=[(printed[n], tensor.axes.get(n, ()), n in spec.labels) for n in spec.inputs],
        parameters=[printed[p] for p in spec.parameters], ranges=list(spec.sizes), output=printed[output.name],
        output_ranges=tuple(tensor.axes.get(output.name, ())), output_is_scalar=not output.is_vector,
        forward=forward, backward=backward, forward_work=work, backward_work=backward_work,
        upstream=printed[tensor.upstream] if tensor.upstream else None,
        gradients=[(printed[n], printed[g], tensor.axes[n]) for n, g in tensor.gradients.items()])


def emit_tensor_c(derivation: Derivation, header: dict[str, Any], render: Any, module_name: str,
                  dtype: str, openmp: bool = False) -> dict[str, str]:
    module = lower_tensor_c(derivation, openmp)
    context = dict(header, module=module, name=module_name, dtype=dtype, openmp=openmp,
                   **checked_arrays(derivation, printed_names(derivation)),
                   ctype="double" if dtype == "float64" else "float")
    return {f"{module_name}.h": str(render("c/tensor.h.j2", **context)),
            f"{module_name}.c": str(render("c/tensor.c.j2", **context)),
            f"{module_name}_ctypes.py": str(render("c/tensor_loader.py.j2", **context))}
