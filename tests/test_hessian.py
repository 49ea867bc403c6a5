"""Second order (issue #32): a loss's Hessian derived as the Jacobian of its derived gradient — by cases,
Kronecker and matrix form — and its Hessian–vector product in O(n), generated and checked."""

import tempfile
from pathlib import Path

import numpy as np
import pytest
import sympy as sp
from click.testing import CliRunner
from conftest import checked_module, require_module

import softgrad
from softgrad.cli import main
from softgrad.codegen.build import import_path
from softgrad.codegen.emit import emit, kernels_for
from softgrad.derive import derive_spec, load_spec
from softgrad.derive.hessian import gradient_spec, hessian
from softgrad.errors import SoftgradError, SpecError
from softgrad.verify.generated import check_generated

LOSSES = ["cross-entropy", "cross-entropy-onehot", "kl-divergence", "binary-cross-entropy", "logsumexp"]


@pytest.mark.parametrize("name", LOSSES)
def test_every_step_of_every_catalog_loss_hessian_is_checked_and_proved(name):
    second = hessian(softgrad.derive(name))
    assert second.order == 2 and second.sections[0].title == "Gradient (first order)"
    assert all(step.checked for step in second.steps)
    assert all(step.proved for step in second.steps), [s.rule for s in second.steps if not s.proved]
    assert {"jacobian_equal", "jacobian", "vjp"} <= set(second.results)


def test_softmax_cross_entropy_hessian_is_diag_p_minus_p_p_transposed_and_its_product_is_o_of_n():
    second = hessian(softgrad.derive("cross-entropy-onehot"))
    text = second.render("text")
    assert "H = diag(y) - y⋅y" in text
    j = second.results["vjp"].indices[0]
    v, y = sp.IndexedBase("v"), sp.IndexedBase("y")
    product = second.results["vjp"].rhs
    assert product.has(v[j]) and product.has(y[j]) and len(product.atoms(sp.Sum)) == 1  # one reduction: O(n)
    # any targets: Σ_k t_k (diag(p) − ppᵀ), the factor the issue names
    assert "Σₖ tₖ" in hessian(softgrad.derive("cross-entropy")).render("text")


def test_the_gradient_spec_is_the_loss_definitions_and_the_gradient():
    text, name = gradient_spec(softgrad.derive("logsumexp"))
    assert name == "g" and text.splitlines()[-1].startswith("g[j] = ") and text.startswith("L = log(")
    with pytest.raises(SpecError, match="applies to a loss"):
        gradient_spec(softgrad.derive("softmax"))


@pytest.mark.parametrize("language", ["numpy", "c"])
@pytest.mark.parametrize("name", ["cross-entropy-onehot", "binary-cross-entropy", "kl-divergence"])
def test_the_hvp_kernel_passes_its_check_with_extremes(name, language):
    second = hessian(softgrad.derive(name))
    files = emit(second, language, ["hvp"])
    kernel_names = [line for line in next(iter(files.values())).splitlines() if "hvp" in line]
    assert kernel_names
    checks = check_generated(second, files, kernels_for(second, ["hvp"]), files.dtype)
    assert all(check.passed for check in checks), [check.line() for check in checks if not check.passed]


def test_hvp_matches_torch_double_backward():
    torch = require_module("torch")

    second = hessian(softgrad.derive("cross-entropy"))
    with tempfile.TemporaryDirectory() as folder:
        (name, text), = emit(second, "numpy", ["hvp"]).items()
        (Path(folder) / name).write_text(text)
        module = import_path(Path(folder) / name)
        rng = np.random.default_rng(0)
        x, t, v = rng.normal(size=(4, 6)), rng.random((4, 6)), rng.normal(size=(4, 6))
        mine = module.cross_entropy_hessian_hvp(x, t, v)
    tx = torch.tensor(x, requires_grad=True)
    loss = -(torch.tensor(t) * torch.log_softmax(tx, -1)).sum()
    (gradient,) = torch.autograd.grad(loss, tx, create_graph=True)
    (theirs,) = torch.autograd.grad(gradient, tx, torch.tensor(v))
    np.testing.assert_allclose(mine, theirs.numpy(), rtol=1e-12, atol=1e-14)


