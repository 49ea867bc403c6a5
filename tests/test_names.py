"""Hygienic names: no spec name can collide with a keyword, macro, builtin or name of the generated code."""

from __future__ import annotations

import keyword
import os
import shutil
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from conftest import IN_CI, require_module, require_tool
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

import softgrad
from softgrad.codegen.build import STRICT_FLAGS, compile_shared, import_path
from softgrad.codegen.emit import emit
from softgrad.codegen.lower.rows import identifier
from softgrad.codegen.names import C_MACROS, RESERVED, is_reserved, module_identifier, public_names
from softgrad.derive.spec import RESERVED as SPEC_LANGUAGE_WORDS

pytestmark = pytest.mark.slow  # subprocesses, compilers and browsers: CI runs them; -m 'not slow' skips

#: Names a user might write that mean something to C, C++, Python, NumPy, or to the generated code
#: itself (its loop variables, buffers, helpers and arguments before they were made hygienic).
HOSTILE_NAMES = sorted({
    "int", "double", "float", "restrict", "register", "auto", "static", "const", "void", "signed", "goto",
    "class", "new", "delete", "this", "template", "namespace", "operator", "bool", "true", "false",
    "NULL", "INFINITY", "NAN", "HUGE_VAL", "EOF", "M_PI", "M_E", "isnan", "isinf", "signbit", "linux", "unix",
    "errno", "assert", "offsetof", "SIZE_MAX", "INT32_MAX", "size_t", "uint64_t", "float_t", "memcpy",
    "exp", "expf", "log1p", "fmax", "fabs", "sqrtf", "tanhf", "pow",
    "None", "True", "False", "lambda", "def", "return", "yield", "import", "from", "global", "pass",
    "sum", "max", "min", "abs", "len", "range", "type", "id", "input", "print", "object", "list", "dict",
    "np", "numpy", "math", "ctypes", "float64", "float32", "ndarray", "axis", "out", "keepdims", "dtype",
    "self", "DTYPE", "Kernels", "load", "rows", "row", "i", "j", "k", "g", "dx", "dy", "J", "L", "y",
    "row_0", "row0", "max_x", "sum_0", "sum0", "t0_0", "e_0", "s_0", "work", "work_0", "work0", "size",
    "start", "stop", "shape", "identity", "result_dtype", "stream", "head", "end", "chunk", "x_row", "x_block",
    "softgrad_exp", "softgrad_max", "SOFTGRAD_RESTRICT", "SOFTGRAD_CHUNK", "softgrad", "l", "ell", "loss",
})
SPEC_NAMES = [name for name in HOSTILE_NAMES if name not in SPEC_LANGUAGE_WORDS]


def test_every_macro_of_the_generated_files_headers_is_reserved(tmp_path):
    """Ask gcc and clang (ISO and GNU modes) which macros the headers of the generated C define."""
    source = (
        "#include <stddef.h>\n#include <math.h>\n#include <stdint.h>\n#include <string.h>\n#include <immintrin.h>\n"
    )
    (tmp_path / "headers.c").write_text(source)
    for name in ("gcc", "clang"):
        compiler = require_tool(name)
        for standard in ("-std=c99", "-std=gnu17"):
            run = subprocess.run([compiler, standard, "-march=native", "-fopenmp-simd", "-dM", "-E", "headers.c"],
                                 cwd=tmp_path, capture_output=True, text=True, check=True)
            macros = {line.split()[1].split("(")[0] for line in run.stdout.splitlines() if line.startswith("#define")}
            missing = sorted(m for m in macros if not m.startswith("_") and not is_reserved(m))
            assert not missing, f"{name} {standard}: add to names.C_MACROS: {missing}"


def test_reserved_words_cover_both_languages():
    assert set(keyword.kwlist) <= RESERVED
    assert {"restrict", "int", "NULL", "INFINITY", "size_t", "np", "out", "axis", "rows"} <= RESERVED | {"size_t"}
    assert "NULL" in C_MACROS and is_reserved("uint64_t") and is_reserved("softgrad_exp")
    assert not is_reserved("softgrad_exp_")  # the helpers never end in '_': their mangled form is free


