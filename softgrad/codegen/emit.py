"""Emit generated source: kernels printed by the target's printer into its Jinja2 templates."""

from __future__ import annotations

from dataclasses import dataclass

import jinja2
import sympy as sp

import softgrad
from softgrad.codegen import c_math
from softgrad.codegen.build import RECOMMENDED_FLAGS
from softgrad.codegen.kernel import Kernel
from softgrad.codegen.schedule import Loop, schedule
from softgrad.codegen.ufuncs import BlockPrinter, UfuncProgram
from softgrad.codegen.lower import applicable_kernels, identifier, lower
from softgrad.codegen.printers import CKernelPrinter, NumpyKernelPrinter, assert_printable, prepare
from softgrad.derive.steps import Derivation
from softgrad.errors import SoftgradError

LANGUAGES = ("numpy", "c")
DTYPES = ("float64", "float32")

class Verbatim(str):
    """Source text of softgrad's own (the C math helpers, with their comments): inserted unescaped."""


def _python_safe(value: object) -> object:
    """Every value put into a generated Python file: nothing can end a docstring or start an escape.
    (Printed code never holds a backslash or three quotes, so this changes only hostile text.)"""
    if isinstance(value, Verbatim) or not isinstance(value, str):
        return value
    return value.replace("\\", "\\\\").replace('"""', '\\"\\"\\"')


def _c_safe(value: object) -> object:
    """Every value put into a generated C file: nothing can end or open a comment, or form a trigraph.
    (Printed C never holds these sequences, so this changes only hostile text.)"""
    if isinstance(value, Verbatim) or not isinstance(value, str):
        return value
    return value.replace("*/", "* /").replace("/*", "/ *").replace("??", "? ?").replace("\\", "/")


def _environment(finalize) -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("softgrad", "templates"),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
        finalize=finalize,
    )


_PYTHON = _environment(_python_safe)
_C = _environment(_c_safe)


def _render(template: str, **context) -> str:
    """A code template rendered with the escaping of its own language (by the file it generates)."""
    environment = _PYTHON if template.endswith(".py.j2") else _C
    return environment.get_template(template).render(**context)


@dataclass
class PrintedStage:
    """One loop of a kernel: common subexpressions, then assignments (target, expression, how)."""

    temporaries: list[tuple[str, str]]
    assignments: list[tuple[str, str, str]]  # (name, code, kind: max | sum | scalar | vector | matrix)


def _stages(kernel: Kernel, printer, output_printer) -> dict:
    """The explicit Jacobian in NumPy (small n, whole arrays): each reduction level, the scalar outputs,
    then the matrix output printed by output_printer."""

    def printed(pairs: list[tuple[str, sp.Expr, str]], prefix: str, printer=printer) -> PrintedStage:
        expressions = [prepare(e) for _, e, _ in pairs]
        temporaries = []
        if expressions:
            symbols = sp.numbered_symbols(prefix)
            replacements, expressions = sp.cse(expressions, symbols=symbols, order="canonical")
            temporaries = [(str(s), printer.doprint(prepare(e))) for s, e in replacements]
        for e in expressions:
            assert_printable(e)
        return PrintedStage(temporaries, [(name, printer.doprint(e), kind)
                                          for (name, _, kind), e in zip(pairs, expressions)])

    levels = [printed([(r.symbol.name, r.body, r.op) for r in group], f"_t{number}_")
              for number, group in enumerate(kernel.levels())]
    scalars = printed([(o.name, o.expr, "scalar") for o in kernel.outputs if o.shape == "scalar"], "_s")
    vectors = printed([(o.name, o.expr, o.shape) for o in kernel.outputs if o.shape != "scalar"], "_e",
                      output_printer)
    return {"levels": levels, "scalars": scalars, "vectors": vectors}