def test_cli_order_two_and_kernel_hvp(tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["derive", "binary-cross-entropy", "--order", "2"])
    assert result.exit_code == 0 and "H = diag((𝟙 - p)∘p)" in result.output
    result = runner.invoke(main, ["derive", "softmax", "--order", "2"])  # an array output: L = Σ dy·y
    assert result.exit_code == 0 and "L = sum(dy[i]*y[i], i)" in result.output
    result = runner.invoke(main, ["codegen", "cross-entropy", "--kernel", "hvp", "--lang", "numpy", "-o",
                                  str(tmp_path)])
    assert result.exit_code == 0 and "def cross_entropy_hessian_hvp(x, t, v" in (
        tmp_path / "cross_entropy_hessian.py").read_text()
    with pytest.raises(SoftgradError, match="needs --order 2"):
        emit(softgrad.derive("cross-entropy"), "numpy", ["hvp"])


def _hvp(x, t, v):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    p = e / e.sum(axis=1, keepdims=True)
    return t.sum(axis=1, keepdims=True) * p * (v - (v * p).sum(axis=1, keepdims=True))


def _hvp_for_targets_that_sum_to_one(x, t, v):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    p = e / e.sum(axis=1, keepdims=True)
    return p * (v - (v * p).sum(axis=1, keepdims=True))


def test_verify_a_hand_written_hessian_vector_product():
    """H·v is checked against the derived product, elementwise, with finite differences of the exact gradient:
    the product that drops Σt is right only where the spec says the targets sum to 1."""
    from softgrad.verify import check_gradient

    assert check_gradient(_hvp, against="cross-entropy", signature="x,t,v->hv", order=2).passed
    wrong = check_gradient(_hvp_for_targets_that_sum_to_one, against="cross-entropy", signature="x,t,v->hv",
                           order=2)
    assert not wrong.passed and "worst element hv[" in wrong.text() and "second order" in wrong.text()
    assert check_gradient(_hvp_for_targets_that_sum_to_one, against="cross-entropy-onehot",
                          signature="x,t,v->hv", order=2).passed
    with pytest.raises(SoftgradError, match="one vector"):
        check_gradient(_hvp, against="cross-entropy", signature="x,t,v,w->hv", order=2)
    with pytest.raises(SoftgradError, match="missing 1 required positional argument"):  # 'x,t->H': a Hessian
        check_gradient(_hvp, against="cross-entropy", signature="x,t->hv", order=2)


REGRESSION = Path(__file__).resolve().parent.parent / "docs" / "examples" / "softmax-regression-labels.spec"
ATTENTION = REGRESSION.parent / "attention.spec"


