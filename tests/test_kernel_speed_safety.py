"""What the fast paths must not cost: the generated exp's accuracy and special values, loops that really
vectorize, OpenMP rows equal to serial rows, row-blocked NumPy with out= and ragged last blocks, and the
schedule computing each exp once. (Speed itself is measured in bench/kernels.py, not here.)"""

import ctypes
import inspect
import math
import os
import subprocess
import sys

import mpmath
import numpy as np
import pytest
import sympy as sp
from conftest import IN_CI, require_tool

import softgrad
from softgrad.codegen.backends.c import vector_math
from softgrad.codegen.build import STRICT_FLAGS, compile_shared, import_path, load_c
from softgrad.codegen.emit import _render, emit
from softgrad.codegen.lower.rows import applicable_kernels, lower
from softgrad.codegen.lower.schedule import schedule
from softgrad.derive.catalog import CATALOG

FUNCTIONS = ("exp", "log", "log1p", "expm1", "tanh", "sigmoid", "tanh_softplus", "erf")
EXACT = {"exp": mpmath.exp, "log": mpmath.log, "log1p": mpmath.log1p, "expm1": mpmath.expm1, "tanh": mpmath.tanh,
         "sigmoid": lambda v: 1 / (1 + mpmath.exp(-v)),
         "tanh_softplus": lambda v: mpmath.tanh(mpmath.log1p(mpmath.exp(v))), "erf": mpmath.erf}
LIBM = {"exp": np.exp, "log": np.log, "log1p": np.log1p, "expm1": np.expm1, "tanh": np.tanh,
        "sigmoid": lambda v: np.where(v >= 0, 1 / (1 + np.exp(-v)), np.exp(v) / (1 + np.exp(v))),
        "tanh_softplus": lambda v: np.tanh(np.logaddexp(0, v)),
        "erf": lambda v: np.vectorize(math.erf, otypes=[float])(v).astype(v.dtype)}
HARNESS = """#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <math.h>
{helpers}
""" + "".join(f"""
void apply_{name}(const {{t}} *restrict v, {{t}} *restrict out, size_t n)
{{{{
#pragma omp simd
    for (size_t i = 0; i < n; ++i) {{{{
        out[i] = softgrad_{name}{{s}}(v[i]);
    }}}}
}}}}
""" for name in FUNCTIONS) + """
void apply_pow(const {t} *restrict x, const {t} *restrict y, {t} *restrict out, size_t n)
{{
#pragma omp simd
    for (size_t i = 0; i < n; ++i) {{
        out[i] = softgrad_pow{s}(x[i], y[i]);
    }}
}}
"""


@pytest.fixture(scope="module")
def vector_functions(tmp_path_factory):
    """softgrad's generated elementary functions, each applied over an array by an `omp simd` loop."""
    require_tool("cc")
    folder = tmp_path_factory.mktemp("vector_math")
    functions = {}
    for dtype, t, s in (("float64", "double", ""), ("float32", "float", "f")):
        source = folder / f"math_{dtype}.c"
        helpers = _render("c/helpers.c.j2", helper_types=vector_math.helper_types(dtype))  # as a kernel's file has them
        source.write_text(HARNESS.format(helpers=helpers, t=t, s=s))
        library = ctypes.CDLL(str(compile_shared(source, folder / f"libmath_{dtype}.so")))
        for name in FUNCTIONS:
            function = getattr(library, f"apply_{name}")
            function.restype = None

            def call(values, function=function, dtype=dtype):
                values = np.ascontiguousarray(values, dtype=dtype)
                out = np.empty_like(values)
                function(values.ctypes.data_as(ctypes.c_void_p), out.ctypes.data_as(ctypes.c_void_p),
                         ctypes.c_size_t(values.size))
                return out

            functions[name, dtype] = call
        power = library.apply_pow
        power.restype = None

        def call_pow(x, y, function=power, dtype=dtype):
            x, y = np.ascontiguousarray(x, dtype=dtype), np.ascontiguousarray(y, dtype=dtype)
            out = np.empty_like(x)
            function(*(a.ctypes.data_as(ctypes.c_void_p) for a in (x, y, out)), ctypes.c_size_t(x.size))
            return out

        functions["pow", dtype] = call_pow
    functions["source"] = {dtype: folder / f"math_{dtype}.c" for dtype in ("float64", "float32")}
    return functions


