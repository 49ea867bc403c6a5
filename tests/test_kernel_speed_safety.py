"""What the fast paths must not cost: the generated exp's accuracy and special values, loops that really
vectorize, OpenMP rows equal to serial rows, row-blocked NumPy with out= and ragged last blocks, and the
schedule computing each exp once. (Speed itself is measured in bench/kernels.py, not here.)"""

import ctypes
import subprocess
import sys

import mpmath
import numpy as np
import pytest
import sympy as sp
from conftest import IN_CI, require_tool

import softgrad
from softgrad.codegen import c_math
from softgrad.codegen.build import STRICT_FLAGS, compile_shared, import_path, load_c
from softgrad.codegen.emit import emit
from softgrad.codegen.lower import applicable_kernels, lower
from softgrad.codegen.schedule import schedule
from softgrad.derive.catalog import CATALOG

HARNESS = """#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <math.h>
{helpers}
void apply_exp(const {t} *restrict v, {t} *restrict out, size_t n)
{{
#pragma omp simd
    for (size_t i = 0; i < n; ++i) {{
        out[i] = softgrad_exp{s}(v[i]);
    }}
}}
"""


@pytest.fixture(scope="module")
def exp_functions(tmp_path_factory):
    require_tool("cc")
    folder = tmp_path_factory.mktemp("exp")
    functions = {}
    for dtype, t, s in (("float64", "double", ""), ("float32", "float", "f")):
        source = folder / f"exp_{dtype}.c"
        source.write_text(HARNESS.format(helpers=c_math.c_source(dtype), t=t, s=s))
        library = ctypes.CDLL(str(compile_shared(source, folder / f"libexp_{dtype}.so")))
        library.apply_exp.restype = None

        def call(values, library=library, dtype=dtype):
            values = np.ascontiguousarray(values, dtype=dtype)
            out = np.empty_like(values)
            library.apply_exp(values.ctypes.data_as(ctypes.c_void_p), out.ctypes.data_as(ctypes.c_void_p),
                              ctypes.c_size_t(values.size))
            return out

        functions[dtype] = call
    return functions


def _ulp_errors(values: np.ndarray, results: np.ndarray) -> np.ndarray:
    """|result − exp(v)| in units of the last place of the correctly rounded exp(v) (subnormals too)."""
    mpmath.mp.prec = 120
    dtype = values.dtype.type
    errors = []
    for value, result in zip(values, results):
        exact = mpmath.exp(mpmath.mpf(float(value)))
        rounded = dtype(float(exact)) if float(exact) < float(np.finfo(dtype).max) else dtype(np.inf)
        if np.isinf(rounded):
            errors.append(0.0 if np.isinf(result) else np.inf)
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


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_generated_exp_special_values(exp_functions, dtype):
    info = np.finfo(dtype)
    values = np.array([np.inf, -np.inf, np.nan, 0.0, -0.0, 1e4, -1e4, info.max, -info.max], dtype=dtype)
    results = exp_functions[dtype](values)
    assert results[0] == np.inf and results[1] == 0 and np.isnan(results[2])
    assert results[3] == 1 and results[4] == 1
    assert results[5] == np.inf and results[6] == 0 and results[7] == np.inf and results[8] == 0
    # the smallest subnormal and the largest finite result, exactly where libm puts them
    edge = np.array([np.log(np.float64(info.smallest_subnormal)), np.log(np.float64(info.max)) - 1e-3], dtype=dtype)
    reference = np.exp(edge.astype(np.float64)).astype(dtype)
    np.testing.assert_array_equal(exp_functions[dtype](edge), reference)


def test_exp_polynomial_degree_follows_from_the_unit_roundoff():
    """The polynomial's degree is computed, not chosen: lower for float than for double, and near 1, 1."""
    double, single = c_math.polynomial("float64"), c_math.polynomial("float32")
    assert len(double) > len(single) >= 5
    assert abs(double[0] - 1) < 1e-15 and abs(double[1] - 1) < 1e-15


@pytest.mark.slow
@pytest.mark.parametrize("name", ["softmax", "log-softmax", "cross-entropy", "kl-divergence"])
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
    # loops that call libm's log (KL's t·log t) stay scalar: only softgrad's own exp is vectorizable
    loops = {k for k in loops if not any(f in "".join(lines[k - 1:k + 6]) for f in ("log(", "logf(", "log1p"))}
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
