"""Emit generated source: each kernel printed by its target's backend (softgrad.codegen.backends) into the
backend's Jinja2 templates. Nothing here depends on the target language."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jinja2

from softgrad._version import __version__
from softgrad.codegen.backends import BACKENDS
from softgrad.codegen.build import RECOMMENDED_FLAGS, GeneratedFiles
from softgrad.codegen.lower.kernel import Kernel
from softgrad.codegen.lower.rows import applicable_kernels, hoisted_softmax_ratios, identifier, lower
from softgrad.derive import algebra
from softgrad.derive.steps import Derivation
from softgrad.derive.symbols import n as size_symbol
from softgrad.errors import SoftgradError

#: Targets that print kernels (one-index specs' row kernels, or the array lowering of several indices)
#: and the frameworks, which print every spec through the array lowering (softgrad.codegen.backends.frameworks).
LANGUAGES = (*BACKENDS, "torch", "jax")
DTYPES = ("float64", "float32")

def _python_safe(value: object) -> object:
    """Every value put into a generated Python file: nothing can end a docstring or start an escape.
    (Printed code never holds a backslash or three quotes, so this changes only hostile text.)"""
    if not isinstance(value, str):
        return value
    return value.replace("\\", "\\\\").replace('"""', '\\"\\"\\"')


def _c_safe(value: object) -> object:
    """Every value put into a generated C file: nothing can end or open a comment, or form a trigraph.
    (Printed C never holds these sequences, so this changes only hostile text.)"""
    if not isinstance(value, str):
        return value
    return value.replace("*/", "* /").replace("/*", "/ *").replace("??", "? ?").replace("\\", "/")


def _environment(finalize: Callable[[object], object]) -> jinja2.Environment:
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


def _render(template: str, **context: Any) -> str:
    """A code template rendered with the escaping of its own language (by the file it generates)."""
    environment = _PYTHON if template.endswith(".py.j2") else _C
    return environment.get_template(template).render(**context)


def kernels_for(derivation: Derivation, names: list[str] | None) -> list[Kernel]:
    available = applicable_kernels(derivation) + (["hvp"] if derivation.order == 2 else [])
    chosen = names or available
    if "hvp" in chosen and derivation.order != 2:
        raise SoftgradError("the hvp kernel is a loss's Hessian–vector product: it needs --order 2")
    unknown = [n for n in chosen if n not in available]
    if unknown:
        raise SoftgradError(f"kernel {unknown[0]!r} does not apply to this spec (available: {', '.join(available)})")
    # the Hessian–vector product is the gradient's vector–Jacobian product (the Hessian is symmetric)
    return [_hvp(lower(derivation, "vjp")) if name == "hvp" else lower(derivation, name) for name in chosen]


def _hvp(vjp: Kernel) -> Kernel:
    """The gradient's vector–Jacobian product, named as what it is for a loss: its Hessian–vector product."""
    return dataclasses.replace(vjp, name=vjp.name.removesuffix("vjp") + "hvp",
                               doc="Hessian–vector product H·v of the loss, O(n) per row (H is symmetric: the "
                                   "gradient's vector–Jacobian product)")


def _header(derivation: Derivation) -> dict[str, Any]:
    """What a generated file says about its origin: the spec as softgrad prints it (never its source
    text, which may hold anything in its comments) and the SHA-256 of that source."""
    return {"version": __version__, "spec_name": derivation.spec.name or "inline spec",
            "spec_lines": derivation.spec.statements, "spec_sha256": derivation.spec.digest,
            "wrt": derivation.wrt}


def emit(derivation: Derivation, language: str, kernel_names: list[str] | None = None,
         dtype: str | None = None, module: str | None = None, openmp: bool = False,
         weights: tuple[str, ...] = (), cpu: str = "torch") -> GeneratedFiles:
    """Generated files (name → text) for a derivation, deterministic for the same input.

    dtype: the element type of a target that has one (C; default float64; NumPy kernels follow their
    inputs). openmp: C kernels split their rows over OpenMP threads (compile with -fopenmp).
    weights: inputs the torch nn.Module holds as nn.Parameters. cpu: what the torch module runs on the CPU,
    torch operations or ("c") the generated C kernels, written beside it (float32 and float64)."""
    if language not in LANGUAGES:
        raise SoftgradError(f"unknown language {language!r} (known: {', '.join(LANGUAGES)})")
    if weights and language != "torch":
        raise SoftgradError(f"--weights applies to --lang torch (its nn.Module), not --lang {language}")
    if cpu not in ("torch", "c"):
        raise SoftgradError(f"unknown --cpu {cpu!r} (known: torch, c)")
    if cpu != "torch" and language != "torch":
        raise SoftgradError(f"--cpu c applies to --lang torch (its module on the CPU), not --lang {language}")
    if language in ("torch", "jax"):
        return _emit_framework(derivation, language, kernel_names, dtype, module, openmp, weights, cpu)
    backend = BACKENDS[language]
    if openmp and not backend.has_threads:
        raise SoftgradError(f"--openmp does not apply to --lang {language} (its kernels run on one thread)")
    if dtype is not None and not backend.has_dtype:
        raise SoftgradError(f"--dtype does not apply to --lang {language} (its kernels compute in their inputs' dtype)")
    dtype = dtype or "float64"
    if dtype not in DTYPES:
        raise SoftgradError(f"unknown dtype {dtype!r} (known: {', '.join(DTYPES)})")
    if derivation.tensor is not None:
        return _emit_arrays(derivation, language, kernel_names, dtype, module, openmp)
    kernels = kernels_for(derivation, kernel_names)
    module = module or identifier(derivation)
    # every kernel takes the spec's parameters, in the spec's order, under their printed names
    # an empty class axis where the function divides by its size (a mean over i): refused, it has no value there
    divides = bool(algebra.divided_sizes(derivation.spec.definitions, {"i": size_symbol}))
    context = dict(_header(derivation), module=module, dtype=dtype, parameters=kernels[0].parameters,
                   kernels=[backend.print_kernel(kernel, dtype) for kernel in kernels], divides_by_size=divides,
                   **backend.context(dtype, openmp))
    files = GeneratedFiles(language=language, module=module, dtype=dtype, openmp=openmp)
    for template, name in backend.files(module):
        files[name] = _render(template, **context)
    return files