@dataclass
class PrintedLoop:
    """A schedule's loop as C: per-row values, per-entry temporaries, accumulations and stores."""

    before: list[tuple[str, str]]
    temporaries: list[tuple[str, str]]
    reductions: list[tuple[str, str, str]]  # (name, 'sum' | 'max', code)
    stores: list[tuple[str, str]]


def _c_schedule(kernel: Kernel, dtype: str) -> dict:
    """A kernel's schedule printed as C. Entries are computed in the element type (float32 kernels
    vectorize in float); sums accumulate and per-row values are computed in double, then rounded once."""
    # an explicit Jacobian is for small n: its entries are computed in double (y(1 − y) cancels in float)
    entry_dtype = "float64" if kernel.explicit_jacobian else dtype
    plan = schedule(kernel, materialize_sums=entry_dtype == "float32")
    entry = CKernelPrinter(entry_dtype, vector_exp=True)
    row = CKernelPrinter("float64")

    def code(printer, expr) -> str:
        expr = prepare(expr)
        assert_printable(expr)
        return printer.doprint(expr)

    def loop(item: Loop) -> PrintedLoop:
        return PrintedLoop([(str(s), code(row, e)) for s, e in item.before],
                           [(str(s), code(entry, e)) for s, e in item.temporaries],
                           [(str(s), op, code(entry, e)) for s, op, e in item.reductions],
                           [(name, code(entry, e)) for name, e in item.stores])

    expressions = [r.body for r in kernel.reductions] + [o.expr for o in kernel.outputs]
    read_arrays = {str(entry.base) for e in expressions for entry in e.atoms(sp.Indexed)}
    read_scalars = {str(symbol) for e in expressions for symbol in e.free_symbols if not symbol.is_integer}
    return {"kernel": kernel, "reduction_loops": [loop(item) for item in plan.reduction_loops],
            # arguments the formulas do not read (a spec may take an input it ignores): no row pointer,
            # and a (void) cast so that -Wextra does not flag them
            "read_arrays": read_arrays,
            "unread": [name for name, _ in kernel.inputs if name not in read_arrays]
            + [name for name in kernel.parameters if name not in read_scalars],
            "scalar_temporaries": [(str(s), code(row, e)) for s, e in plan.scalar_temporaries],
            "scalar_outputs": [(name, code(row, e)) for name, e in plan.scalar_outputs],
            "output_loop": loop(plan.output_loop) if plan.output_loop else None,
            "matrix": kernel.explicit_jacobian,
            # an output that a reduction loop already wrote is in cache: streaming it out would not help
            "stream": plan.output_loop is not None and not kernel.explicit_jacobian and plan.stash is None,
            "entry_type": "double" if entry_dtype == "float64" else "float",
            "entry_suffix": "" if entry_dtype == "float64" else "f"}


def _numpy_blocked(kernel: Kernel) -> dict:
    """A kernel's schedule as NumPy statements for one block of rows (see softgrad.codegen.ufuncs)."""
    plan = schedule(kernel)
    printer = BlockPrinter()
    program = UfuncProgram(printer)

    def row_values(pairs) -> None:
        program.lines.extend(f"{symbol} = {printer.doprint(prepare(expr))}" for symbol, expr in pairs)

    def entries(loop: Loop) -> None:
        row_values(loop.before)
        held = {symbol for symbol, _ in loop.temporaries}
        # a store of a temporary is no statement of its own: the temporary is computed into the output
        computed_into = {expr: f"_block_{name}" for name, expr in loop.stores if expr in held}
        statements = [("hold", symbol, expr) for symbol, expr in loop.temporaries]
        statements += [("store", name, expr) for name, expr in loop.stores if expr not in held]
        statements += [("reduce", (symbol, op), expr) for symbol, op, expr in loop.reductions]
        last_use = {}
        for number, (_, _, expr) in enumerate(statements):
            for symbol in expr.free_symbols & held:
                last_use[symbol] = number
        for number, (kind, target, expr) in enumerate(statements):
            ending = {s for s, last in last_use.items() if last == number}
            # a value read once, for the last time, may be overwritten by the statement that reads it
            program.dying = {s for s in ending if _occurrences(expr, s) == 1}
            expr = prepare(expr)
            if kind == "hold":
                program.hold(target, expr, into=computed_into.get(target))
            elif kind == "store":
                program.store(f"_block_{target}", expr)
            else:
                program.reduce(*target, expr)
            program.dying = set()
            program.forget(ending)
        program.release_all()

    for loop in plan.reduction_loops:
        entries(loop)
    row_values(plan.scalar_temporaries)
    for name, expr in plan.scalar_outputs:
        program.lines.append(f"{name}[_start:_stop] = np.broadcast_to({printer.doprint(prepare(expr))}, (_size, 1))[:, 0]")
    if plan.output_loop:
        entries(plan.output_loop)
    return {"kernel": kernel, "blocked": True, "lines": program.lines, "work_buffers": program.buffers_used}


