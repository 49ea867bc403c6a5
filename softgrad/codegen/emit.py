"""Emit generated source: kernels printed by the target's printer into its Jinja2 templates."""

from __future__ import annotations

from dataclasses import dataclass

import jinja2
import sympy as sp

import softgrad
from softgrad.codegen.kernel import Kernel
from softgrad.codegen.lower import applicable_kernels, identifier, lower
from softgrad.codegen.printers import CKernelPrinter, NumpyKernelPrinter, assert_printable, prepare
from softgrad.derive.steps import Derivation
from softgrad.errors import SoftgradError

LANGUAGES = ("numpy", "c")
DTYPES = ("float64", "float32")

_ENVIRONMENT = jinja2.Environment(
    loader=jinja2.PackageLoader("softgrad", "templates"),
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
    keep_trailing_newline=True,
    autoescape=False,
)


@dataclass
class PrintedStage:
    """One loop of a kernel: common subexpressions, then assignments (target, expression, how)."""

    temporaries: list[tuple[str, str]]
    assignments: list[tuple[str, str, str]]  # (name, code, kind: max | sum | scalar | vector | matrix)


def _stages(kernel: Kernel, printer, output_printer=None, cse: bool = True) -> dict:
    """Each reduction level as one loop, scalar outputs, then the vector/matrix outputs, all printed."""

    def printed(pairs: list[tuple[str, sp.Expr, str]], prefix: str, printer=printer) -> PrintedStage:
        expressions = [prepare(e) for _, e, _ in pairs]
        temporaries = []
        if cse and expressions:
            symbols = sp.numbered_symbols(prefix)
            replacements, expressions = sp.cse(expressions, symbols=symbols, order="canonical")
            temporaries = [(str(s), printer.doprint(prepare(e))) for s, e in replacements]
        for e in expressions:
            assert_printable(e)
        return PrintedStage(temporaries, [(name, printer.doprint(e), kind)
                                          for (name, _, kind), e in zip(pairs, expressions)])

    levels = [printed([(r.symbol.name, r.body, r.op) for r in group], f"t{number}_")
              for number, group in enumerate(kernel.levels())]
    scalars = printed([(o.name, o.expr, "scalar") for o in kernel.outputs if o.shape == "scalar"], "s_")
    vectors = printed([(o.name, o.expr, o.shape) for o in kernel.outputs if o.shape != "scalar"], "e_",
                      output_printer or printer)
    return {"levels": levels, "scalars": scalars, "vectors": vectors}


def kernels_for(derivation: Derivation, names: list[str] | None) -> list[Kernel]:
    available = applicable_kernels(derivation)
    chosen = names or available
    unknown = [n for n in chosen if n not in available]
    if unknown:
        raise SoftgradError(f"kernel {unknown[0]!r} does not apply to this spec (available: {', '.join(available)})")
    return [lower(derivation, name) for name in chosen]


def _header(derivation: Derivation) -> dict:
    return {"version": softgrad.__version__, "spec_name": derivation.spec.name or "inline spec",
            "spec_lines": derivation.spec.source.strip().splitlines(), "wrt": derivation.wrt}


def emit(derivation: Derivation, language: str, kernel_names: list[str] | None = None,
         dtype: str = "float64", module: str | None = None) -> dict[str, str]:
    """Generated files (name → text) for a derivation, deterministic for the same input."""
    if language not in LANGUAGES:
        raise SoftgradError(f"unknown language {language!r} (known: {', '.join(LANGUAGES)})")
    if dtype not in DTYPES:
        raise SoftgradError(f"unknown dtype {dtype!r} (known: {', '.join(DTYPES)})")
    kernels = kernels_for(derivation, kernel_names)
    module = module or identifier(derivation)
    context = dict(_header(derivation), module=module, dtype=dtype,
                   parameters=derivation.spec.parameters)
    if language == "numpy":
        printed = []
        for kernel in kernels:
            matrix = NumpyKernelPrinter(matrix=True)
            matrix.reduction_names = {r.symbol.name for r in kernel.reductions}
            has_matrix = any(o.shape == "matrix" for o in kernel.outputs)
            printed.append({"kernel": kernel, **_stages(kernel, NumpyKernelPrinter(), matrix if has_matrix else None)})
        source = _ENVIRONMENT.get_template("numpy/module.py.j2").render(kernels=printed, **context)
        return {f"{module}.py": source}
    ctype = "float" if dtype == "float32" else "double"
    printed = [{"kernel": kernel, **_stages(kernel, CKernelPrinter(dtype))} for kernel in kernels]
    files = {}
    for template, name in (("c/header.h.j2", f"{module}.h"), ("c/source.c.j2", f"{module}.c"),
                           ("c/loader.py.j2", f"{module}_ctypes.py")):
        files[name] = _ENVIRONMENT.get_template(template).render(kernels=printed, ctype=ctype, **context)
    return files
