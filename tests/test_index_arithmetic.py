"""Index arithmetic (issue #34): shifted positions (x[b, c, t + k], x[i + 1]), padded reads (`pad x`),
Iverson brackets ([j <= i]) and indices used as numbers. Convolutions are derived in the tutorial voice —
the backward a correlation with the flipped kernel, its edges stated as brackets — every step proved, and
generated NumPy and C equal torch's conv1d and conv2d."""

from pathlib import Path

import numpy as np
import pytest
import sympy as sp
from conftest import require_module, require_tool

from softgrad.codegen.build import import_path, load_c
from softgrad.codegen.emit import emit
from softgrad.derive import derive_spec, parse_spec
from softgrad.derive.symbols import Bracket, index
from softgrad.errors import SpecError
from softgrad.render.printers import inline_text
from softgrad.verify.generated import check_array_module

VALID = "y[b, c, t] = sum(w[c, k] * x[b, c, t + k], k)\n"
CAUSAL = "y[b, c, t] = sum(w[c, k] * x[b, c, t - k], k)\npad x\n"
SAME_2D = "y[b, o, i, j] = sum(W[o, c, p, q] * x[b, c, i + p - 1, j + q - 1], c, p, q) + bias[o]\npad x\n"
DIFFERENCES = "L = sum((x[i + 1] - x[i])^2, i)\n"


def test_an_input_read_at_t_plus_k_is_as_long_as_its_reads_reach() -> None:
    spec = parse_spec(VALID, "conv")
    assert spec.axes == {"w": ("c", "k"), "x": ("b", "c", "s"), "y": ("b", "c", "t")}
    n = spec.sizes
    assert spec.derived_sizes == {"s": n["t"] + n["k"] - 1}
    assert spec.size_formulas(["b", "c", "k", "s"])[0] == [("t", n["s"] - n["k"] + 1)]
    differences = parse_spec(DIFFERENCES, "differences")
    assert differences.derived_sizes == {"s": differences.sizes["i"] + 1}, "x has one more entry than i's range"


def test_a_padded_input_has_the_range_of_the_index_it_shifts() -> None:
    spec = parse_spec(SAME_2D, "conv2d")
    assert spec.axes["x"] == ("b", "c", "i", "j") and spec.derived_sizes == {} and spec.padded == ("x",)
    assert spec.statements[-1] == "pad x" and "x[b, c, i + p - 1, j + q - 1]" in spec.statements[0]
    assert parse_spec("\n".join(spec.statements)).statements == spec.statements


@pytest.mark.parametrize("text, message", [
    ("y[b, t] = sum(w[k] * x[b, t - k], k)", r"below its first entry.*declare 'pad x'"),
    ("y[i] = x[i] * [i]", r"expected a comparison"),
    ("y[i] = x[i] * [2 <= 3]", r"compares indices"),
    ("y[i] = x[i] * [i <= j]", r"undefined index 'j'"),
    ("y[b] = p[b, c[b] + 1]", r"cannot be shifted"),
    ("y[i] = x[i + 1.5]", r"whole numbers"),
    ("y[i] = x[i]\npad z", r"'pad z'.*not an input"),
    ("y[t] = x[t + 1]\nz = sum(y[j] * x[j], j)", r"both at a shifted position and at the plain index"),
    ("y[i] = x[i] * [0 < i < 3]", r"one comparison"),
])
def test_index_arithmetic_mistakes_are_one_clear_line(text: str, message: str) -> None:
    with pytest.raises(SpecError, match=message):
        parse_spec(text, "bad")


def test_brackets_and_indices_as_numbers_are_values() -> None:
    spec = parse_spec("y[i, j] = x[i, j] * [j <= i] + slope[i] * (j - i) * [i != j]", "alibi")
    i, j = index("i"), index("j")
    assert spec.output.expr.has(Bracket(i - j)) and spec.output.expr.has(sp.KroneckerDelta(i, j))
    assert inline_text(Bracket(i - j)) == "[j ≤ i]" and inline_text(Bracket(i - j - 1)) == "[j < i]"
    derivation = derive_spec(spec, wrt="x,slope")
    assert all(step.proved for step in derivation.steps)