#: Kernel names a spec with several ranges answers to: its module has forward() and gradients(), which is the
#: VJP of an array output (given the upstream gradient) and a loss with its gradients for a scalar one, and the
#: pair forward_saving() and backward() (from what the forward kept).
ARRAY_KERNELS = {"forward": "forward", "gradients": "gradients", "vjp": "gradients", "loss_and_grad": "gradients",
                  "forward_saving": "forward_saving", "backward": "backward"}


def _emit_arrays(derivation: Derivation, language: str, kernel_names: list[str] | None, dtype: str,
                 module: str | None, openmp: bool) -> GeneratedFiles:
    """Files for a spec with several index ranges: a NumPy module, or C source, header and loader, with
    forward(), gradients() (`--kernel vjp` or `loss_and_grad` names gradients(), by the output's kind) and the pair
    forward_saving() and backward()."""
    from softgrad.codegen.backends.numpy.arrays import emit_arrays_numpy

    vector = derivation.spec.output.is_vector
    known = [name for name in ARRAY_KERNELS if name != ("loss_and_grad" if vector else "vjp")]
    for name in kernel_names or []:
        if name not in known:
            raise SoftgradError(f"kernel {name!r} does not apply to this spec (available: {', '.join(known)}; a "
                                "spec with several indices has forward(), gradients(), forward_saving() and "
                                "backward())")
    module = module or identifier(derivation)
    files = GeneratedFiles(language=language, module=module, dtype=dtype, openmp=openmp)
    header = _header(derivation)  # the spec as written, whatever the lowering adds
    derivation = hoisted_softmax_ratios(derivation)  # inline exp(E)/Σexp(E) as arrays the lowerings keep finite
    if language == "c":
        from softgrad.codegen.backends.c.arrays import emit_arrays_c

        sources, files.blas = emit_arrays_c(derivation, header, _render, module, dtype, openmp)
        files.update(sources)
    else:
        files[f"{module}.py"] = emit_arrays_numpy(derivation, header, _render)
    return files


def _emit_framework(derivation: Derivation, language: str, kernel_names: list[str] | None, dtype: str | None,
                    module: str | None, openmp: bool, weights: tuple[str, ...], cpu: str = "torch") -> GeneratedFiles:
    """One torch or JAX module: forward and its derived backward, for any spec; with cpu="c", the C kernels
    of the same derivation (one source per dtype) that the torch module calls on the CPU."""
    from softgrad.codegen.backends.c.arrays import emit_arrays_c
    from softgrad.codegen.backends.frameworks import emit_framework, framework_derivation

    for option, given in (("--kernel", kernel_names), ("--dtype", dtype), ("--openmp", openmp)):
        if given:
            raise SoftgradError(f"{option} does not apply to --lang {language} (its module computes in its inputs' "
                                "dtype, on their device, with forward and backward)")
    module = module or identifier(derivation)
    files = GeneratedFiles(language=language, module=module, dtype="float64", openmp=False)
    header = _header(derivation)
    lifted = framework_derivation(derivation)
    c_sources: dict[str, str] = {}
    if cpu == "c":  # the C of the derivation the module itself is printed from: the same gradients, rows lifted
        lowered = hoisted_softmax_ratios(lifted)
        for c_dtype in DTYPES:
            c_sources[c_dtype] = f"{module}_{c_dtype}"
            sources, blas = emit_arrays_c(lowered, header, _render, c_sources[c_dtype], c_dtype)
            files.update(sources)
            files.blas = files.blas or blas
    text, parts = emit_framework(lifted, language, module, header, _render, weights, c_sources,
                                 RECOMMENDED_FLAGS if c_sources else [], files.blas)
    files[f"{module}.py"], files.printed_from = text, [lifted, parts]
    return files