@given(st.lists(st.from_regex(r"[A-Za-z][A-Za-z0-9_]{0,8}", fullmatch=True) | st.sampled_from(HOSTILE_NAMES),
                min_size=1, max_size=8, unique=True))
def test_public_names_are_injective_and_never_reserved(names):
    given_names = public_names(names)
    printed = list(given_names.values())
    assert len(set(printed)) == len(printed)
    assert not any(is_reserved(name) for name in printed)
    assert all(given_names[name] == name for name in names if not is_reserved(name))


@pytest.mark.parametrize("title, expected", [("softmax", "softmax"), ("cross-entropy", "cross_entropy"),
                                             ("numpy", "numpy_"), ("123", "spec_123"), ("class", "class_"),
                                             ("é", "spec")])
def test_module_identifiers(title, expected):
    assert module_identifier(title) == expected


def _torch_reference(torch, template: str, arrays: dict, parameters: dict):
    """The template's forward value and gradient with respect to its first input, by torch autograd."""
    first, second = (torch.tensor(arrays[k], requires_grad=(k == "A")) for k in ("A", "B"))
    p, q = parameters["P"], parameters["Q"]
    if template == "vector":
        value = torch.softmax(first / p, -1) * q + second
        upstream = torch.tensor(arrays["G"])
        (value * upstream).sum().backward()
    else:
        value = p * torch.logsumexp(first, -1) - (second * first).sum(-1) * q
        value.sum().backward()
    return value.detach().numpy(), first.grad.numpy()


TEMPLATES = {
    "vector": "{Y}[{I}] = exp({A}[{I}] / {P}) / sum(exp({A}[{K}] / {P}), {K}) * {Q} + {B}[{I}]",
    "loss": "{Y} = {P} * log(sum(exp({A}[{K}]), {K})) - sum({B}[{K}] * {A}[{K}], {K}) * {Q}",
}


