"""Generated NumPy and C: right against the exact result, finite differences and PyTorch; stable; O(n)."""

import os
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import require_module, require_tool
from outside_catalog import OUTSIDE_THE_CATALOG

import softgrad
from softgrad.codegen.build import import_path, load_c
from softgrad.codegen.emit import emit, kernels_for
from softgrad.codegen.lower.rows import identifier, lower
from softgrad.derive.catalog import CATALOG
from softgrad.errors import SoftgradError
from softgrad.verify.generated import check_generated, check_kernels

REFERENCES: dict = {}  # high-precision references, shared by every language and dtype


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(derivation, kernels, {(language, dtype): functions}) per catalog entry, built once."""
    require_tool("cc")
    cache = {}

    def build(name):
        if name not in cache:
            derivation = softgrad.derive(name)
            kernels = kernels_for(derivation, None)
            functions = {}
            for dtype in ("float64", "float32"):
                folder = tmp_path_factory.mktemp(f"{identifier(derivation)}_{dtype}")
                functions["c", dtype] = load_c(emit(derivation, "c", dtype=dtype), folder, identifier(derivation))
                (module_name, text), = emit(derivation, "numpy").items()
                (folder / module_name).write_text(text)
                functions["numpy", dtype] = import_path(folder / module_name)
            cache[name] = (derivation, kernels, functions)
        return cache[name]

    return build


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("language", ["numpy", "c"])
@pytest.mark.parametrize("name", list(CATALOG))
def test_every_kernel_matches_exact_result_and_finite_differences(built, name, language, dtype):
    derivation, kernels, functions = built(name)
    bound = 1e-14 if dtype == "float64" else 1e-5
    for size in (1, 2, 3, 1000):
        rows = 2 if size == 1000 else 5
        # the explicit Jacobian is a small-n kernel: its n = 1000 reference alone would be 10^6 entries
        chosen = [k for k in kernels if size < 1000 or not k.name.endswith("_jacobian")]
        for scale in (1.0, 3.0) if size < 1000 else (1.0,):  # N(0, 1) logits, and one class dominating
            checks = check_kernels(derivation, chosen, functions[language, dtype], dtype, rows=rows, size=size,
                                   seed=size, cache=REFERENCES, scale=scale)
            assert {c.kernel for c in checks} == {k.name for k in chosen}
            for check in checks:
                assert check.passed, f"n = {size}, scale {scale}: {check.line()}"
                if check.against == "exact" and scale == 1.0:  # the accuracy bound on random logits
                    assert check.error <= bound, f"n = {size}: {check.line()}"


def test_rows_zero_and_n_one(built):
    _derivation, _kernels, functions = built("softmax")
    for language in ("numpy", "c"):
        module = functions[language, "float64"]
        assert module.softmax_forward(np.zeros((0, 4))).shape == (0, 4)
        np.testing.assert_array_equal(module.softmax_forward(np.full((3, 1), 7.0)), np.ones((3, 1)))
        np.testing.assert_array_equal(module.softmax_vjp(np.ones((3, 1)), np.ones((3, 1))), np.zeros((3, 1)))


TORCH_FUNCTIONS = {
    "softmax": lambda torch, x, other, T: torch.softmax(x, -1),
    "log-softmax": lambda torch, x, other, T: torch.log_softmax(x, -1),
    "softmax-temperature": lambda torch, x, other, T: torch.softmax(x / T, -1),
    "sigmoid": lambda torch, x, other, T: torch.sigmoid(x),
    "logsumexp": lambda torch, x, other, T: torch.logsumexp(x, -1),
    "cross-entropy": lambda torch, x, t, T: torch.nn.functional.cross_entropy(x, t, reduction="none"),
    "cross-entropy-onehot": lambda torch, x, t, T: torch.nn.functional.cross_entropy(x, t, reduction="none"),
    "kl-divergence": lambda torch, z, q, T: torch.nn.functional.kl_div(
        torch.log_softmax(z, -1), q, reduction="none").sum(-1),
    "binary-cross-entropy": lambda torch, x, t, T: torch.nn.functional.binary_cross_entropy_with_logits(
        x, t, reduction="none").sum(-1),
}


def _torch_reference(torch, name, logits, other, T, upstream):
    """Forward and gradient (vjp for vector functions, gradient of the per-row loss) by autograd."""
    x = torch.tensor(logits, dtype=torch.float64, requires_grad=True)
    t = torch.tensor(other, dtype=torch.float64) if other is not None else None
    value = TORCH_FUNCTIONS[name](torch, x, t, T)
    weight = torch.tensor(upstream) if value.dim() == 2 else torch.ones_like(value)
    (value * weight).sum().backward()
    return value.detach().numpy(), x.grad.numpy()


def _inputs(derivation, rows, size, rng, logits):
    other = None
    for name in derivation.spec.inputs:
        if name != derivation.wrt:
            other = rng.uniform(0.05, 1, (rows, size))
            if derivation.spec.constraints:
                other /= other.sum(-1, keepdims=True)
    return logits, other


def _ours(module, derivation, logits, other, T, upstream):
    prefix = identifier(derivation)
    extra = [other] if other is not None else []
    parameters = [T] if derivation.spec.parameters else []
    if derivation.spec.output.is_vector:
        forward = getattr(module, f"{prefix}_forward")(logits, *extra, *parameters)
        gradient = getattr(module, f"{prefix}_vjp")(logits, *extra, upstream, *parameters)
        return forward, gradient
    return getattr(module, f"{prefix}_loss_and_grad")(logits, *extra, *parameters)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("language", ["numpy", "c"])
@pytest.mark.parametrize("name", list(CATALOG))
def test_agrees_with_pytorch(built, name, language, dtype):
    """PyTorch (float64 autograd) as an independent oracle; float32 kernels get float32-rounded inputs."""
    torch = require_module("torch")
    derivation, _, functions = built(name)
    rng = np.random.default_rng(11)
    relative = 1e-10 if dtype == "float64" else 2e-5
    for size in (1, 2, 3, 1000):
        for scale in (1.0, 30.0):
            logits, other = _inputs(derivation, 4, size, rng, rng.normal(0, scale, (4, size)))
            upstream = rng.normal(size=(4, size))
            logits, upstream = logits.astype(dtype), upstream.astype(dtype)
            other = None if other is None else other.astype(dtype)
            expected = _torch_reference(torch, name, logits.astype(np.float64),
                                        None if other is None else other.astype(np.float64), 1.3,
                                        upstream.astype(np.float64))
            got = _ours(functions[language, dtype], derivation, logits, other, 1.3, upstream)
            for ours, theirs in zip(got, expected):
                scale_of = max(1.0, float(np.abs(theirs).max()))
                np.testing.assert_allclose(np.asarray(ours, dtype=np.float64), theirs, rtol=relative,
                                           atol=relative * scale_of)


@pytest.mark.parametrize("language", ["numpy", "c"])
@pytest.mark.parametrize("name", ["softmax", "log-softmax", "logsumexp", "cross-entropy", "kl-divergence",
                                  "softmax-temperature", "binary-cross-entropy", "sigmoid"])
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_extreme_and_masked_logits_stay_finite_and_right(built, name, language, dtype):
    torch = require_module("torch")
    derivation, _, functions = built(name)
    rng = np.random.default_rng(5)
    logits = rng.normal(0, 1e4, (6, 9)).astype(dtype).astype(np.float64)  # magnitude 1e4: naive exp overflows
    logits[:, 0] = 1e4
    masked = logits.copy()
    masked[:, [2, 5]] = -np.inf  # masked classes (not for the sigmoid family, where -inf is a value)
    cases = [logits] if name in ("sigmoid", "binary-cross-entropy") else [logits, masked]
    for case in cases:
        _, other = _inputs(derivation, 6, 9, rng, case)
        if other is not None:
            other[~np.isfinite(case)] = 0.0  # no target mass on a masked class
        upstream = rng.normal(size=case.shape)
        upstream[~np.isfinite(case)] = 0.0  # no gradient flows into a masked output
        if dtype == "float32":  # the reference gets the same float32-rounded inputs
            other = None if other is None else other.astype(dtype).astype(np.float64)
            upstream = upstream.astype(dtype).astype(np.float64)
        def cast(a):
            return (a if a is None else a.astype(dtype))
        got = _ours(functions[language, dtype], derivation, cast(case), cast(other), 1.3, cast(upstream))
        for value in got:
            finite_classes = np.isfinite(case) if np.ndim(value) == 2 else np.ones(case.shape[0], bool)
            assert np.isfinite(value[finite_classes]).all(), f"{name}: non-finite output for extreme logits"
        # the reference: PyTorch on the unmasked classes only (a masked class contributes exactly 0)
        keep = np.isfinite(case[0])
        expected = _torch_reference(torch, name, case[:, keep], None if other is None else other[:, keep],
                                    1.3, upstream[:, keep])
        tolerance = 1e-9 if dtype == "float64" else 2e-5
        for ours, theirs in zip(got, expected):
            ours = ours[:, keep] if np.ndim(ours) == 2 else ours
            np.testing.assert_allclose(np.asarray(ours, np.float64), theirs, rtol=tolerance,
                                       atol=tolerance * max(1.0, float(np.abs(theirs).max())))
            if np.ndim(got[0]) == 2 and name != "log-softmax":
                assert (got[0][:, ~keep] == 0).all() if (~keep).any() else True


@pytest.mark.slow
@pytest.mark.parametrize("spec", [
    "y[i] = x[i]**2 / sum(x[k]**2, k)",
    "y[i] = exp(x[i]) / sum(exp(x[k]), k)\nH = -sum(y[k] * log(y[k]), k)",
    "y[i] = exp(x[i] / T) / sum(exp(x[k] / T), k)",
])
@pytest.mark.parametrize("language", ["numpy", "c"])
def test_specs_outside_the_catalog_go_the_whole_way(spec, language, tmp_path):
    require_tool("cc")
    result = subprocess.run([sys.executable, "-m", "softgrad", "codegen", spec, "--lang", language,
                             "-o", str(tmp_path), "--check"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "FAIL" not in result.stderr and result.stderr.count("ok ") >= 6
    assert any(p.suffix == (".c" if language == "c" else ".py") for p in tmp_path.iterdir())


def test_vjp_reductions_are_per_row_scalars():
    """The O(n) property: every reduction in a VJP is a per-row scalar, never a per-entry sum."""
    for spec in ["softmax", "softmax-temperature", "log-softmax", "y[i] = x[i]**2 / sum(x[k]**2, k)"]:
        kernel = lower(softgrad.derive(spec), "vjp")
        for output in kernel.outputs:
            assert not output.expr.atoms(__import__("sympy").Sum)
        assert kernel.reductions and all(r.op in ("sum", "max") for r in kernel.reductions)


def test_numpy_kernels_take_any_leading_shape_and_axis(built):
    _derivation, _, functions = built("softmax")
    module = functions["numpy", "float64"]
    rng = np.random.default_rng(2)
    x = rng.normal(size=(2, 5, 3))
    y = module.softmax_forward(x, axis=1)
    np.testing.assert_allclose(y.sum(axis=1), 1.0)
    np.testing.assert_allclose(y, np.moveaxis(module.softmax_forward(np.moveaxis(x, 1, -1)), -1, 1))
    out = np.empty_like(x)
    assert module.softmax_forward(x, axis=1, out=out) is out
    assert module.softmax_forward(x.astype(np.float32)).dtype == np.float32


def test_generation_is_deterministic_across_processes(tmp_path):
    outputs = []
    for seed in ("1", "2"):
        folder = tmp_path / seed
        env = dict(os.environ, PYTHONHASHSEED=seed)
        subprocess.run([sys.executable, "-m", "softgrad", "codegen", "kl-divergence", "--lang", "c", "-o", str(folder)],
                       check=True, capture_output=True, env=env, timeout=300)
        outputs.append({p.name: p.read_bytes() for p in folder.iterdir()})
    assert outputs[0] == outputs[1]
    header = outputs[0]["kl_divergence.h"].decode()
    assert "Generated by softgrad" in header and "p[i] = exp(z[i])" in header and "(rows, n)" in header


def test_a_kernel_that_does_not_apply_is_a_clear_error():
    with pytest.raises(SoftgradError, match="does not apply"):
        emit(softgrad.derive("softmax"), "c", ["loss_and_grad"])
    result = subprocess.run([sys.executable, "-m", "softgrad", "codegen", "softmax", "--lang", "c",
                             "--kernel", "loss_and_grad", "-o", "unused"], capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.count("\n") == 1


def test_check_fails_with_exit_1_when_generated_code_is_wrong(monkeypatch, tmp_path):
    """--check must catch a wrong kernel: a 1e-6 relative error slipped into the softmax VJP."""
    from click.testing import CliRunner

    import softgrad.codegen.emit as emit_module
    from softgrad.cli import main

    original = emit_module.emit

    def corrupted(*args, **kwargs):
        files = original(*args, **kwargs)
        (name, text), = files.items()
        assignment = "    dx = _vector_result(dx, _shape, axis, out)\n"
        assert assignment in text
        files[name] = text.replace(assignment, assignment + "    dx = dx * 1.000001\n")
        return files  # the same GeneratedFiles, one file corrupted

    monkeypatch.setattr(emit_module, "emit", corrupted)
    result = CliRunner().invoke(main, ["codegen", "softmax", "--lang", "numpy", "--kernel", "vjp",
                                       "-o", str(tmp_path), "--check"])
    assert result.exit_code == 1
    assert "FAIL softmax_vjp: dx vs exact" in result.output
    assert "does not match the derivation; nothing was written" in result.output
    assert list(tmp_path.iterdir()) == []  # a failed check leaves no code behind


@pytest.mark.slow
@pytest.mark.parametrize("language", ["numpy", "c"])
@pytest.mark.parametrize("spec", OUTSIDE_THE_CATALOG)
def test_every_kernel_of_functions_outside_the_catalog_runs_and_matches(spec, language):
    """Generated kernels of specs the catalog does not have build, run and match the exact result and
    finite differences (the NumPy VJPs of GELU-tanh and Mish once raised NameError)."""
    if language == "c":
        require_tool("cc")
    derivation = softgrad.derive(spec)
    files = emit(derivation, language)
    checks = check_generated(derivation, files, kernels_for(derivation, None))
    failed = [check.line() for check in checks if not check.passed]
    assert not failed, failed


@pytest.mark.parametrize("language", ["numpy", "c"])
@pytest.mark.parametrize("spec", [
    "y[i] = exp(x[i]) / sum(exp(2*x[k]), k)",
    "L = log(sum(exp(x[k]), k)) + log(sum(exp(2*x[k]), k))",
])
def test_exponentials_of_several_scales_are_shifted_by_as_many_maxima(spec, language):
    """exp(2x) is shifted by 2·max x, and exp(2m) cancels against exp(m)² where the expression is scale-free:
    the backward passes of such specs stay finite at logits of 1000 (they overflowed, so nothing was written)."""
    if language == "c":
        require_tool("cc")
    derivation = softgrad.derive(spec)
    files = emit(derivation, language)
    checks = check_generated(derivation, files, kernels_for(derivation, None))
    assert any("magnitude 1000" in check.line() for check in checks)
    assert not [check.line() for check in checks if not check.passed]


@pytest.mark.slow
@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("spec", [
    "p[i] = exp(z[i]) / sum(exp(z[k]), k); L = -sum(t[k]*(1-p[k])^g*log(p[k]), k)",  # focal loss, γ a parameter
    "y[i] = x[i]^7 + x[i]^1.5 - x[i]^(-2.5)",
])
def test_c_kernels_with_powers_match(spec, dtype):
    """Powers the loops compute with softgrad's pow (a runtime exponent, 7) or with multiplies and a sqrt
    (half-integers): every kernel matches the exact result and finite differences."""
    require_tool("cc")
    derivation = softgrad.derive(spec)
    files = emit(derivation, "c", dtype=dtype)
    source = next(text for name, text in files.items() if name.endswith(".c"))
    # an entry loop calls it (not only the helper's definition): kernels' own names start with "_"
    assert re.search(r"^\s+(const \w+ )?_\w+(\[.*\])? = .*softgrad_powf?\(", source, re.M)
    checks = check_generated(derivation, files, kernels_for(derivation, None), dtype=dtype)
    failed = [check.line() for check in checks if not check.passed]
    assert checks and not failed, failed


def build_module(files, language, folder):
    """Generated files built and loaded: C compiled with the strict flags, NumPy imported."""
    if language == "c":
        return load_c(files, folder)
    ((name, text),) = files.items()
    (folder / name).write_text(text)
    return import_path(folder / name)


@pytest.mark.parametrize("language", ["numpy", "c"])
def test_softplus_and_logistic_ratios_written_out_stay_finite(language, tmp_path):
    """log(1 + exp(x)) and its gradient exp(x)/(1 + exp(x)) overflow to inf and inf/inf at x ≈ 800 when
    computed as written: the generated code uses softplus and σ, which do not."""
    if language == "c":
        require_tool("cc")
    derivation = softgrad.derive("y[i] = log(1 + exp(x[i]))")
    module = build_module(emit(derivation, language), language, tmp_path)
    x = np.array([[-800.0, -30.0, 0.0, 30.0, 300.0, 800.0]])
    value = module.y_forward(x)
    gradient = module.y_vjp(x, np.ones_like(x))
    np.testing.assert_allclose(value, np.logaddexp(0, x), rtol=1e-15)
    with np.errstate(over="ignore"):  # exp(800) in the reference σ(−800) = 1/(1 + inf) = 0, exactly
        expected = 1 / (1 + np.exp(-x))
    np.testing.assert_allclose(gradient, expected, rtol=1e-15, atol=1e-300)


@pytest.mark.slow
@pytest.mark.parametrize("language", ["numpy", "c"])
def test_a_power_with_a_parameter_has_its_true_derivative_at_zero(language, tmp_path):
    """d/dx x^g is g·x^(g−1): 0 at x = 0 for g = 2.5 and 1 for g = 1, not the 0/0 of SymPy's g·x^g/x."""
    if language == "c":
        require_tool("cc")
    module = build_module(emit(softgrad.derive("y[i] = x[i]^g"), language), language, tmp_path)
    x = np.array([[0.0, 0.5, 2.0]])
    for g in (2.5, 1.0, 3.0):
        gradient = module.y_vjp(x, np.ones_like(x), g)
        np.testing.assert_allclose(gradient, g * x ** (g - 1), rtol=1e-15)