def test_the_backward_of_a_convolution_is_a_correlation_with_the_flipped_kernel() -> None:
    derivation = derive_spec(parse_spec(VALID, "conv"))
    assert all(step.proved for step in derivation.steps)
    dx = inline_text(derivation.results["dx"].rhs)
    assert dx == "Σ_k [k ≤ s]·[s < k + nₜ]·dy[b, c, s − k]·w[c, k]", "a sum over the kernel, edges stated"
    assert inline_text(derivation.results["dw"].rhs) == "Σ_b,t dy[b, c, t]·x[b, c, k + t]"


def test_a_causal_convolutions_edges_that_always_hold_are_dropped() -> None:
    derivation = derive_spec(parse_spec(CAUSAL, "causal"))
    assert inline_text(derivation.results["dx"].rhs) == "Σ_k [k + t < nₜ]·dy[b, c, k + t]·w[c, k]"
    assert inline_text(derivation.results["dw"].rhs) == "Σ_b,t [k ≤ t]·dy[b, c, t]·x[b, c, t − k]"


def test_a_difference_of_neighbours_keeps_both_edges() -> None:
    derivation = derive_spec(parse_spec(DIFFERENCES, "differences"))
    assert all(step.proved for step in derivation.steps)
    gradient = derivation.results["dx"].rhs
    assert gradient.has(Bracket(index("s") - 1)), "x[0] has no left neighbour"


def test_a_wrong_edge_fails_the_check() -> None:
    """The checker reads outside an array as 0 and evaluates brackets: a sift that forgot an edge is caught."""
    from softgrad.derive import algebra

    spec = parse_spec(DIFFERENCES, "differences")
    x, s = sp.IndexedBase("x"), index("s")
    derivative = algebra.derivative(spec.output.expr, x[s])
    assert algebra.sift(derivative, edges=True) != algebra.sift(derivative), "without edges, x[s] at s = n_i is wrong"


def _torch_conv1d(torch, x, w, causal: bool):
    functional = torch.nn.functional
    if causal:
        return functional.conv1d(functional.pad(x, (w.shape[-1] - 1, 0)), w.flip(-1)[:, None, :], groups=w.shape[0])
    return functional.conv1d(x, w[:, None, :], groups=w.shape[0])


def _module(derivation, language: str, folder: Path):
    if language == "c":
        require_tool("cc")
    files = emit(derivation, language)
    assert all(check.passed for check in check_array_module(derivation, files))
    if language == "c":
        return load_c(files, folder)
    (path,) = [folder / name for name in files if name.endswith(".py")]
    path.write_text(files[path.name], encoding="utf-8")
    return import_path(path)