@pytest.fixture(scope="module")
def exp_functions(vector_functions):
    return {dtype: vector_functions["exp", dtype] for dtype in ("float64", "float32")}


def _ulp_errors(values: np.ndarray, results: np.ndarray, name: str = "exp") -> np.ndarray:
    """|result − f(v)| in units of the last place of the correctly rounded f(v) (subnormals too); an
    overflowing f(v) must give the infinity of its sign."""
    dtype = values.dtype.type
    errors = []
    with mpmath.workprec(200):
        for value, result in zip(values, results):
            exact = EXACT[name](mpmath.mpf(float(value)))
            huge = abs(float(exact)) >= float(np.finfo(dtype).max)
            rounded = dtype(np.copysign(np.inf, float(exact))) if huge else dtype(float(exact))
            if np.isinf(rounded):
                errors.append(0.0 if result == rounded else np.inf)
                continue
            unit = np.spacing(abs(rounded)) if rounded != 0 else np.spacing(dtype(0))
            errors.append(float(abs(mpmath.mpf(float(result)) - exact) / mpmath.mpf(float(unit))))
    return np.array(errors)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_generated_exp_is_within_two_ulp_everywhere(exp_functions, dtype):
    """Uniform over the whole finite range, near 0, near overflow and through the subnormal range."""
    info = np.finfo(dtype)
    low, high = float(np.log(np.float64(info.smallest_subnormal))), float(np.log(np.float64(info.max)))
    rng = np.random.default_rng(7)
    values = np.concatenate([rng.uniform(low, high, 4000), rng.uniform(-1, 1, 2000),
                             rng.uniform(low, low + 30, 2000), rng.uniform(high - 2, high, 500),
                             np.arange(-20, 21, dtype=float) * np.log(2)]).astype(dtype)
    errors = _ulp_errors(values, exp_functions[dtype](values))
    assert errors.max() <= 2.0, f"worst {errors.max():.2f} ulp at {values[errors.argmax()]!r}"


def _test_values(name: str, dtype: str) -> np.ndarray:
    """Each function's whole domain: every binade of positive numbers (subnormals to the largest) for log,
    those shifted by −1 and values near −1 for log1p, both signs of every binade plus the ranges where each
    formula hands over to the next (|v| near ln 2 / 2, 0.55, the saturation points) for the others."""
    info = np.finfo(dtype)
    rng = np.random.default_rng(11)
    tiny, huge = np.log(float(info.smallest_subnormal)), np.log(float(info.max))
    positive = np.concatenate([np.exp(rng.uniform(tiny, huge, 3000)), rng.uniform(0.5, 2, 1500),
                               1 + rng.uniform(-1e-3, 1e-3, 300), 2.0 ** np.arange(-20, 21)])
    signed = np.concatenate([np.exp(rng.uniform(tiny, 7, 2000)) * rng.choice([-1, 1], 2000),
                             rng.uniform(-1.2, 1.2, 2000), rng.uniform(-30, 30, 3000), [0.3466, -0.3466, 0.55, -0.55]])
    values = {"log": positive,
              "log1p": np.concatenate([positive - 1, positive, -1 + np.exp(rng.uniform(-30, 0, 500))]),
              "expm1": np.concatenate([signed, rng.uniform(-45, huge, 1500)]),
              "tanh": np.concatenate([signed, rng.uniform(-25, 25, 1000)]),
              "sigmoid": np.concatenate([signed, rng.uniform(-750, 750, 1000)]),
              "tanh_softplus": np.concatenate([signed, rng.uniform(-750, 750, 1000)]),
              "erf": np.concatenate([signed, rng.uniform(-7, 7, 3000), np.repeat([1.0, 2.5, 6.0], 200)
                                     * (1 + rng.uniform(-1e-3, 1e-3, 600)) * rng.choice([-1, 1], 600)])}[name]
    values = values.astype(dtype)
    return values[np.isfinite(values) & ((values > -1) if name == "log1p" else True)]