LAYER_NORM = "m = sum(x[k], k)/n; v = sum((x[k] - m)^2, k)/n; y[i] = (x[i] - m)/sqrt(v + 0.00001)"


def _layer_norm_backward_exact(x: np.ndarray, g: np.ndarray) -> np.ndarray:
    """(g − mean g − x̂ mean(g x̂)) / σ in 40 digits, from the inputs as given."""
    import mpmath

    with mpmath.workdps(40):
        size = len(x)
        xs, gs = [mpmath.mpf(float(v)) for v in x], [mpmath.mpf(float(v)) for v in g]
        mean = sum(xs) / size
        sigma = mpmath.sqrt(sum((v - mean) ** 2 for v in xs) / size + mpmath.mpf(1e-5))
        normalised = [(v - mean) / sigma for v in xs]
        mean_g = sum(gs) / size
        mean_gy = sum(a * b for a, b in zip(gs, normalised)) / size
        return np.array([float((gs[a] - mean_g - normalised[a] * mean_gy) / sigma) for a in range(size)])


@pytest.mark.parametrize("language", ["numpy", "c"])
@pytest.mark.parametrize("dtype, mean, target", [("float64", 1000.0, 1e-12), ("float32", 100.0, 1e-5)])
def test_layer_norm_backward_is_accurate_far_from_zero_mean(language, dtype, mean, target, tmp_path):
    """The variance is computed centred (two passes), not as Σx² − nμ², which loses 7 digits at mean 1000."""
    if language == "c":
        require_tool("cc")
    derivation = softgrad.derive(LAYER_NORM)
    module = build_module(emit(derivation, language, dtype=dtype if language == "c" else None), language, tmp_path)
    rng = np.random.default_rng(3)
    x = (mean + rng.normal(size=(3, 1024))).astype(dtype)
    g = rng.normal(size=(3, 1024)).astype(dtype)
    got = module.y_vjp(x, g)
    for row in range(3):
        exact = _layer_norm_backward_exact(x[row], g[row])
        assert np.abs(got[row] - exact).max() / np.abs(exact).max() <= target