@pytest.mark.parametrize("language", ["numpy", "c"])
@pytest.mark.parametrize("causal", [False, True], ids=["valid", "causal"])
def test_generated_depthwise_convolution_equals_torch(language: str, causal: bool, tmp_path: Path) -> None:
    torch = require_module("torch")
    module = _module(derive_spec(parse_spec(CAUSAL if causal else VALID, "conv")), language, tmp_path)
    rng = np.random.default_rng(1)
    B, C, T, K = 2, 3, 9, 4
    w, dy = rng.normal(size=(C, K)), rng.normal(size=(B, C, T))
    x = rng.normal(size=(B, C, T if causal else T + K - 1))
    weights, inputs = torch.tensor(w, requires_grad=True), torch.tensor(x, requires_grad=True)
    expected = _torch_conv1d(torch, inputs, weights, causal)
    expected.backward(torch.tensor(dy))
    np.testing.assert_allclose(module.forward(w, x), expected.detach().numpy(), rtol=1e-12, atol=1e-13)
    dw, dx = module.gradients(w, x, dy)
    np.testing.assert_allclose(dw, weights.grad.numpy(), rtol=1e-12, atol=1e-13)
    np.testing.assert_allclose(dx, inputs.grad.numpy(), rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize(("T", "K"), [(9, 4), (3, 5), (0, 3), (4, 1)])
def test_numpy_reads_a_causal_convolutions_input_as_windows_at_every_length(T: int, K: int, tmp_path: Path) -> None:
    """x[b, c, t − k] is a view of sliding windows over x padded with the K − 1 zeros before it (no index arrays,
    no gathered copy, no masks for the edges the padding makes 0); right where the kernel is longer than the
    sequence and where the sequence is empty."""
    module = _module(derive_spec(parse_spec(CAUSAL, "conv")), "numpy", tmp_path)
    text = (tmp_path / "conv.py").read_text(encoding="utf-8")
    assert "_window(x, " in text and "_window(dy, " in text and "np.clip(" not in text
    assert ">= 0).astype" not in text  # the edges [k ≤ t], [k + t < n_t]: what the zeros outside x and dy say
    rng = np.random.default_rng(T + K)
    w, x, dy = rng.normal(size=(3, K)), rng.normal(size=(2, 3, T)), rng.normal(size=(2, 3, T))
    padded = np.concatenate([np.zeros((2, 3, K - 1)), x], axis=2)  # padded[..., s + K − 1] = x[..., s]
    reads = np.stack([padded[:, :, K - 1 - k:K - 1 - k + T] for k in range(K)], axis=-1)  # x[b, c, t − k]
    np.testing.assert_allclose(module.forward(w, x), np.einsum("ck,bctk->bct", w, reads), rtol=1e-13, atol=1e-14)
    dw, dx = module.gradients(w, x, dy)
    np.testing.assert_allclose(dw, np.einsum("bct,bctk->ck", dy, reads), rtol=1e-13, atol=1e-14)
    later = np.concatenate([dy, np.zeros((2, 3, K - 1))], axis=2)  # dx[s] = Σ_k w[k]·dy[s + k]
    expected_dx = np.einsum("ck,bcsk->bcs", w, np.stack([later[:, :, k:k + T] for k in range(K)], axis=-1))
    np.testing.assert_allclose(dx, expected_dx, rtol=1e-13, atol=1e-14)


def test_torch_reads_a_causal_convolutions_input_as_unfolded_windows(tmp_path: Path) -> None:
    """The torch module reads x[b, c, t − k] as windows unfolded over x padded with zeros (no gather, no masks),
    right at every length — the kernel longer than the sequence, an empty sequence — eager and under
    torch.compile(fullgraph=True)."""
    torch = require_module("torch")
    files = emit(derive_spec(parse_spec(CAUSAL, "conv")), "torch")
    (tmp_path / "conv.py").write_text(files["conv.py"], encoding="utf-8")
    module = import_path(tmp_path / "conv.py")
    assert "_window(x, " in files["conv.py"] and ">= 0)" not in files["conv.py"].split("def _forward(")[1]
    compiled = torch.compile(module.conv, fullgraph=True)
    for T, K, function in ((9, 4, module.conv), (3, 5, module.conv), (0, 3, module.conv), (9, 4, compiled)):
        rng = np.random.default_rng(T + K)
        w, x, dy = rng.normal(size=(3, K)), rng.normal(size=(2, 3, T)), rng.normal(size=(2, 3, T))
        weights, inputs = torch.tensor(w, requires_grad=True), torch.tensor(x, requires_grad=True)
        output = function(weights, inputs)
        output.backward(torch.tensor(dy))
        padded = np.concatenate([np.zeros((2, 3, K - 1)), x], axis=2)
        reads = np.stack([padded[:, :, K - 1 - k:K - 1 - k + T] for k in range(K)], axis=-1)  # x[b, c, t − k]
        np.testing.assert_allclose(output.detach().numpy(), np.einsum("ck,bctk->bct", w, reads), rtol=1e-13,
                                   atol=1e-14)
        np.testing.assert_allclose(weights.grad.numpy(), np.einsum("bct,bctk->ck", dy, reads), rtol=1e-13,
                                   atol=1e-14)
        later = np.concatenate([dy, np.zeros((2, 3, K - 1))], axis=2)  # dx[s] = Σ_k w[k]·dy[s + k]
        expected = np.einsum("ck,bcsk->bcs", w, np.stack([later[:, :, k:k + T] for k in range(K)], axis=-1))
        np.testing.assert_allclose(inputs.grad.numpy(), expected, rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize(("source", "calls"), [
    (SAME_2D, 3),  # y, dW and dx: each a matrix product of the kernel's matrix and the input's windows (im2col)
    ("y[b, o, t] = sum(W[o, c] * x[b, c, t], c)\n", 3),  # a 1×1 convolution: W·x[b] for every row b
])
def test_generated_c_convolutions_are_matrix_products_with_the_kernel_shared_by_every_row(
        source: str, calls: int, tmp_path: Path) -> None:
    """A contraction whose leading index only one operand has (b of the input) is one gemm per entry of it, the
    other operand's matrix (the kernel's) the same for every entry — not loops over the sums; the code passes
    codegen --check's comparison with the derivation."""
    derivation = derive_spec(parse_spec(source, "conv"))
    files = emit(derivation, "c")
    text = files["conv.c"].partition("int conv_backward(")[0]  # forward() and gradients()
    assert text.count("SOFTGRAD_GEMM(CblasRowMajor") == calls, text
    assert "for (size_t _batch = 0; _batch < _n_b; ++_batch)" in text  # one product per row b
    assert ", W, (int)" in text  # the kernel as it is, at the same place for every row (no `W + _batch * …`)
    assert all(check.passed for check in check_array_module(derivation, files))


@pytest.mark.parametrize("language", ["numpy", "c"])
def test_generated_2d_convolution_with_padding_equals_torch(language: str, tmp_path: Path) -> None:
    torch = require_module("torch")
    module = _module(derive_spec(parse_spec(SAME_2D, "conv2d")), language, tmp_path)
    rng = np.random.default_rng(2)
    W, x, bias = rng.normal(size=(4, 3, 3, 3)), rng.normal(size=(2, 3, 6, 5)), rng.normal(size=4)
    dy = rng.normal(size=(2, 4, 6, 5))
    tensors = [torch.tensor(a, requires_grad=True) for a in (W, x, bias)]
    expected = torch.nn.functional.conv2d(tensors[1], tensors[0], tensors[2], padding=1)
    expected.backward(torch.tensor(dy))
    np.testing.assert_allclose(module.forward(W, x, bias), expected.detach().numpy(), rtol=1e-12, atol=1e-12)
    for got, tensor in zip(module.gradients(W, x, bias, dy), tensors):
        np.testing.assert_allclose(got, tensor.grad.numpy(), rtol=1e-12, atol=1e-12)


def test_generated_code_names_a_shape_that_does_not_fit_its_reads(tmp_path: Path) -> None:
    module = _module(derive_spec(parse_spec(VALID, "conv")), "numpy", tmp_path)
    rng = np.random.default_rng(3)
    w, x = rng.normal(size=(3, 4)), rng.normal(size=(2, 3, 9))
    assert module.forward(w, x).shape == (2, 3, 6)
    with pytest.raises(ValueError, match=r"x has 9 entries along axis 2 \(index s\)"):
        module.gradients(w, x, rng.normal(size=(2, 3, 5)))
    with pytest.raises(ValueError, match=r"index t would have -2 entries"):
        module.forward(rng.normal(size=(3, 12)), x)


CAUSAL_ATTENTION = """S[i, j] = sum(Q[i, e] * K[j, e], e) / sqrt(size(e))
P[i, j] = [j <= i] * exp(S[i, j]) / sum([k <= i] * exp(S[i, k]), k)
O[i, f] = sum(P[i, j] * V[j, f], j)
"""
ALIBI = """S[h, i, j] = sum(Q[h, i, e] * K[h, j, e], e) / sqrt(size(e)) - slope[h] * (i - j)
P[h, i, j] = [j <= i] * exp(S[h, i, j]) / sum([k <= i] * exp(S[h, i, k]), k)
O[h, i, f] = sum(P[h, i, j] * V[h, j, f], j)
"""


def test_a_causal_mask_written_as_a_condition_derives_the_flash_attention_form() -> None:
    derivation = derive_spec(parse_spec(CAUSAL_ATTENTION, "causal-attention"))
    assert all(step.proved for step in derivation.steps)
    assert inline_text(derivation.results["dS"].rhs) == "(dP[i, j] - Σ_f O[i, f]·dO[i, f])·P[i, j]"


@pytest.mark.parametrize("language", ["numpy", "c"])
def test_generated_causal_attention_equals_torch_and_stays_finite(language: str, tmp_path: Path) -> None:
    torch = require_module("torch")
    module = _module(derive_spec(parse_spec(CAUSAL_ATTENTION, "causal-attention")), language, tmp_path)
    rng = np.random.default_rng(4)
    Q, K, V, dO = (rng.normal(size=shape) for shape in [(5, 4), (5, 4), (5, 3), (5, 3)])
    tensors = [torch.tensor(a, requires_grad=True) for a in (Q, K, V)]
    expected = torch.nn.functional.scaled_dot_product_attention(*tensors, is_causal=True)
    expected.backward(torch.tensor(dO))
    np.testing.assert_allclose(module.forward(Q, K, V), expected.detach().numpy(), rtol=1e-12, atol=1e-13)
    for got, tensor in zip(module.gradients(Q, K, V, dO), tensors):
        np.testing.assert_allclose(got, tensor.grad.numpy(), rtol=1e-11, atol=1e-12)
    huge = module.forward(Q * 1000, K * 1000, V)  # the masked maximum shifts: no overflow, no 0/0
    assert np.all(np.isfinite(huge))


def test_alibi_written_as_the_paper_writes_it_equals_torch(tmp_path: Path) -> None:
    torch = require_module("torch")
    derivation = derive_spec(parse_spec(ALIBI, "alibi"))
    assert "slope" in derivation.tensor.gradients and all(step.proved for step in derivation.steps)
    module = _module(derivation, "numpy", tmp_path)
    rng = np.random.default_rng(5)
    Q, K, V, dO = (rng.normal(size=shape) for shape in [(2, 5, 4), (2, 5, 4), (2, 5, 3), (2, 5, 3)])
    slope = np.array([0.5, 0.25])
    tensors = [torch.tensor(a, requires_grad=True) for a in (Q, K, V, slope)]
    positions = torch.arange(5, dtype=torch.float64)
    bias = -tensors[3][:, None, None] * (positions[:, None] - positions[None, :])
    causal = torch.ones(5, 5, dtype=torch.bool).tril()
    scores = tensors[0] @ tensors[1].transpose(-1, -2) / 2.0 + bias
    expected = torch.softmax(scores.masked_fill(~causal, float("-inf")), dim=-1) @ tensors[2]
    expected.backward(torch.tensor(dO))
    np.testing.assert_allclose(module.forward(Q, K, slope, V), expected.detach().numpy(), rtol=1e-12, atol=1e-13)
    gradients = dict(zip(derivation.tensor.gradients, module.gradients(Q, K, slope, V, dO)))
    for name, tensor in zip(["Q", "K", "V", "slope"], tensors):
        np.testing.assert_allclose(gradients[name], tensor.grad.numpy(), rtol=1e-11, atol=1e-12)


HAND_WRITTEN_CONVOLUTION = '''import numpy as np


def conv(w, x):
    K = w.shape[1]
    T = x.shape[2] - K + 1
    return sum(w[None, :, k, None] * x[:, :, k:k + T] for k in range(K))


def conv_backward(w, x, dy):
    K, T = w.shape[1], dy.shape[2]
    dw, dx = np.zeros_like(w), np.zeros_like(x)
    for k in range(K):
        dw[:, k] = np.einsum("bct,bct->c", dy, x[:, :, k:k + T])
        dx[:, :, k:k + T] += w[None, :, k, None] * dy
    return dw, dx


def conv_backward_first_position_lost(w, x, dy):
    dw, dx = conv_backward(w, x, dy)
    dx[:, :, 0] = 0
    return dw, dx
'''


@pytest.mark.parametrize("backward, status", [("conv_backward", 0), ("conv_backward_first_position_lost", 1)])
def test_verify_checks_a_hand_written_convolution_against_the_spec(backward: str, status: int,
                                                                    tmp_path: Path) -> None:
    import subprocess
    import sys

    (tmp_path / "conv.spec").write_text(VALID, encoding="utf-8")
    (tmp_path / "myconv.py").write_text(HAND_WRITTEN_CONVOLUTION, encoding="utf-8")
    result = subprocess.run([sys.executable, "-m", "softgrad", "verify", f"myconv.py:conv,{backward}", "--against",
                             "conv.spec", "--signature", "w,x -> y; w,x,dy -> dw,dx"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert result.returncode == status, result.stdout + result.stderr
    assert "n_s = " in result.stdout, "the size the shifted read reaches is the others' (n_t + n_k - 1)"
    if status:
        assert "worst element dx[" in result.stdout and ", 0] " in result.stdout


@pytest.mark.parametrize("text", ["y[i] = x[i] * [i <= 2]", "y[i] = x[i] * (i + 1)", "L = sum(x[2*k]^2, k)"])
@pytest.mark.parametrize("language", ["numpy", "c"])
def test_one_index_specs_with_conditions_strides_and_index_values_generate_checked_code(
        text: str, language: str, tmp_path: Path) -> None:
    """An index in a condition or as a number, or a stride, makes the spec a several-index one (one path)."""
    derivation = derive_spec(parse_spec(text, "odd"))
    assert derivation.tensor is not None and all(step.proved for step in derivation.steps)
    module = _module(derivation, language, tmp_path)
    if text.startswith("L"):  # x read at 2k: n_s = 2 n_k - 1, so n_k = (n_s + 1) // 2; an even n_s does not fit
        loss, dx = module.gradients(np.arange(5.0))
        assert float(loss) == 0 + 4 + 16 and list(dx) == [0, 0, 4, 0, 8]
        with pytest.raises(ValueError, match=r"index s"):
            module.gradients(np.arange(4.0))


@pytest.mark.parametrize("language", ["numpy", "c"])
def test_a_sum_both_inside_another_sum_and_outside_it_is_generated(language: str, tmp_path: Path) -> None:
    """Σ_k exp(x[k]) sits in a denominator of the backward both inside Σ_i1 … and on its own: C computes both
    (it once left the outer one unreplaced and stopped at "a sum reached the C printer")."""
    derivation = derive_spec(parse_spec("y[i] = exp(x[i]) / sum(exp(x[k]) * [k != i], k)", "leave-one-out"))
    module = _module(derivation, language, tmp_path)
    x, dy = np.array([0.3, -1.2, 2.0, 0.5]), np.array([1.0, -2.0, 0.5, 3.0])
    others = np.exp(x).sum() - np.exp(x)
    y = np.exp(x) / others
    assert np.allclose(module.forward(x), y, rtol=1e-13)
    # ∂y_i/∂x_j = y_i δ_ij + y_i e^x_j / others_i (j ≠ i): the Jacobian written by hand
    jacobian = np.diag(y) - (y / others)[:, None] * np.exp(x)[None, :] * (1 - np.eye(4))
    assert np.allclose(module.gradients(x, dy)[0], jacobian.T @ dy, rtol=1e-12)


def test_a_condition_may_compare_with_a_ranges_size() -> None:
    """[i + 1 < size(i)] (all but the last entry), as the derivations write edges; a position may not hold one."""
    derivation = derive_spec(parse_spec("L = sum(x[i]^2 * [i + 1 < size(i)], i)"))
    assert all(step.proved for step in derivation.steps)
    with pytest.raises(SpecError, match="undefined index 'size'"):
        parse_spec("y[i] = x[i + size(i)]")