@settings(max_examples=6 if not IN_CI else 25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(template=st.sampled_from(sorted(TEMPLATES)),
       names=st.lists(st.sampled_from(SPEC_NAMES), min_size=5, max_size=5, unique=True),
       indices=st.lists(st.sampled_from(["i", "k", "j", "row", "size", "n0", "int", "stop"]), min_size=2, max_size=2,
                        unique=True))
@example(template="loss", names=["type", "dx", "dy", "e_0", "dtype"], indices=["i", "k"])  # dtype is also d+type
@example(template="vector", names=["x", "g", "P", "Q", "J"], indices=["i", "k"])  # J is also the Jacobian's name
def test_specs_named_like_anything_build_and_match_torch(template, names, indices):
    assume(not set(names) & set(indices))  # an array named like an index is a spec error (tested elsewhere)
    torch = require_module("torch")
    compiler = require_tool("cc")
    a, b, p, q, y = names
    spec = TEMPLATES[template].format(Y=y, A=a, B=b, P=p, Q=q, I=indices[0], K=indices[1])
    derivation = softgrad.derive(spec, wrt=a)
    rng = np.random.default_rng(0)
    arrays = {"A": rng.normal(0, 3, (3, 6)), "B": rng.uniform(0.1, 1, (3, 6)), "G": rng.normal(size=(3, 6))}
    parameters = {"P": 1.7, "Q": 0.6}
    expected_value, expected_gradient = _torch_reference(torch, template, arrays, parameters)
    prefix = identifier(derivation)
    spec_order = derivation.spec.parameters  # the kernels take parameters in the spec's order
    values = [parameters["P" if name == p else "Q"] for name in spec_order]
    inputs = [arrays["A"], arrays["B"]]  # both templates read A first
    assert derivation.spec.inputs == [a, b]
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        ((file_name, text),) = emit(derivation, "numpy").items()
        (folder / file_name).write_text(text)
        numpy_module = import_path(folder / file_name)
        c_files = emit(derivation, "c")
        for name, text in c_files.items():
            (folder / name).write_text(text)
        library = compile_shared(folder / f"{prefix}.c", folder / f"lib{prefix}.so")
        c_module = import_path(folder / f"{prefix}_ctypes.py").load(library)
        if shutil.which("clang"):  # the other compiler must build it warning-free too
            clang = subprocess.run(["clang", *STRICT_FLAGS, "-c", f"{prefix}.c", "-o", "clang.o"], cwd=folder,
                                   capture_output=True, text=True)
            assert clang.returncode == 0, clang.stderr
        cplusplus = subprocess.run([compiler.replace("cc", "c++") if shutil.which("c++") else "g++", "-fsyntax-only",
                                    "-x", "c++", f"{prefix}.h"], cwd=folder, capture_output=True, text=True)
        assert cplusplus.returncode == 0, cplusplus.stderr  # the header is C++ too
        for module in (numpy_module, c_module):
            value = getattr(module, f"{prefix}_forward")(*inputs, *values)
            np.testing.assert_allclose(value, expected_value, rtol=1e-12, atol=1e-12)
            if template == "vector":
                gradient = getattr(module, f"{prefix}_vjp")(*inputs, arrays["G"], *values)
            else:
                _, gradient = getattr(module, f"{prefix}_loss_and_grad")(*inputs, *values)
            np.testing.assert_allclose(gradient, expected_gradient, rtol=1e-11, atol=1e-12)


UNUSED_ARGUMENTS = "y[i] = exp(x[i] * T) / sum(exp(x[k] * T), k) + 0 * u[i] * S"


@pytest.mark.parametrize("compiler_name", ["gcc", "clang"])
def test_generated_c_is_warning_free_everywhere(compiler_name, tmp_path):
    """-Wall -Wextra -Wpedantic -Werror under gcc and clang, with and without -fopenmp-simd and -fopenmp,
    in both element types, for every catalog entry and a spec with an input and a parameter it ignores."""
    compiler = require_tool(compiler_name)
    from softgrad.derive import CATALOG

    derivations = [softgrad.derive(name) for name in CATALOG] + [softgrad.derive(UNUSED_ARGUMENTS)]
    builds = []
    for dtype in ("float64", "float32"):
        for openmp in (False, True):
            folder = tmp_path / f"{dtype}-{openmp}"
            folder.mkdir()
            sources = []
            for derivation in derivations:
                for name, text in emit(derivation, "c", dtype=dtype, openmp=openmp).items():
                    (folder / name).write_text(text)
                sources.append(f"{identifier(derivation)}.c")
            # -fopenmp handles the simd directives too: with it, adding -fopenmp-simd builds the same thing
            for simd in ([], ) if openmp else (["-fopenmp-simd"], []):
                flags = ["-std=c99", "-O2", "-march=native", *simd, *(["-fopenmp"] if openmp else []),
                         "-Wall", "-Wextra", "-Wpedantic", "-Werror", "-c"]
                builds.append((f"{compiler_name} {dtype} openmp={openmp} {simd}", [compiler, *flags, *sources], folder))

    def build(label, command, folder):
        return label, subprocess.run(command, cwd=folder, capture_output=True, text=True)

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:  # the builds are independent
        for label, run in pool.map(lambda item: build(*item), builds):
            assert run.returncode == 0, f"{label}:\n{run.stderr[:3000]}"


@pytest.mark.parametrize("source", [
    "y[i] = exp(J[i]) / sum(exp(J[k]), k)",  # an input named like the Jacobian output
    "y[i] = exp(x[i]*dx) / sum(exp(x[k]*dx), k)",  # a parameter named like the gradient output
    "y[i] = g[i]*x[i]",  # an input named like the upstream gradient, read by the backward of the other
])
@pytest.mark.parametrize("language", ["numpy", "c"])
def test_inputs_and_parameters_named_like_softgrads_outputs_generate_checked_code(source, language):
    """The outputs softgrad adds (dx, J) are named apart from the spec's names by one rule (Derivation.
    output_names), which the kernels and the 40-digit reference both follow; a backward from the saved
    output takes the other inputs it reads."""
    if language == "c":
        require_tool("cc")
    from softgrad.codegen.emit import kernels_for
    from softgrad.verify.generated import check_generated

    derivation = softgrad.derive(source)
    names = ["forward", "vjp", "jacobian"] + (["vjp_from_output"] if "g[i]" in source else [])
    files = emit(derivation, language, names)
    checks = check_generated(derivation, files, kernels_for(derivation, names), files.dtype)
    assert checks and all(check.passed for check in checks), [check.line() for check in checks]