@pytest.mark.parametrize("language", ["numpy", "c"])
def test_an_implicit_zero_logit_does_not_overflow(language, tmp_path):
    """exp(x_i) / (1 + Σ exp(x_k)): the max shift does not cancel against the 1, so the code shifts by
    M = max(0, max x) and writes the 1 as exp(−M); log(1 + Σ exp(x_k)) = M + log(exp(−M) + Σ exp(x_k − M))."""
    if language == "c":
        require_tool("cc")
    x = np.array([[300.0, 299.0, -5.0], [1000.0, 0.0, -1000.0], [-800.0, -900.0, -1000.0], [0.1, 0.2, -0.3]])
    shifted = np.maximum(0, x.max(axis=1, keepdims=True))
    denominator = np.exp(-shifted) + np.exp(x - shifted).sum(axis=1, keepdims=True)
    for spec, kernel, expected in [
        ("y[i] = exp(x[i]) / (1 + sum(exp(x[k]), k))", "y_forward", np.exp(x - shifted) / denominator),
        ("L = log(1 + sum(exp(x[k]), k))", "L_forward", (shifted + np.log(denominator))[:, 0]),
    ]:
        derivation = softgrad.derive(spec)
        folder = tmp_path / kernel
        folder.mkdir()
        module = build_module(emit(derivation, language), language, folder)
        got = getattr(module, kernel)(x)
        assert np.isfinite(got).all(), got
        np.testing.assert_allclose(got, expected, rtol=1e-14, atol=1e-300)