@pytest.mark.parametrize("name", ["log", "log1p", "expm1", "tanh", "sigmoid", "tanh_softplus", "erf"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_generated_elementary_functions_are_within_two_ulp(vector_functions, name, dtype):
    values = _test_values(name, dtype)
    errors = _ulp_errors(values, vector_functions[name, dtype](values), name)
    assert errors.max() <= 2.0, f"{name}: worst {errors.max():.2f} ulp at {values[errors.argmax()]!r}"


@pytest.mark.parametrize("name", FUNCTIONS)
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_generated_elementary_functions_special_values(vector_functions, name, dtype):
    """±inf, NaN, ±0, subnormals, the largest numbers, and the ends of each domain: what libm gives."""
    info = np.finfo(dtype)
    values = np.array([np.inf, -np.inf, np.nan, 0.0, -0.0, info.smallest_subnormal, -info.smallest_subnormal,
                       info.tiny, -info.tiny, info.max, -info.max, 1.0, -1.0, -2.0, 710.0, -710.0], dtype=dtype)
    with np.errstate(all="ignore"):
        expected = LIBM[name](values)
    results = vector_functions[name, dtype](values)
    for value, result, reference in zip(values, results, expected):
        if np.isnan(reference) or np.isinf(reference) or reference == 0:
            assert result == reference or (np.isnan(result) and np.isnan(reference)), (value, result, reference)
        else:
            assert abs(result - reference) <= 2 * np.spacing(abs(reference)), (value, result, reference)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_generated_pow_is_within_two_ulp(vector_functions, dtype):
    """x^y with x over every binade and y taking y·log x over the whole range of results (subnormal to
    overflow), small bases and exponents, and x near 1 raised to huge y (where log x must be exact to far
    more than a double holds)."""
    info = np.finfo(dtype)
    rng = np.random.default_rng(5)
    x = np.exp(rng.uniform(np.log(float(info.smallest_subnormal)), np.log(float(info.max)), 1500))
    y = rng.uniform(-1.05, 1.05, 1500) * np.log(float(info.max)) / np.log(x)
    x = np.concatenate([x, rng.uniform(0, 3, 800), 1 + rng.uniform(-1e-6, 1e-6, 400)]).astype(dtype)
    y = np.concatenate([y, rng.uniform(-30, 30, 800), rng.uniform(-1e9, 1e9, 400)]).astype(dtype)
    x, y = x[np.isfinite(x) & np.isfinite(y)], y[np.isfinite(x) & np.isfinite(y)]
    results = vector_functions["pow", dtype](x, y)
    worst = (0.0, None)
    with mpmath.workprec(300):
        for base, exponent, result in zip(x, y, results):
            exact = mpmath.power(mpmath.mpf(float(base)), mpmath.mpf(float(exponent)))
            if abs(exact) >= float(info.max):
                assert result == np.inf, (base, exponent, result)
                continue
            rounded = x.dtype.type(float(exact))
            unit = np.spacing(abs(rounded)) if rounded != 0 else np.spacing(x.dtype.type(0))
            error = float(abs(mpmath.mpf(float(result)) - exact) / mpmath.mpf(float(unit)))
            worst = max(worst, (error, (base, exponent)), key=lambda pair: pair[0])
    assert worst[0] <= 2.0, f"worst {worst[0]:.2f} ulp at x, y = {worst[1]}"


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_generated_pow_special_values(vector_functions, dtype):
    """C99's table for pow (what libm gives): every pair of 0, ±1, ±inf, NaN, subnormals, the largest
    numbers, negative bases with integer, odd, even and non-integer exponents."""
    info = np.finfo(dtype)
    bases = [0.0, -0.0, 1.0, -1.0, 2.0, -2.0, 0.5, -0.5, np.inf, -np.inf, np.nan, info.tiny,
             info.smallest_subnormal, info.max, -3.0, -info.max]
    exponents = [0.0, -0.0, 1.0, -1.0, 2.0, 3.0, -3.0, 0.5, -0.5, np.inf, -np.inf, np.nan, float(info.max),
                 -7.0, 2.5, 2.0 ** (info.nmant + 1) + 2, 2.0 ** info.nmant + 1]
    x, y = (grid.ravel().astype(dtype) for grid in np.meshgrid(bases, exponents))
    with np.errstate(all="ignore"):
        expected = np.power(x, y)
    results = vector_functions["pow", dtype](x, y)
    for base, exponent, result, reference in zip(x, y, results, expected):
        if np.isnan(reference) or np.isinf(reference) or reference == 0:
            assert (result == reference and np.signbit(result) == np.signbit(reference)) or (
                np.isnan(result) and np.isnan(reference)), (base, exponent, result, reference)
        else:
            assert abs(result - reference) <= 2 * np.spacing(abs(reference)), (base, exponent, result, reference)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_every_generated_function_vectorizes(vector_functions, dtype):
    """gcc reports each function's `omp simd` loop vectorized: none of them holds a branch or a libm call."""
    cc = require_tool("gcc")
    if "gcc" not in subprocess.run([cc, "--version"], capture_output=True, text=True).stdout.lower() and not IN_CI:
        pytest.skip("the vectorization report is gcc's")
    source = vector_functions["source"][dtype]
    lines = source.read_text().splitlines()
    loops = {number + 2: lines[number - 2] for number, line in enumerate(lines) if "#pragma omp simd" in line}
    run = subprocess.run(["gcc", *STRICT_FLAGS, "-fopt-info-vec-optimized", "-c", str(source), "-o", "/dev/null"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    vectorized = {int(line.split(":")[1]) for line in run.stderr.splitlines() if "loop vectorized" in line}
    missed = [function for line, function in loops.items() if not {line, line + 1} & vectorized]
    assert len(loops) == len(FUNCTIONS) + 1 and not missed, f"not vectorized: {missed}"  # + pow


def test_exp_polynomial_degree_follows_from_the_unit_roundoff():
    """The polynomial's degree is computed, not chosen: lower for float than for double, and near 1, 1."""
    double, single = vector_math.polynomial("float64"), vector_math.polynomial("float32")
    assert len(double) > len(single) >= 5
    assert abs(double[0] - 1) < 1e-15 and abs(double[1] - 1) < 1e-15


@pytest.mark.slow
@pytest.mark.parametrize("name", ["softmax", "log-softmax", "cross-entropy", "kl-divergence", "binary-cross-entropy",
                                  "y[i] = x[i]*tanh(log(1 + exp(x[i])))",
                                  "p[i] = exp(z[i]) / sum(exp(z[k]), k); L = -sum(t[k]*(1-p[k])^g*log(p[k]), k)",
                                  "y[i] = x[i]^7 + x[i]^1.5"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_every_entry_loop_vectorizes_with_gcc(tmp_path, name, dtype):
    """A performance regression no timing test could catch reliably: a loop that stops vectorizing.

    Each `omp simd` loop of the row kernels that calls no libm function must be reported vectorized by
    gcc (the explicit Jacobian's inner loop is left out: it is for small n)."""
    cc = require_tool("gcc")
    if "gcc" not in subprocess.run([cc, "--version"], capture_output=True, text=True).stdout.lower() and not IN_CI:
        pytest.skip("the vectorization report is gcc's")
    derivation = softgrad.derive(name)
    kernels = [k for k in ("forward", "vjp", "vjp_from_output", "loss_and_grad") if k in applicable_kernels(derivation)]
    files = emit(derivation, "c", kernels, dtype=dtype)
    for file_name, text in files.items():
        (tmp_path / file_name).write_text(text)
    source = next(tmp_path.glob("*.c"))
    lines = source.read_text().splitlines()
    loops = {number + 2 for number, line in enumerate(lines) if line.strip().startswith("#pragma omp simd")}
    run = subprocess.run(["gcc", *STRICT_FLAGS, "-fopt-info-vec-optimized", "-c", str(source), "-o",
                          str(tmp_path / "kernels.o")], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    vectorized = {int(line.split(":")[1]) for line in run.stderr.splitlines() if "loop vectorized" in line}
    # every loop of these calls only softgrad's own functions (exp, log, log1p, σ, pow): none may stay scalar
    missed = [k for k in loops if not {k, k + 1} & vectorized]  # gcc names the `for` line or the body's first
    assert loops and not missed, f"not vectorized: {[lines[k - 1].strip() for k in missed]}"


def test_openmp_rows_give_the_serial_results_bit_for_bit(tmp_path):
    require_tool("cc")
    derivation = softgrad.derive("cross-entropy")
    rng = np.random.default_rng(3)
    x = rng.normal(0, 4, (37, 301))
    t = rng.dirichlet(np.ones(301), 37)
    results = []
    for openmp in (False, True):
        folder = tmp_path / str(openmp)
        folder.mkdir()
        files = emit(derivation, "c", ["loss_and_grad"], openmp=openmp)
        assert ("#pragma omp parallel for" in files["cross_entropy.c"]) == openmp
        kernels = load_c(files, folder, "cross_entropy")
        results.append(kernels.cross_entropy_loss_and_grad(x, t))
    for serial, threaded in zip(*results):
        np.testing.assert_array_equal(serial, threaded)


def _threaded_kernels(derivation, kernels, folder, split_from: int, stream: bool):
    """The OpenMP build of a derivation's kernels, rows of split_from entries or more split over threads
    (and, with stream, every output streamed out in chunks of 16 entries)."""
    files = emit(derivation, "c", kernels, openmp=True)
    for name, text in files.items():
        (folder / name).write_text(text)
    library = compile_shared(folder / f"{files.module}.c", folder / f"lib{files.module}.so", openmp=True,
                             extra_flags=[f"-DSOFTGRAD_SPLIT_MIN={split_from}"]
                             + (["-DSOFTGRAD_STREAM_MIN_BYTES=1", "-DSOFTGRAD_CHUNK=16"] if stream else []))
    return import_path(folder / f"{files.module}_ctypes.py").load(library)


def _as_tuple(result):
    return result if isinstance(result, tuple) else (result,)


def _set_openmp_threads(count: int) -> None:
    import ctypes.util
    ctypes.CDLL(ctypes.util.find_library("gomp") or "libgomp.so.1").omp_set_num_threads(count)


LAYER_NORM = "m = sum(x[k], k)/n; v = sum((x[k] - m)^2, k)/n; y[i] = (x[i] - m)/sqrt(v + 0.00001)"


@pytest.mark.parametrize("name", ["cross-entropy", "softmax", "kl-divergence", LAYER_NORM])
@pytest.mark.parametrize("stream", [False, True], ids=["stores", "streaming stores"])
def test_long_rows_split_over_threads_agree_with_serial_and_repeat_bit_for_bit(tmp_path, name, stream):
    """Rows split over 2 and 3 threads (the split forced on for short rows, odd lengths so that slices are
    uneven): the serial results to rounding, every run the same bits, a masked row still finite."""
    require_tool("cc")
    derivation = softgrad.derive(name)
    kernels = [k for k in ("forward", "vjp", "loss_and_grad") if k in applicable_kernels(derivation)]
    rng = np.random.default_rng(5)
    rows, n = 4, 1001
    arrays = {"x": rng.normal(0, 4, (rows, n)), "z": rng.normal(0, 4, (rows, n)), "g": rng.normal(size=(rows, n)),
              "t": rng.dirichlet(np.ones(n), rows), "q": rng.dirichlet(np.ones(n), rows)}
    arrays["x"][1, :] = arrays["z"][1, :] = -np.inf if name == "cross-entropy" else arrays["x"][1, :]
    if name == "cross-entropy":
        arrays["t"][1, :] = 0
    serial_folder, threaded_folder = tmp_path / "serial", tmp_path / "threaded"
    serial_folder.mkdir()
    threaded_folder.mkdir()
    serial = load_c(emit(derivation, "c", kernels), serial_folder)
    threaded = _threaded_kernels(derivation, kernels, threaded_folder, split_from=64, stream=stream)
    try:
        for kernel in kernels:
            function_name = next(f for f in dir(serial) if f.endswith("_" + kernel))
            inputs = [arrays[argument] for argument in
                      [p for p in inspect.signature(getattr(serial, function_name)).parameters if p in arrays]]
            expected = getattr(serial, function_name)(*inputs)
            for threads in (2, 3):
                _set_openmp_threads(threads)
                first = getattr(threaded, function_name)(*inputs)
                second = getattr(threaded, function_name)(*inputs)
                for a, b, reference in zip(_as_tuple(first), _as_tuple(second), _as_tuple(expected)):
                    np.testing.assert_array_equal(a, b)
                    np.testing.assert_allclose(a, reference, rtol=1e-12, atol=1e-14)
    finally:
        _set_openmp_threads(os.cpu_count() or 1)


def test_streaming_stores_give_the_cached_results_bit_for_bit(tmp_path):
    """The streamed output path (large outputs) against the plain one, forced on for a small array."""
    require_tool("cc")
    derivation = softgrad.derive("softmax")
    rng = np.random.default_rng(4)
    y = rng.dirichlet(np.ones(1531), 5)  # n not a multiple of the chunk or the vector width
    g = rng.normal(size=y.shape)
    results = []
    for threshold in ("1", "((size_t)1 << 60)"):
        folder = tmp_path / str(len(results))
        folder.mkdir()
        for file_name, text in emit(derivation, "c", ["vjp_from_output"], dtype="float32").items():
            (folder / file_name).write_text(text)
        library = compile_shared(folder / "softmax.c", folder / "libsoftmax.so",
                                 extra_flags=[f"-DSOFTGRAD_STREAM_MIN_BYTES={threshold}"])
        kernels = import_path(folder / "softmax_ctypes.py").load(library)
        results.append(kernels.softmax_vjp_from_output(y, g))
    np.testing.assert_array_equal(results[0], results[1])
    assert np.abs(results[0] - y * (g - (g * y).sum(-1, keepdims=True))).max() < 1e-6


def test_openmp_is_refused_for_numpy():
    result = subprocess.run([sys.executable, "-m", "softgrad", "codegen", "softmax", "--lang", "numpy", "--openmp",
                             "-o", "unused"], capture_output=True, text=True)
    assert result.returncode == 2 and "--openmp does not apply to --lang numpy" in result.stderr


@pytest.fixture(scope="module")
def numpy_cross_entropy(tmp_path_factory):
    folder = tmp_path_factory.mktemp("blocked")
    (name, text), = emit(softgrad.derive("cross-entropy"), "numpy").items()
    (folder / name).write_text(text)
    return import_path(folder / name)


def _reference_cross_entropy(x, t):
    shifted = x - x.max(-1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    return -(t * log_p).sum(-1), np.exp(log_p) * t.sum(-1, keepdims=True) - t


@pytest.mark.parametrize("rows, n", [(70, 1000), (3, 40000), (1, 1), (0, 5), (65, 3)])
def test_numpy_blocks_cover_every_row_once(numpy_cross_entropy, rows, n):
    """Row counts that leave a ragged last block, rows longer than a block, and the degenerate shapes."""
    rng = np.random.default_rng(rows + n)
    x, t = rng.normal(0, 3, (rows, n)), rng.dirichlet(np.ones(n), rows) if rows else np.zeros((0, n))
    loss, gradient = numpy_cross_entropy.cross_entropy_loss_and_grad(x, t)
    expected_loss, expected_gradient = _reference_cross_entropy(x, t)
    np.testing.assert_allclose(loss, expected_loss, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(gradient, expected_gradient, rtol=1e-12, atol=1e-15)


def test_numpy_out_is_written_in_place_or_copied_when_it_must_be(numpy_cross_entropy):
    rng = np.random.default_rng(5)
    x, t = rng.normal(size=(40, 3000)), rng.dirichlet(np.ones(3000), 40)
    _, expected = _reference_cross_entropy(x, t)
    out = np.empty_like(x)
    _, gradient = numpy_cross_entropy.cross_entropy_loss_and_grad(x, t, out=out)
    assert gradient is out
    np.testing.assert_allclose(out, expected, atol=1e-15)
    strided = np.empty((40, 6000))[:, ::2]  # not contiguous: computed elsewhere, then copied in
    _, gradient = numpy_cross_entropy.cross_entropy_loss_and_grad(x, t, out=strided)
    assert gradient is strided
    np.testing.assert_allclose(strided, expected, atol=1e-15)
    aliased = x.copy()  # out may be an input: it is then computed elsewhere first
    _, gradient = numpy_cross_entropy.cross_entropy_loss_and_grad(aliased, t, out=aliased)
    assert gradient is aliased
    np.testing.assert_allclose(aliased, expected, atol=1e-15)
    with pytest.raises(ValueError, match="out has shape"):
        numpy_cross_entropy.cross_entropy_loss_and_grad(x, t, out=np.empty((40, 2999)))


@pytest.mark.parametrize("name", list(CATALOG))
def test_the_output_loop_never_recomputes_what_a_reduction_loop_stored(name):
    """Where an output reuses a reduction loop's per-entry exp, it is stored there once and read back."""
    derivation = softgrad.derive(name)
    for kernel_name in ("forward", "vjp", "loss_and_grad"):
        if kernel_name not in applicable_kernels(derivation):
            continue
        plan = schedule(lower(derivation, kernel_name))
        if (name in ("softmax", "softmax-temperature", "cross-entropy") and kernel_name != "forward") or (
                name in ("softmax", "softmax-temperature") and kernel_name == "forward"):
            assert plan.stash, f"{kernel_name}: nothing stored"
        if plan.stash:
            output = [e for _, e in plan.output_loop.stores + plan.output_loop.temporaries]
            assert not any(e.atoms(sp.exp) for e in output), f"{kernel_name}: {output}"


def test_softmax_forward_takes_exp_once_per_entry():
    files = emit(softgrad.derive("softmax"), "c", ["forward"])
    body = files["softmax.c"].split("void softmax_forward")[1]
    assert body.count("softgrad_exp(") == 1