def test_the_weights_block_of_softmax_regression_is_a_hessian_vector_product_equal_to_torchs(tmp_path):
    """A loss of several indices, --wrt W: H·V for the weights, derived as the gradient's vector–Jacobian
    product (dP = X·Vᵀ/n_b, dz = (dP − (P∘dP)·𝟙)∘P, H·V = dzᵀ·X), every step proved, generated and equal to
    torch's forward-over-reverse product."""
    torch = require_module("torch")
    derivation = hessian(derive_spec(load_spec(str(REGRESSION)), wrt="W"))
    assert derivation.order == 2 and all(step.proved for step in derivation.steps)
    assert derivation.spec.inputs[:3] == ["W", "X", "bias"]  # the loss's own order
    assert derivation.tensor.upstream == "V"
    module = checked_module(derivation, tmp_path)
    rng = np.random.default_rng(0)
    W, X, bias, label, V = rng.normal(size=(4, 3)), rng.normal(size=(6, 3)), rng.normal(size=4), \
        rng.integers(0, 4, 6), rng.normal(size=(4, 3))
    product = module.gradients(W, X, bias, label, V)

    def loss(weights):
        z = torch.tensor(X) @ weights.T + torch.tensor(bias)
        return torch.nn.functional.cross_entropy(z, torch.tensor(label))

    _, expected = torch.autograd.functional.hvp(loss, torch.tensor(W), torch.tensor(V))
    np.testing.assert_allclose(np.asarray(product).reshape(W.shape), expected.numpy(), rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("language", ["numpy", "c"])
def test_the_product_over_several_arrays_has_the_cross_blocks_and_equals_torchs(tmp_path, language):
    """--wrt W,bias: H·v over both arrays, every block (∂²L/∂W∂bias too), as the gradient of the directional
    gradient g = Σ dW·v_W + Σ dbias·v_bias — dP = (𝟙·v_biasᵀ + X·v_Wᵀ)/n_b, dz = (dP − (P∘dP)·𝟙)∘P, every step
    proved; generated, and equal to torch's forward-over-reverse product over (W, bias)."""
    torch = require_module("torch")
    if language == "c":
        from conftest import require_tool

        require_tool("cc")
    first = derive_spec(load_spec(str(REGRESSION)), wrt="W,bias")
    text, name = gradient_spec(first)
    assert text.splitlines()[-1] == f"{name} = sum(dW[c, d] * v_W[c, d], c, d) + sum(dbias[c] * v_bias[c], c)"
    derivation = hessian(first)
    assert derivation.order == 2 and all(step.proved for step in derivation.steps)
    assert str(derivation.results["dP"].rhs) == "(v_bias[c] + Sum(X[b, d]*v_W[c, d], (d, 0, n_d - 1)))/n_b"
    assert "H·(v_W, v_bias)" in derivation.render("text")
    if language == "c":
        from softgrad.codegen.build import load_c
        from softgrad.verify.generated import check_array_module

        files = emit(derivation, "c")
        assert all(check.passed for check in check_array_module(derivation, files))
        module = load_c(files, tmp_path)
    else:
        module = checked_module(derivation, tmp_path)
    rng = np.random.default_rng(1)
    W, X, bias, label = rng.normal(size=(4, 3)), rng.normal(size=(6, 3)), rng.normal(size=4), rng.integers(0, 4, 6)
    v_W, v_bias = rng.normal(size=(4, 3)), rng.normal(size=4)
    _, product_W, product_bias = module.gradients(W, X, bias, label, v_W, v_bias)

    def loss(weights, offsets):
        return torch.nn.functional.cross_entropy(torch.tensor(X) @ weights.T + offsets, torch.tensor(label))

    _, (expected_W, expected_bias) = torch.autograd.functional.hvp(
        loss, (torch.tensor(W), torch.tensor(bias)), (torch.tensor(v_W), torch.tensor(v_bias)))
    np.testing.assert_allclose(np.asarray(product_W), expected_W.numpy(), rtol=1e-10, atol=1e-13)
    np.testing.assert_allclose(np.asarray(product_bias), expected_bias.numpy(), rtol=1e-10, atol=1e-13)


def _verify_second_order(folder, code, function, wrt, signature):
    """`softgrad verify code.py:FUNCTION --against softmax regression --order 2`, run as a user runs it."""
    import subprocess
    import sys

    (folder / "code.py").write_text(code)
    return subprocess.run([sys.executable, "-m", "softgrad", "verify", f"code.py:{function}", "--against",
                           str(REGRESSION), "--order", "2", "--wrt", wrt, "--signature", signature],
                          capture_output=True, text=True, timeout=300, cwd=folder)


HAND_WRITTEN_HVP = '''
import numpy as np

def hvp(W, X, bias, label, V):
    z = X @ W.T + bias
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    dP = X @ V.T / len(X)
    return ((dP - (p * dP).sum(axis=1, keepdims=True)) * p).T @ X

def hvp_without_row_reduction(W, X, bias, label, V):
    z = X @ W.T + bias
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    return ((X @ V.T / len(X)) * p).T @ X


def hvp_of_both(W, X, bias, label, VW, Vb):
    z = X @ W.T + bias
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    dP = (X @ VW.T + Vb) / len(X)
    dz = (dP - (p * dP).sum(axis=1, keepdims=True)) * p
    return dz.T @ X, dz.sum(axis=0)

def hvp_of_both_without_the_cross_blocks(W, X, bias, label, VW, Vb):
    z = X @ W.T + bias
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    def product(dP):
        return (dP - (p * dP).sum(axis=1, keepdims=True)) * p
    return product(X @ VW.T / len(X)).T @ X, product(np.broadcast_to(Vb, p.shape) / len(X)).sum(axis=0)
'''


@pytest.mark.parametrize("function, wrt, signature, status, worst", [
    ("hvp", "W", "W,X,bias,label,V->hv", 0, None),
    ("hvp_without_row_reduction", "W", "W,X,bias,label,V->hv", 1, "worst element hv["),
    # one vector and one product per array of --wrt, in its order: leaving out ∂²L/∂W∂bias fails
    ("hvp_of_both", "W,bias", "W,X,bias,label,VW,Vb->hvW,hvb", 0, None),
    ("hvp_of_both_without_the_cross_blocks", "W,bias", "W,X,bias,label,VW,Vb->hvW,hvb", 1, "worst element hv"),
])
def test_verify_a_hand_written_hessian_vector_product_of_the_weights(tmp_path, function, wrt, signature, status,
                                                                      worst):
    result = _verify_second_order(tmp_path, HAND_WRITTEN_HVP, function, wrt, signature)
    assert result.returncode == status, result.stdout + result.stderr
    assert "second order (H·v)" in result.stdout
    if worst:
        assert worst in result.stdout


def _hessian_blocks(x, t):
    """Σt · (diag(p) − ppᵀ) for each row: the blocks of a one-index loss's (block-diagonal) Hessian."""
    e = np.exp(x - x.max(axis=1, keepdims=True))
    p = e / e.sum(axis=1, keepdims=True)
    return t.sum(axis=1)[:, None, None] * (np.einsum("bi,ij->bij", p, np.eye(x.shape[1]))
                                           - p[:, :, None] * p[:, None, :])


def _hessian_blocks_one_entry_off(x, t):
    blocks = _hessian_blocks(x, t)
    blocks[:, 1, 2] += 0.1  # no longer symmetric: H[1, 2] ≠ H[2, 1]
    return blocks


def test_verify_a_hand_written_hessian_names_its_worst_entry():
    """A Hessian matrix is checked through its products with vectors, and where it is wrong the exact matrix
    names the entry: a one-index loss's Hessian as one block per row, (b, n, n)."""
    from softgrad.verify import check_gradient

    right = check_gradient(_hessian_blocks, against="cross-entropy", signature="x,t->H", order=2)
    assert right.passed and "second order (H)" in right.text()
    wrong = check_gradient(_hessian_blocks_one_entry_off, against="cross-entropy", signature="x,t->H", order=2)
    assert not wrong.passed
    assert "worst entry H[0, 1, 2]" in wrong.text() and "5 of 180 entries wrong" in wrong.text()
    with pytest.raises(SoftgradError, match=r"shape \(5, 6\), expected \(5, 6, 5, 6\) \(or one block per row"):
        check_gradient(lambda x, t: x, against="cross-entropy", signature="x,t->H", order=2)


HAND_WRITTEN_HESSIAN = '''
import numpy as np

def hessian(W, X, bias, label):
    """∂²L/∂W∂W as a (c, d, c, d) array: Σ_b (diag(p_b) − p_b p_bᵀ) ⊗ x_b x_bᵀ / n_b."""
    z = X @ W.T + bias
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    curvature = np.einsum("bc,ce->bce", p, np.eye(W.shape[0])) - p[:, :, None] * p[:, None, :]
    return np.einsum("bce,bd,bf->cdef", curvature, X, X) / len(X)

def hessian_without_the_outer_product(W, X, bias, label):
    z = X @ W.T + bias
    p = np.exp(z - z.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    curvature = np.einsum("bc,ce->bce", p, np.eye(W.shape[0]))
    return np.einsum("bce,bd,bf->cdef", curvature, X, X) / len(X)
'''


@pytest.mark.parametrize("function, status", [("hessian", 0), ("hessian_without_the_outer_product", 1)])
def test_verify_a_hand_written_hessian_of_the_weights(tmp_path, function, status):
    """The weights' whole Hessian, (c, d, c, d), through the command line: right passes, wrong exits 1 naming the
    worst entry."""
    result = _verify_second_order(tmp_path, HAND_WRITTEN_HESSIAN, function, "W", "W,X,bias,label->H")
    assert result.returncode == status, result.stdout + result.stderr
    assert "second order (H)" in result.stdout
    if status:
        assert "worst entry H[" in result.stdout and "entries wrong" in result.stdout


def test_an_array_output_is_taken_to_second_order_as_its_weighted_sum(tmp_path):
    """softmax --order 2: the Hessian of L = Σ dy·y (a layer's second-order backward inside a network; dy = e_k
    gives the Hessian of the one entry y_k), its product in O(n) generated, equal to torch's double backward."""
    torch = require_module("torch")
    derivation = hessian(softgrad.derive("softmax"))
    assert derivation.order == 2 and all(step.proved for step in derivation.steps)
    assert "L = sum(dy[i]*y[i], i)" in derivation.render("text")
    derivative_of_L = next(step for step in derivation.steps if step.rule == "derivative of L")
    assert sp.Symbol("L") in derivative_of_L.forms[-1].free_symbols  # (dy_l − L)·…, L by its name
    files = emit(derivation, "numpy", ["hvp"])
    checks = check_generated(derivation, files, kernels_for(derivation, ["hvp"]), files.dtype)
    assert all(check.passed for check in checks), [check.line() for check in checks if not check.passed]
    (path,) = [tmp_path / name for name in files if name.endswith(".py")]
    path.write_text(files[path.name], encoding="utf-8")
    module = import_path(path)
    rng = np.random.default_rng(3)
    x, dy, v = rng.normal(size=(4, 6)), rng.normal(size=(4, 6)), rng.normal(size=(4, 6))
    product = module.softmax_hessian_hvp(x, dy, v)
    inputs = torch.tensor(x, requires_grad=True)
    (gradient,) = torch.autograd.grad((torch.softmax(inputs, -1) * torch.tensor(dy)).sum(), inputs, create_graph=True)
    (expected,) = torch.autograd.grad((gradient * torch.tensor(v)).sum(), inputs)
    np.testing.assert_allclose(product, expected.numpy(), rtol=1e-10, atol=1e-13)
    unit = np.zeros(6)
    unit[2] = 1.0  # dy = e_2: the Hessian of y_2 alone, column by column
    columns = np.stack([module.softmax_hessian_hvp(x[0], unit, np.eye(6)[j]) for j in range(6)], axis=1)
    expected_hessian = torch.autograd.functional.hessian(lambda z: torch.softmax(z, -1)[2], torch.tensor(x[0]))
    np.testing.assert_allclose(columns, expected_hessian.numpy(), rtol=1e-10, atol=1e-13)


def test_an_attention_output_is_taken_to_second_order_by_array():
    """Attention's O[i, f] as L = Σ dO·O: its gradient for Q, written back as a spec, is the first-order
    backward (dS with the row reduction), and its product with v the Hessian–vector product for Q."""
    derivation = hessian(derive_spec(load_spec(str(ATTENTION)), wrt="Q"))
    assert all(step.proved for step in derivation.steps)
    text = derivation.render("text")
    assert "dS[i, j] = (dP[i, j] - sum(O[i, f]*dO[i, f], f))*P[i, j]" in text and "Hessian–vector product for Q" in text


def _softmax_hvp(x, dy, v):
    """∂/∂x ⟨g, v⟩ for g = y ⊙ (dy − L), L = ⟨dy, y⟩: written by hand, independently of the derivation."""
    e = np.exp(x - x.max(axis=1, keepdims=True))
    y = e / e.sum(axis=1, keepdims=True)
    weighted, projected = (dy * y).sum(axis=1, keepdims=True), (y * v).sum(axis=1, keepdims=True)
    return y * (dy * v - weighted * v - dy * projected + 2 * weighted * projected
                - (dy * y * v).sum(axis=1, keepdims=True))


def test_verify_a_hand_written_product_for_an_array_output():
    from softgrad.verify import check_gradient

    assert check_gradient(_softmax_hvp, against="softmax", signature="x,dy,v->hv", order=2).passed
    wrong = check_gradient(lambda x, dy, v: 1.01 * _softmax_hvp(x, dy, v), against="softmax",
                           signature="x,dy,v->hv", order=2)
    assert not wrong.passed and "1.01 times" in wrong.text()


def test_a_convolution_is_taken_to_second_order_every_step_proved():
    """conv2d with its default --wrt (W, x, bias) as L = Σ dy·y: its gradient's spec reads dy shifted
    (dy[b, o, i − p + 1, j − q + 1]) and declares it padded. (Every other docs example's Hessian is in the
    gallery, whose staleness test regenerates it: a step no longer proved changes its page.)"""
    derivation = hessian(derive_spec(load_spec(str(REGRESSION.parent / "conv2d.spec"))))
    assert derivation.order == 2 and all(step.proved for step in derivation.steps), [
        step.rule for step in derivation.steps if not step.proved]
    assert any("Hessian–vector product for" in result.title for result in derivation.results.values())
    assert "    pad dy\n" in derivation.render("text")


def test_an_array_the_gradient_does_not_read_has_hessian_rows_of_zero(tmp_path):
    """Layer norm's beta only shifts its output: the gradient does not depend on it, the Hessian's rows for it are
    0 (said), its block left out; asked for alone with gamma (L is linear in both), the Hessian is 0."""
    path = REGRESSION.parent / "layer-norm-affine.spec"
    derivation = hessian(derive_spec(load_spec(str(path))))
    assert "the gradient does not depend on beta: the Hessian's rows for it are 0" in derivation.check_summary
    assert set(derivation.tensor.gradients) == {"x", "gamma"}
    with pytest.raises(SpecError, match="does not depend on gamma, beta: its Hessian is 0"):
        hessian(derive_spec(load_spec(str(path)), wrt="gamma,beta"))
    with pytest.raises(SpecError, match=r"L does not depend on beta: nothing to differentiate \(leave it out"):
        derive_spec(softgrad.derive.parse_spec("y[b, k] = g[k] * x[b, k] + beta[k]\nz[b] = sum(x[b, k], k)\n"
                                               "L = sum(z[b]^2, b)"), wrt="x,beta")


HAND_WRITTEN_C_HVP = r'''
#include <math.h>
#include <stdint.h>
#include <stddef.h>

/* H v of softmax cross-entropy, row by row: sum(t) (p v - p <p, v>) */
void ce_hvp(const double *x, const double *t, const double *v, double *hv, size_t rows, size_t n) {
    for (size_t r = 0; r < rows; r++) {
        const double *xr = x + r * n, *tr = t + r * n, *vr = v + r * n;
        double m = -INFINITY, s = 0, pv = 0, ts = 0;
        for (size_t i = 0; i < n; i++) m = xr[i] > m ? xr[i] : m;
        for (size_t i = 0; i < n; i++) s += exp(xr[i] - m);
        for (size_t i = 0; i < n; i++) { pv += exp(xr[i] - m) / s * vr[i]; ts += tr[i]; }
        for (size_t i = 0; i < n; i++) hv[r * n + i] = ts * exp(xr[i] - m) / s * (vr[i] - pv);
    }
}

/* the same without sum(t): right only where the targets sum to 1 */
void ce_hvp_without_target_sum(const double *x, const double *t, const double *v, double *hv, size_t rows,
                               size_t n) {
    ce_hvp(x, t, v, hv, rows, n);
    for (size_t r = 0; r < rows; r++) {
        double ts = 0;
        for (size_t i = 0; i < n; i++) ts += t[r * n + i];
        for (size_t i = 0; i < n; i++) hv[r * n + i] /= ts;
    }
}

/* the Hessian of softmax cross-entropy itself, one (n, n) block per row: sum(t) (diag(p) - p p^T) */
void ce_hessian(const double *x, const double *t, double *H, size_t rows, size_t n) {
    for (size_t r = 0; r < rows; r++) {
        const double *xr = x + r * n, *tr = t + r * n;
        double m = -INFINITY, s = 0, ts = 0;
        for (size_t i = 0; i < n; i++) m = xr[i] > m ? xr[i] : m;
        for (size_t i = 0; i < n; i++) { s += exp(xr[i] - m); ts += tr[i]; }
        for (size_t i = 0; i < n; i++) for (size_t j = 0; j < n; j++) {
            double pi = exp(xr[i] - m) / s, pj = exp(xr[j] - m) / s;
            H[(r * n + i) * n + j] = ts * ((i == j ? pi : 0) - pi * pj);
        }
    }
}

/* one entry off the diagonal wrong */
void ce_hessian_one_entry_wrong(const double *x, const double *t, double *H, size_t rows, size_t n) {
    ce_hessian(x, t, H, rows, n);
    H[1 * n + 2] += 0.1;
}

/* softmax regression with labels, H v with respect to W, output first, float32 as llm.c writes it */
void regression_hvp(float *hv, const float *W, const float *X, const float *bias, const int64_t *label,
                    const float *V, int B, int D, int C) {
    (void)label;
    for (int c = 0; c < C; c++) for (int d = 0; d < D; d++) hv[c * D + d] = 0;
    for (int b = 0; b < B; b++) {
        float z[64], dP[64];
        float m = -INFINITY, s = 0, pdP = 0;
        for (int c = 0; c < C; c++) {
            z[c] = bias[c];
            dP[c] = 0;
            for (int d = 0; d < D; d++) {
                z[c] += X[b * D + d] * W[c * D + d];
                dP[c] += X[b * D + d] * V[c * D + d] / B;
            }
            m = z[c] > m ? z[c] : m;
        }
        for (int c = 0; c < C; c++) { z[c] = expf(z[c] - m); s += z[c]; }
        for (int c = 0; c < C; c++) pdP += z[c] / s * dP[c];
        for (int c = 0; c < C; c++) {
            float dz = (dP[c] - pdP) * z[c] / s;
            for (int d = 0; d < D; d++) hv[c * D + d] += dz * X[b * D + d];
        }
    }
}
'''


@pytest.mark.parametrize("function, against, signature, status, shown", [
    ("ce_hvp", "cross-entropy", "x,t,v->hv", 0, "called as ce_hvp(x, t, v, hv, rows=5, n=6)"),
    ("ce_hvp_without_target_sum", "cross-entropy", "x,t,v->hv", 1, "worst element hv["),
    ("regression_hvp", str(REGRESSION), "hv <- W,X,bias,label,V", 0, "regression_hvp(hv, W, X, bias, label, V"),
    # the Hessian itself, checked through its products; where it is wrong, the worst entry of the matrix
    ("ce_hessian", "cross-entropy", "x,t->H", 0, "called as ce_hessian(x, t, H, rows=5, n=6)"),
    ("ce_hessian_one_entry_wrong", "cross-entropy", "x,t->H", 1, "worst entry H[0, 1, 2]"),
])
def test_verify_a_hessian_vector_product_written_in_c(tmp_path, function, against, signature, status, shown):
    """C computing H·v — row by row with (rows, n) sizes, or with its pointers' roles declared, output first and
    float32 — or the Hessian itself is checked as Python is: the call shown under the code's own names, the
    worst element (or entry of H) named."""
    import subprocess
    import sys

    from conftest import require_tool

    require_tool("cc")
    (tmp_path / "hvp.c").write_text(HAND_WRITTEN_C_HVP)
    extra = ["--wrt", "W", "--size", "b=4,d=3,c=5"] if "regression" in function else []
    result = subprocess.run([sys.executable, "-m", "softgrad", "verify", f"hvp.c:{function}", "--against", against,
                             "--order", "2", "--signature", signature, *extra],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == status, result.stdout + result.stderr
    assert "second order (H" in result.stdout and shown in result.stdout, result.stdout
    assert " dx" not in result.stdout and "dg" not in result.stdout  # no name of the gradient's VJP shows