def test_check_tries_logits_of_magnitude_1000_and_masks_where_the_spec_allows(monkeypatch):
    """codegen --check judges outputs at logits ±1000 and −inf masks against exact values: a kernel
    without the max shift passes the ordinary inputs and fails there."""
    from softgrad.codegen.lower import rows as lowering
    from softgrad.verify.generated import masks_apply

    assert masks_apply(softgrad.derive("softmax"))
    assert not masks_apply(softgrad.derive("y[i] = exp(-x[i]) / sum(exp(-x[k]), k)"))  # masked by +inf
    assert not masks_apply(softgrad.derive("kl-divergence"))  # q log q at a masked class is undefined
    assert not masks_apply(softgrad.derive("y[i] = tanh(x[i])"))
    derivation = softgrad.derive("softmax")
    checks = check_generated(derivation, emit(derivation, "numpy"), kernels_for(derivation, None))
    extreme = [c for c in checks if "magnitude 1000" in c.against]
    assert extreme and all(c.passed for c in checks)
    monkeypatch.setattr(lowering, "stabilize", lambda expr, spec: (expr, []))
    naive = check_generated(derivation, emit(derivation, "numpy"), kernels_for(derivation, None))
    assert all(c.passed for c in naive if "magnitude 1000" not in c.against)
    assert not all(c.passed for c in naive if "magnitude 1000" in c.against)


def test_layer_norm_with_bessels_correction_is_checked_where_it_has_a_value():
    """torch.var's default divides by n − 1, which has no value at n = 1: --check says so and checks the
    kernels at the other lengths (it was an internal error)."""
    derivation = softgrad.derive(BESSEL)
    files = emit(derivation, "numpy")
    checks = check_generated(derivation, files, kernels_for(derivation, None), files.dtype)
    assert checks[0].line() == "skip every kernel at n = 1: y has no value there (a division by 0)"
    compared = [c for c in checks[1:] if c.line().startswith(("ok", "FAIL"))]
    assert all(c.passed for c in checks) and len(compared) >= 8


BESSEL = "m = sum(x[k], k)/n; v = sum((x[k] - m)^2, k)/(n - 1); y[i] = (x[i] - m)/sqrt(v + 0.00001)"
