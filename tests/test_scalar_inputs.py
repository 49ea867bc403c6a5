"""Learnable scalars (issue #34): `--wrt T` differentiates a bare name — a temperature, a logit scale — as an
input without indices: derived (every step proved), generated (NumPy, C, torch, JAX: a scalar among the
gradients) and verified like any gradient, against torch's own temperature-scaled cross-entropy."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import sympy as sp
from conftest import require_module, require_tool

from softgrad.codegen.build import load_c
from softgrad.codegen.emit import emit
from softgrad.derive import derive_spec, parse_spec
from softgrad.derive.spec import with_scalar_inputs
from softgrad.errors import SpecError
from softgrad.verify.generated import check_array_module

TEMPERATURE = "P[b, c] = exp(z[b, c] / T) / sum(exp(z[b, k] / T), k)\nL = -sum(log(P[b, y[b]]), b) / size(b)\n"
LOGIT_SCALE = """S[i, j] = exp(t) * sum(A[i, e] * B[j, e], e)
L = -sum(log(exp(S[i, i]) / sum(exp(S[i, k]), k)), i) / size(i)
"""


def _inputs(rng: np.random.Generator, rows: int = 6, classes: int = 5) -> tuple[np.ndarray, np.ndarray, float]:
    return rng.normal(0, 3, (rows, classes)), rng.integers(0, classes, rows), 1.7


def test_the_temperature_is_an_input_without_indices_and_its_gradient_is_the_tutorials() -> None:
    derivation = derive_spec(parse_spec(TEMPERATURE, "temperature"), wrt="z,T")
    assert derivation.spec.inputs == ["z", "y", "T"] and derivation.spec.parameters == []
    assert derivation.tensor.axes["T"] == () and derivation.tensor.gradients == {"z": "dz", "T": "dT"}
    result = derivation.results["dT"].rhs
    T = sp.Symbol("T", positive=True)
    assert result.has(T) and not sp.expand(result * T**2).has(T)  # (Σ z[b, y_b] − Σ P·z) / (T²·n_b)
    marks = [step.proved for step in derivation.steps]
    assert all(marks), "every step is proved exactly, the scalar's too"
    reasons = " ".join(str(step.reason) for step in derivation.steps)
    assert "T a scalar read by every entry" in reasons


def test_a_name_that_is_neither_input_nor_parameter_is_refused_naming_both() -> None:
    with pytest.raises(SpecError, match=r"inputs: z, y; parameters: T"):
        derive_spec(parse_spec(TEMPERATURE, "temperature"), wrt="Q")


def test_a_one_index_spec_with_a_learnable_scalar_is_derived_by_rows() -> None:
    spec = with_scalar_inputs(parse_spec("y[i] = exp(x[i] / T) / sum(exp(x[k] / T), k)", "s"), ["T"])
    assert spec.axes["x"] == ("b", "i") and spec.axes["T"] == ()
    derivation = derive_spec(parse_spec("y[i] = exp(x[i] / T) / sum(exp(x[k] / T), k)", "s"), wrt="x,T")
    assert set(derivation.tensor.gradients) == {"x", "T"} and all(step.proved for step in derivation.steps)


@pytest.mark.parametrize("language", ["numpy", "c"])
def test_generated_code_equals_torch_temperature_scaled_cross_entropy(language: str, tmp_path: Path) -> None:
    torch = require_module("torch")
    if language == "c":
        require_tool("cc")
    derivation = derive_spec(parse_spec(TEMPERATURE, "temperature"), wrt="z,T")
    files = emit(derivation, language)
    assert all(check.passed for check in check_array_module(derivation, files))
    module = load_c(files, tmp_path) if language == "c" else _import(files, tmp_path)
    z, y, T = _inputs(np.random.default_rng(0))
    loss, dz, dT = module.gradients(z, y, np.asarray(T))
    assert np.shape(dT) == ()
    logits = torch.tensor(z, requires_grad=True)
    temperature = torch.tensor(T, dtype=torch.float64, requires_grad=True)
    expected = torch.nn.functional.cross_entropy(logits / temperature, torch.tensor(y))
    expected.backward()
    assert float(loss) == pytest.approx(float(expected), rel=1e-12)
    assert float(dT) == pytest.approx(float(temperature.grad), rel=1e-10)
    np.testing.assert_allclose(dz, logits.grad.numpy(), rtol=1e-10, atol=1e-14)


def _import(files, folder: Path):
    from softgrad.codegen.build import import_path

    (path,) = [folder / name for name in files if name.endswith(".py")]
    path.write_text(files[path.name])
    return import_path(path)


def test_the_torch_module_holds_the_temperature_as_a_parameter_that_starts_at_1(tmp_path: Path) -> None:
    torch = require_module("torch")
    (tmp_path / "t.spec").write_text(TEMPERATURE)
    result = subprocess.run([sys.executable, "-m", "softgrad", "codegen", "-f", "t.spec", "--wrt", "z,T", "--weights",
                             "T", "--lang", "torch", "-o", "out", "--check"], capture_output=True, text=True,
                            timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    from softgrad.codegen.build import import_path

    (path,) = (tmp_path / "out").glob("*.py")
    module = import_path(path)
    layer = next(getattr(module, name) for name in module.__all__ if isinstance(getattr(module, name), type)
                 and issubclass(getattr(module, name), torch.nn.Module))(dtype=torch.float64)
    assert float(layer.T) == 1.0
    z, y, _ = _inputs(np.random.default_rng(1))
    layer(torch.tensor(z), torch.tensor(y)).backward()
    temperature = torch.tensor(1.0, dtype=torch.float64, requires_grad=True)
    torch.nn.functional.cross_entropy(torch.tensor(z) / temperature, torch.tensor(y)).backward()
    assert float(layer.T.grad) == pytest.approx(float(temperature.grad), rel=1e-10)


def test_the_jax_function_differentiates_the_temperature(tmp_path: Path) -> None:
    jax = require_module("jax")
    (tmp_path / "t.spec").write_text(TEMPERATURE)
    result = subprocess.run([sys.executable, "-m", "softgrad", "codegen", "-f", "t.spec", "--wrt", "z,T", "--lang",
                             "jax", "-o", "out", "--check"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    from softgrad.codegen.build import import_path

    (path,) = (tmp_path / "out").glob("*.py")
    module = import_path(path)
    z, y, T = _inputs(np.random.default_rng(2))
    with jax.enable_x64(True):
        function = getattr(module, module.__all__[0])
        got = jax.grad(lambda t: function(jax.numpy.asarray(z), jax.numpy.asarray(y), t))(jax.numpy.float64(T))

        def reference(t):
            log_p = jax.nn.log_softmax(jax.numpy.asarray(z) / t, axis=1)
            return -log_p[np.arange(len(y)), y].mean()

        assert float(got) == pytest.approx(float(jax.grad(reference)(jax.numpy.float64(T))), rel=1e-10)


def test_a_logit_scale_gets_the_sum_of_scores_times_their_adjoint() -> None:
    derivation = derive_spec(parse_spec(LOGIT_SCALE, "clip"), wrt="A,t")
    result = derivation.results["dt"].rhs
    assert {str(b.label) for b in result.atoms(sp.IndexedBase)} == {"S", "dS"}  # ∂L/∂t = Σ S·dS
    assert all(step.proved for step in derivation.steps)


CODE = '''
import numpy as np

def temperature_loss(z, y, T):
    u = z / T
    u = u - u.max(axis=1, keepdims=True)
    log_p = u - np.log(np.exp(u).sum(axis=1, keepdims=True))
    rows = np.arange(len(z))
    d = np.exp(log_p)
    d[rows, y] -= 1
    return -log_p[rows, y].mean(), d / (len(z) * T), -(d * z).sum() / (len(z) * T * T)

def temperature_loss_sign(z, y, T):
    loss, dz, dT = temperature_loss(z, y, T)
    return loss, dz, -dT
'''


@pytest.mark.parametrize("function, status", [("temperature_loss", 0), ("temperature_loss_sign", 1)])
def test_code_returning_the_temperatures_gradient_is_verified(tmp_path: Path, function: str, status: int) -> None:
    (tmp_path / "code.py").write_text(CODE)
    (tmp_path / "t.spec").write_text(TEMPERATURE)
    result = subprocess.run([sys.executable, "-m", "softgrad", "verify", f"code.py:{function}", "--against", "t.spec",
                             "--signature", "z,y,T->loss,dz,dT"], capture_output=True, text=True, timeout=300,
                            cwd=tmp_path)
    assert result.returncode == status, result.stdout + result.stderr
    if status:
        assert "worst element dT" in result.stdout and "hint: dT is the exact gradient with its sign flipped" in \
            result.stdout


@pytest.mark.parametrize("language", ["numpy", "c", "torch", "jax"])
def test_clips_loss_written_inline_is_generated_stable_and_equal_to_torch(language: str, tmp_path: Path) -> None:
    """−log(exp(S[i, i]) / Σ_k exp(S[i, k])) as CLIP's papers write it: the ratio is computed as a row softmax
    (shifted by its maximum; its log as S − logsumexp), so the extremes check passes on every target."""
    torch = require_module("torch")
    if language == "c":
        require_tool("cc")
    if language == "jax":
        require_module("jax")
    derivation = derive_spec(parse_spec(LOGIT_SCALE, "clip"), wrt="A,t")
    result = subprocess.run([sys.executable, "-m", "softgrad", "codegen", "-f", "clip.spec", "--wrt", "A,t", "--lang",
                             language, "-o", "out", "--check"], capture_output=True, text=True, timeout=300,
                            cwd=_written(tmp_path, LOGIT_SCALE))
    assert result.returncode == 0, result.stderr
    if language != "numpy":
        return
    from softgrad.codegen.build import import_path

    module = import_path(next((tmp_path / "out").glob("*.py")))
    assert derivation.tensor.gradients == {"A": "dA", "t": "dt"}
    rng = np.random.default_rng(4)
    A, B, t = rng.normal(size=(5, 3)), rng.normal(size=(5, 3)), 0.7
    loss, dA, dt = module.gradients(A, B, np.asarray(t))
    a, scale = torch.tensor(A, requires_grad=True), torch.tensor(t, dtype=torch.float64, requires_grad=True)
    expected = torch.nn.functional.cross_entropy(scale.exp() * a @ torch.tensor(B).T, torch.arange(5))
    expected.backward()
    assert float(loss) == pytest.approx(float(expected), rel=1e-12)
    assert float(dt) == pytest.approx(float(scale.grad), rel=1e-10)
    np.testing.assert_allclose(dA, a.grad.numpy(), rtol=1e-10, atol=1e-13)


def _written(folder: Path, text: str) -> Path:
    (folder / "clip.spec").write_text(text)
    return folder


def test_a_spec_may_declare_its_learnable_scalar() -> None:
    """`input T` marks a bare name as learned: an input without indices, differentiated by default."""
    spec = parse_spec(TEMPERATURE + "input T\n", "temperature")
    assert spec.inputs == ["z", "y", "T"] and spec.parameters == [] and spec.axes["T"] == ()
    assert spec.statements[-1] == "input T" and parse_spec("\n".join(spec.statements)).statements == spec.statements
    derivation = derive_spec(spec)
    assert derivation.tensor.gradients == {"z": "dz", "T": "dT"}
    one_row = parse_spec("y[i] = exp(x[i] / T) / sum(exp(x[k] / T), k)\ninput T", "softmax-temperature")
    assert one_row.axes["T"] == () and one_row.axes["x"] == ("b", "i"), "its row index written out"
    with pytest.raises(SpecError, match=r"'input x'.*not a bare name"):
        parse_spec("y[i] = exp(x[i])\ninput x", "bad")