def _occurrences(expr: sp.Expr, symbol: sp.Symbol) -> int:
    return sum(1 for node in sp.preorder_traversal(expr) if node == symbol)


def kernels_for(derivation: Derivation, names: list[str] | None) -> list[Kernel]:
    available = applicable_kernels(derivation)
    chosen = names or available
    unknown = [n for n in chosen if n not in available]
    if unknown:
        raise SoftgradError(f"kernel {unknown[0]!r} does not apply to this spec (available: {', '.join(available)})")
    return [lower(derivation, name) for name in chosen]


def _header(derivation: Derivation) -> dict:
    """What a generated file says about its origin: the spec as softgrad prints it (never its source
    text, which may hold anything in its comments) and the SHA-256 of that source."""
    return {"version": softgrad.__version__, "spec_name": derivation.spec.name or "inline spec",
            "spec_lines": derivation.spec.statements, "spec_sha256": derivation.spec.digest,
            "wrt": derivation.wrt}


def emit(derivation: Derivation, language: str, kernel_names: list[str] | None = None,
         dtype: str = "float64", module: str | None = None, openmp: bool = False) -> dict[str, str]:
    """Generated files (name → text) for a derivation, deterministic for the same input.

    openmp: C kernels split their rows over OpenMP threads (compile with -fopenmp)."""
    if language not in LANGUAGES:
        raise SoftgradError(f"unknown language {language!r} (known: {', '.join(LANGUAGES)})")
    if dtype not in DTYPES:
        raise SoftgradError(f"unknown dtype {dtype!r} (known: {', '.join(DTYPES)})")
    kernels = kernels_for(derivation, kernel_names)
    module = module or identifier(derivation)
    # every kernel takes the spec's parameters, in the spec's order, under their printed names
    context = dict(_header(derivation), module=module, dtype=dtype, parameters=kernels[0].parameters)
    if language == "numpy":
        printed = []
        for kernel in kernels:
            if not kernel.explicit_jacobian:
                printed.append(_numpy_blocked(kernel))
                continue
            matrix = NumpyKernelPrinter(matrix=True)
            matrix.reduction_names = {r.symbol.name for r in kernel.reductions}
            printed.append({"kernel": kernel, "blocked": False, **_stages(kernel, NumpyKernelPrinter(), matrix)})
        source = _render("numpy/module.py.j2", kernels=printed, **context)
        return {f"{module}.py": source}
    ctype = "float" if dtype == "float32" else "double"
    printed = [_c_schedule(kernel, dtype) for kernel in kernels]
    files = {}
    for template, name in (("c/header.h.j2", f"{module}.h"), ("c/source.c.j2", f"{module}.c"),
                           ("c/loader.py.j2", f"{module}_ctypes.py")):
        files[name] = _render(
            template, kernels=printed, ctype=ctype, openmp=openmp, helpers=Verbatim(c_math.c_source(dtype)),
            compile_flags=" ".join(RECOMMENDED_FLAGS + (["-fopenmp"] if openmp else [])), **context)
    return files
