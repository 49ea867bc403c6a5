"""Specs with several index ranges: weights, batches, labels and attention — parsed, derived (every step
checked), generated as NumPy, and compared with PyTorch's autograd in float64."""

import os
import re
from pathlib import Path

import numpy as np
import pytest
import sympy as sp
from conftest import require_module, require_tool

from softgrad.codegen.build import import_path, load_c
from softgrad.codegen.emit import emit
from softgrad.derive import derive_spec, load_spec, parse_spec
from softgrad.derive.spec import with_rows
from softgrad.errors import SoftgradError, SpecError
from softgrad.verify.generated import check_array_module

EXAMPLES = Path(__file__).parent.parent / "docs" / "examples"


def _example(name):
    return parse_spec((EXAMPLES / f"{name}.spec").read_text(), name=name)


_DERIVED = {}


def derived(name):
    if name not in _DERIVED:
        _DERIVED[name] = derive_spec(_example(name), time_limit=None)
    return _DERIVED[name]


def generated(name, tmp_path):
    ((file_name, text),) = emit(derived(name), "numpy").items()
    (tmp_path / file_name).write_text(text)
    return import_path(tmp_path / file_name)


# ------------------------------------------------------------------ the language
def test_several_indices_sums_sizes_and_ranges():
    spec = _example("softmax-regression")
    assert spec.tensor and spec.axes["W"] == ("c", "d") and spec.axes["X"] == ("b", "d")
    assert spec.axes["bias"] == ("c",) and spec.axes["P"] == ("b", "c")
    loss = spec.output.expr
    total = next(iter(loss.atoms(sp.Sum)))
    assert [limit[0].name for limit in total.limits] == ["c", "b"]  # sum(…, b, c): Σ_b Σ_c
    assert sp.Symbol("n_b", integer=True, positive=True) in loss.free_symbols  # size(b)


def test_labels_pick_an_entry_and_run_over_the_class_range():
    spec = _example("softmax-regression-labels")
    assert spec.labels == {"label": "c"} and "label" in spec.inputs
    assert "P[b, label[b]]" in spec.statements[-1]


def test_attention_ranges_are_unified_not_guessed():
    spec = _example("attention")
    assert spec.axes["Q"] == ("i", "e") and spec.axes["K"] == ("j", "e")
    assert spec.axes["V"][0] == "j" and spec.axes["V"][1] != "e"  # value features: a range of their own
    assert spec.axes["P"] == ("i", "j")


def test_one_index_specs_are_unchanged():
    spec = parse_spec("y[i] = exp(x[i]) / sum(exp(x[k]), k) / size(k)")
    assert not spec.tensor and sp.Symbol("n", integer=True, positive=True) in spec.output.expr.free_symbols


@pytest.mark.parametrize("source, message", [
    ("z[b, c] = W[c] + W[b, c]", "'W' has 1 index elsewhere, 2 here"),
    ("y[b] = W[b, c]", "undefined index 'c'"),
    ("y[b, c] = x[b, c] / n", "'n' is ambiguous"),
    ("y[b, c] = x[b, c] * label[b]\nL = sum(P[b, label[b]], b)", "'label' is not a label input"),
    ("L = sum(P[b, label[b]] * label[b], b)", "holds class indices"),
    ("y[b, b] = x[b, b]", "appears twice on the left-hand side"),
    ("y[b, c] = sum(x[b, k], k, k)", "summed over twice"),
    ("y[b, c] = x[b, c] / size(q)", "'q' is not an index of this statement"),
])
def test_malformed_tensor_specs_are_one_clear_error(source, message):
    with pytest.raises(SpecError) as caught:
        parse_spec(source)
    assert message in str(caught.value)


# ------------------------------------------------------------------ the derivations
@pytest.mark.parametrize("name", sorted(p.stem for p in EXAMPLES.glob("*.spec")))
def test_every_step_is_checked_entry_by_entry_and_proved(name):
    derivation = derived(name)
    assert derivation.steps and all(step.checked for step in derivation.steps)
    assert all("every entry at" in step.check_detail for step in derivation.steps)
    # every step at size 2 at least (a case i ≠ j has no pair at size 1; a large one stops before size 3)
    assert all(step.proved and re.fullmatch(r"identical at every range of size (1, )?2(, 3)?", step.proof_detail)
               for step in derivation.steps)
    assert derivation.check_summary.startswith(f"{len(derivation.steps)} of {len(derivation.steps)} steps proved")


def test_the_prover_writes_several_ranges_out_and_proves_only_what_holds():
    """The same claims as the numeric check's test, written out with every range of size 1 to 3 (labels at
    every value, the constraint applied): the right gradient is proved, each slip is not."""
    from softgrad.derive.adjoint import AdjointEngine
    from softgrad.derive.steps import Step
    from softgrad.derive.symbols import Partial

    for name in ("softmax-regression", "softmax-regression-labels"):
        engine = AdjointEngine(_example(name), None, 0)
        W, X, P = (sp.IndexedBase(name) for name in "WXP")
        b, c, d = (sp.Symbol(name, integer=True) for name in "bcd")
        n_b = engine.spec.sizes["b"]
        target = sp.IndexedBase("T")[b, c] if name == "softmax-regression" else sp.KroneckerDelta(
            c, sp.IndexedBase("label")[b])
        right = sp.Sum((P[b, c] - target) * X[b, d], (b, 0, n_b - 1)) / n_b
        ranges = {c: "c", d: "d"}
        prover = engine.checker.prover

        def proved(form, prover=prover, engine=engine, W=W, c=c, d=d, ranges=ranges):
            return prover.prove(Step("claim", Partial(engine.loss, W[c, d]), [form], None), [c, d], None, None, ranges)

        # labels take every value: at size 3 that is 27 assignments, past the budget, so sizes 1 and 2 stand
        assert proved(right) == ([1, 2, 3] if name == "softmax-regression" else [1, 2])
        for wrong in (-right, right * 2, right * n_b, right.xreplace({P: sp.IndexedBase("X")}), right + W[c, d]):
            assert proved(wrong) == [], wrong


@pytest.fixture
def regression_check():
    """softmax regression's engine checking forms of ∂L/∂W[c, d]: (check, the right form, the arrays X, P, T,
    the indices b, c, d, n_b); its background prover stopped (and reaped) after the test."""
    from softgrad.derive.adjoint import AdjointEngine
    from softgrad.derive.steps import Step
    from softgrad.derive.symbols import Partial

    engine = AdjointEngine(_example("softmax-regression"), None, 0)
    W, X, P, T = (sp.IndexedBase(name) for name in "WXPT")
    b, c, d = (sp.Symbol(name, integer=True) for name in "bcd")
    engine.axes.update(engine.spec.axes)
    right = sp.Sum((P[b, c] - T[b, c]) * X[b, d], (b, 0, engine.spec.sizes["b"] - 1)) / engine.spec.sizes["b"]

    def check(form, rule="wrong"):  # P − T: the step assumes the targets' rows sum to 1
        return engine.checker.check(Step(rule, Partial(engine.loss, W[c, d]), [form], None,
                                         assumes=("sum(T[b, k], k) = 1",)))
    check.engine = engine
    yield check, right, (X, P, T), (b, c, d), engine.spec.sizes["b"]
    if engine.checker.marks is not None:
        engine.checker.marks.stop()


def test_a_wrong_step_is_caught(regression_check):
    from softgrad.errors import StepCheckFailed

    check, right, (X, P, T), (b, c, d), n_b = regression_check
    check(right, "right")
    for wrong in (-right, right * 2, sp.Sum((P[b, c] - T[b, c]) * X[b, d], (b, 0, n_b - 1)),
                  right.xreplace({T: P})):
        with pytest.raises(StepCheckFailed):
            check(wrong)


def test_a_step_that_needs_the_constraint_is_checked_where_it_holds_and_only_there(regression_check):
    """As by hand: P − T is the gradient only where the targets' rows sum to 1; a step that does not say it
    assumes that is checked at targets that need not, where the general P·Σ_k T − T holds and P − T does not."""
    from softgrad.derive.steps import Step
    from softgrad.derive.symbols import Partial
    from softgrad.errors import StepCheckFailed

    check, right, (X, P, T), (b, c, d), n_b = regression_check
    engine_check = check.engine.checker.check
    W, k = sp.IndexedBase("W"), sp.Symbol("k", integer=True)
    lhs = Partial(sp.Symbol("L"), W[c, d])
    general = sp.Sum((P[b, c] * sp.Sum(T[b, k], (k, 0, check.engine.spec.sizes["c"] - 1)) - T[b, c]) * X[b, d],
                     (b, 0, n_b - 1)) / n_b
    assert engine_check(Step("general", lhs, [general], None)).checked
    with pytest.raises(StepCheckFailed):
        engine_check(Step("unsaid constraint", lhs, [right], None))
    assert check(right, "said").checked


def test_a_step_wrong_at_one_entry_is_caught(regression_check):
    """Every entry is compared (the check evaluates whole arrays), not a sample: an error at one entry shows."""
    from softgrad.errors import StepCheckFailed

    check, right, (X, _, _), (_, c, d), _ = regression_check
    assert check(right, "right").check_detail.startswith("every entry")
    wrong = right + sp.KroneckerDelta(c, 1) * sp.KroneckerDelta(d, 2) * X[0, 0] ** 2
    with pytest.raises(StepCheckFailed, match="c = 1, d = 2"):
        check(wrong)


def test_softmax_regression_gives_the_textbook_gradients():
    derivation = derived("softmax-regression")
    assert derivation.wrt == "W,X,bias" and "T" in derivation.wrt_reason
    results = derivation.results
    assert str(results["dW_matrix"].rhs) == "1/n_b*((P - T).T*X)"  # (P − T)ᵀ X / B
    assert str(results["dbias"].rhs) == "Sum(P[b, c] - T[b, c], (b, 0, n_b - 1))/n_b"


def test_labels_derive_through_the_kronecker_delta():
    derivation = derived("softmax-regression-labels")
    gradient = derivation.results["dW"].rhs
    assert gradient.has(sp.KroneckerDelta) and "label[b]" in str(gradient)
    assert not any(isinstance(f, sp.Pow) and f.exp < 0 and f.base.has(sp.IndexedBase("P"))
                   for f in sp.preorder_traversal(gradient))  # (P − δ)·X/n_b: no 1/P left


def test_attention_backward_uses_the_row_reduction_not_the_jacobian():
    derivation = derived("attention")
    assert any(step.rule == "the row reduction through O" for step in derivation.steps)
    dS = next(d for d in derivation.tensor.backward if d.name == "dS")
    reductions = [s for s in dS.expr.atoms(sp.Sum)]
    assert len(reductions) == 1
    reads = {str(e.base) for e in reductions[0].atoms(sp.Indexed)}
    assert reads == {"O", "dO"}  # Σ_f dO[i,f]·O[i,f]: O(n·d), no n×n array
    assert str(derivation.results["dV_matrix"].rhs) == "P.T*dO"


def test_layer_norm_parameters_and_input():
    derivation = derived("layer-norm-affine")
    assert str(derivation.results["dgamma"].rhs) == "Sum(dy[b, k]*xhat[b, k], (b, 0, n_b - 1))"
    assert str(derivation.results["dbeta"].rhs) == "Sum(dy[b, k], (b, 0, n_b - 1))"
    dx = derivation.results["dx"].rhs
    assert not any(len(s.limits) > 1 for s in dx.atoms(sp.Sum))  # O(n) per row: no double sum


def test_wrt_selects_inputs_and_refuses_labels():
    derivation = derive_spec(_example("softmax-regression"), wrt="W,bias", time_limit=None)
    assert list(derivation.tensor.gradients) == ["W", "bias"]
    with pytest.raises(SpecError, match="class indices"):
        derive_spec(_example("softmax-regression-labels"), wrt="label", time_limit=None)
    with pytest.raises(SpecError, match="not an input"):
        derive_spec(_example("softmax-regression"), wrt="W,Z", time_limit=None)


# ------------------------------------------------------------------ generated NumPy against torch
def _torch_reference(torch, name, arrays):
    t = {k: torch.tensor(v, requires_grad=k not in ("T", "label", "dO", "dy")) for k, v in arrays.items()}
    if name in ("softmax-regression", "softmax-regression-labels"):
        z = t["X"] @ t["W"].T + t["bias"]
        if name == "softmax-regression":
            loss = -(t["T"] * torch.log_softmax(z, 1)).sum() / z.shape[0]
        else:
            loss = torch.nn.functional.cross_entropy(z, t["label"])
        loss.backward()
        return loss.item(), {k: t[k].grad.numpy() for k in ("W", "X", "bias")}
    if name == "conv2d":  # padding 1 before and K - 2 after: the output as large as the input for every K
        kernel_rows, kernel_columns = t["W"].shape[2:]
        padded = torch.nn.functional.pad(t["x"], (1, kernel_columns - 2, 1, kernel_rows - 2))
        out = torch.nn.functional.conv2d(padded, t["W"], t["bias"])
        out.backward(t["dy"])
        return out.detach().numpy(), {k: t[k].grad.numpy() for k in ("W", "x", "bias")}
    if name == "causal-conv1d":
        channels, width = t["w"].shape
        padded = torch.nn.functional.pad(t["x"], (width - 1, 0))
        out = torch.nn.functional.conv1d(padded, t["w"].flip(-1)[:, None, :], groups=channels)
        out.backward(t["dy"])
        return out.detach().numpy(), {k: t[k].grad.numpy() for k in ("w", "x")}
    if name == "attention":
        out = torch.softmax(t["Q"] @ t["K"].T / np.sqrt(t["Q"].shape[1]), 1) @ t["V"]
        out.backward(t["dO"])
        return out.detach().numpy(), {k: t[k].grad.numpy() for k in ("Q", "K", "V")}
    if name == "layer-norm-affine":
        out = torch.nn.functional.layer_norm(t["x"], t["x"].shape[1:], t["gamma"], t["beta"], eps=1e-5)
        out.backward(t["dy"])
        return out.detach().numpy(), {k: t[k].grad.numpy() for k in ("x", "gamma", "beta")}
    h = torch.tanh(t["X"] @ t["W1"].T)
    loss = -(t["T"] * torch.log_softmax(h @ t["W2"].T, 1)).sum() / h.shape[0]
    loss.backward()
    return loss.item(), {k: t[k].grad.numpy() for k in ("W1", "X", "W2")}


@pytest.mark.parametrize("name", sorted(p.stem for p in EXAMPLES.glob("*.spec")))
def test_generated_numpy_matches_torch_autograd(name, tmp_path):
    torch = require_module("torch")
    from softgrad.verify.generated import sample_array_inputs

    derivation = derived(name)
    module = generated(name, tmp_path)
    sizes = {r: 3 + position for position, r in enumerate(derivation.spec.sizes)}
    arrays, _ = sample_array_inputs(derivation, sizes, seed=4, scale=2.0)
    arguments = [arrays[n] for n in derivation.spec.inputs]
    if derivation.tensor.upstream:
        arguments.append(arrays[derivation.tensor.upstream])
    returned = module.gradients(*arguments)
    expected_output, expected = _torch_reference(torch, name, arrays)
    output = module.forward(*[arrays[n] for n in derivation.spec.inputs])
    np.testing.assert_allclose(output, expected_output, rtol=1e-12, atol=1e-12)
    gradients = returned[1:] if not derivation.spec.output.is_vector else returned
    for input_name, gradient in zip(derivation.tensor.gradients, gradients):
        np.testing.assert_allclose(gradient, expected[input_name], rtol=1e-10, atol=1e-12, err_msg=input_name)


@pytest.mark.parametrize("loss, reference", [
    ("L = -sum(w[b] * log(P[b, label[b]]), b)", lambda P, label, w: -(w * P[range(len(label)), label].log()).sum()),
    ("L = sum(log(P[b, label[b]]), b) / size(b)", lambda P, label, w: P[range(len(label)), label].log().mean()),
    ("L = -sum(0.9 * log(P[b, label[b]]) + 0.1 * sum(log(P[b, c]), c) / size(c), b)",
     lambda P, label, w: -(0.9 * P[range(len(label)), label].log() + 0.1 * P.log().mean(1)).sum())])
@pytest.mark.parametrize("language", ["numpy", "torch", "jax"])
def test_a_label_is_subtracted_at_its_entry_not_through_a_one_hot_matrix(tmp_path, loss, reference, language):
    """P − w·δ(c, label[b]) (weighted, negated, with label smoothing) is printed as a copy of P with one entry
    per row changed, W[label[b], d] as rows of W picked, and both give torch's gradients."""
    torch = require_module("torch")
    require_module(language) if language != "numpy" else None
    source = (f"z[b, c] = sum(W[c, d] * X[b, d], d)\nP[b, c] = exp(z[b, c]) / sum(exp(z[b, k]), k)\n{loss}")
    derivation = derive_spec(parse_spec(source, name="labelled"), time_limit=None)
    ((file_name, text),) = emit(derivation, language).items()
    assert "np.equal(" not in text and "torch.eq(" not in text and "jnp.equal(" not in text
    assert re.search(r"\[(np|torch|jnp)\.arange\(\(?_n_b|\[np\.arange\(\(_r1 - _r0\)\)", text)
    # dX reads W[label[b], d]: whole rows picked, not entry by entry from two index grids
    assert re.search(r"W\[label(\[_r0:_r1\])?(\.astype\(np\.intp\)|\.long\(\)|\.astype\(jnp\.int32\))\]", text)
    (tmp_path / file_name).write_text(text)
    module = import_path(tmp_path / file_name)
    rng = np.random.default_rng(2)
    W, X, w = rng.normal(size=(5, 3)), rng.normal(size=(7, 3)), rng.random(7)
    label = np.array([0, 4, 2, 2, 1, 3, 4])
    inputs = {"W": W, "X": X, "w": w, "label": label}
    names = list(derivation.spec.inputs)
    if language == "numpy":
        loss_value, dW, dX = module.gradients(*[inputs[n] for n in names])
    elif language == "torch":
        tensors = {n: torch.tensor(v, requires_grad=n in ("W", "X")) for n, v in inputs.items()}
        value = getattr(module, module.__all__[2])(*[tensors[n] for n in names])
        value.backward()
        loss_value, dW, dX = value.item(), tensors["W"].grad.numpy(), tensors["X"].grad.numpy()
    else:
        import jax

        jax.config.update("jax_enable_x64", True)
        function = getattr(module, module.__all__[0])
        arguments = [jax.numpy.asarray(inputs[n]) for n in names]
        loss_value, (dW, dX) = jax.value_and_grad(lambda W, X: function(W, X, *arguments[2:]), (0, 1))(
            *arguments[:2])
    W_, X_ = torch.tensor(W, requires_grad=True), torch.tensor(X, requires_grad=True)
    expected = reference(torch.softmax(X_ @ W_.T, 1), torch.tensor(label), torch.tensor(w))
    expected.backward()
    assert float(loss_value) == pytest.approx(expected.item(), rel=1e-12)
    np.testing.assert_allclose(np.asarray(dW), W_.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(np.asarray(dX), X_.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_generated_numpy_has_no_python_loop_over_entries_and_uses_einsum(tmp_path):
    for name in ("attention", "softmax-regression"):
        ((_, text),) = emit(derived(name), "numpy").items()
        body = text[text.index("def forward"):]
        code = "\n".join(line for line in body.splitlines() if not line.strip().startswith(('"""', "def ", "#")))
        # one loop only, over blocks of rows (each an array expression), never over entries
        assert " for " not in code.replace("for _r0 in range(0, _n_", "") and "while" not in code
        assert "_finite(np.max(" in body  # the row maximum shift of the softmax
        # attention's contractions by einsum; softmax regression's T·log P summed guarded (0 where T = 0)
        assert ("np.einsum(" in body and " @ " in body) if name == "attention" else \
            "(T[_r0:_r1] * np.where(T[_r0:_r1] == 0, 0, _log_P))" in body  # a block of rows at a time


def test_generated_numpy_checks_shapes_and_labels(tmp_path):
    module = generated("softmax-regression-labels", tmp_path)
    W, X, bias = np.ones((4, 3)), np.ones((5, 3)), np.ones(4)
    with pytest.raises(ValueError, match="index d: X has 2 entries along axis 1, but W has 3"):
        module.gradients(W, np.ones((5, 2)), bias, np.zeros(5, dtype=int))
    with pytest.raises(ValueError, match="class indices from 0 to 3"):
        module.gradients(W, X, bias, np.array([0, 1, 2, 3, 4]))
    with pytest.raises(ValueError, match="must be integers"):
        module.gradients(W, X, bias, np.full(5, 0.5))
    _, dW, dX, dbias = module.gradients(W, X, bias, np.array([0, 1, 2, 3, 0]))
    assert dW.shape == (4, 3) and dX.shape == (5, 3) and dbias.shape == (4,)


def test_generated_numpy_is_stable_at_logits_of_1000(tmp_path):
    module = generated("softmax-regression", tmp_path)
    X, W = np.array([[1000.0, -1000.0]]), np.eye(2)
    loss, *gradients = module.gradients(W, X, np.zeros(2), np.array([[0.0, 1.0]]))
    assert np.isfinite(loss) and loss == pytest.approx(2000.0) and all(np.all(np.isfinite(g)) for g in gradients)


@pytest.mark.parametrize("name", ["attention", "softmax-regression-labels"])
def test_codegen_check_passes_and_catches_a_wrong_module(name):
    derivation = derived(name)
    files = emit(derivation, "numpy")
    assert all(check.passed for check in check_array_module(derivation, files))
    ((file_name, text),) = files.items()
    gradient = next(iter(derivation.tensor.gradients.values()))
    returned = text[text.index("def gradients"):].index("    return (") + text.index("def gradients")
    broken_text = text[:returned] + f"    {gradient} = {gradient} * 1.001\n" + text[returned:]
    broken = type(files)({file_name: broken_text}, language="numpy", module=files.module, dtype="float64",
                         openmp=False)
    assert not all(check.passed for check in check_array_module(derivation, broken))


@pytest.mark.parametrize("language", ["numpy", "c"])
def test_a_power_with_a_parameter_has_its_true_derivative_at_zero(language, tmp_path):
    """y = w·x^g differentiates to g·dy·y/x in names, 0/0 at x = 0: the generated code computes g·dy·w·x^(g−1).
    (w, a weight without the batch index, keeps b a range of its own: without it the spec is one row.)"""
    from conftest import require_tool

    from softgrad.codegen.build import load_c

    derivation = derive_spec(parse_spec("y[b,i] = w[i] * x[b,i]^g"), time_limit=None)
    if language == "c":
        require_tool("cc")
        module = load_c(emit(derivation, "c"), tmp_path)
    else:
        ((file_name, text),) = emit(derivation, "numpy").items()
        (tmp_path / file_name).write_text(text)
        module = import_path(tmp_path / file_name)
    x = np.array([[0.0, 0.5], [0.0, 2.0]])
    w = np.array([1.5, -0.5])
    upstream = np.array([[3.0, 1.0], [1.0, 1.0]])
    for g in (1.0, 2.0, 2.5):
        _dw, dx = module.gradients(w, x, upstream, g)
        np.testing.assert_allclose(dx, g * upstream * w * x ** (g - 1), rtol=1e-14)


def test_codegen_check_demands_finite_gradients_exactly_where_the_function_has_them():
    """At inputs of magnitude 1000 an unshifted softmax overflows and fails; exp(Σ_k x) truly overflows,
    so its generated code passes (the exact value, in extended precision, is not a double either)."""
    derivation = derived("softmax-regression")
    files = emit(derivation, "numpy")
    ((file_name, text),) = files.items()
    unshifted = text.replace("return np.where(np.isfinite(shift), shift, 0)", "return 0 * shift")
    assert unshifted != text
    broken = type(files)({file_name: unshifted}, language="numpy", module=files.module, dtype="float64", openmp=False)
    verdicts = {check.against: check.passed for check in check_array_module(derivation, broken)}
    assert [against for against, passed in verdicts.items() if not passed] == [
        "inputs of magnitude 1000 (finite where the exact value is)"]
    growing = derive_spec(parse_spec("y[b,i] = exp(sum(x[b,k], k)) * x[b,i] * w[i]"), time_limit=None)
    assert all(check.passed for check in check_array_module(growing, emit(growing, "numpy")))


def test_a_log_sum_exp_outside_a_softmax_is_shifted_in_the_c_and_the_check_judges_the_forward_too(
        monkeypatch, tmp_path):
    """log Σ_k exp(E) written out (a loss by log-sum-exp, log-softmax over rows) is M + log Σ exp(E − M) in the C
    as in the NumPy, and a softmax beside an implicit zero logit is read through such a log: finite at 1000. The
    forward's own output is judged at inputs of magnitude 1000
    too: with the shift taken away, the loss is inf while every gradient stays finite, and --check fails."""
    from softgrad.codegen.backends.c import arrays as c_arrays
    from softgrad.codegen.backends.frameworks import framework_derivation

    require_tool("cc")
    loss = derive_spec(parse_spec("z[b, c] = sum(W[c, d] * X[b, d], d)\n"
                                  "L = sum(log(sum(exp(z[b, k]), k)) - z[b, label[b]], b) / size(b)", name="lse"))
    W, X, label = np.array([[1.0, 0], [0, 1.0], [0.5, 0.5]]) * 1000, np.array([[1.0, 0.2], [0.3, 1.0]]), [1, 2]
    z = X @ W.T
    exact = np.mean(z.max(1) + np.log(np.exp(z - z.max(1, keepdims=True)).sum(1)) - z[[0, 1], label])
    kernels = load_c(emit(loss, "c"), tmp_path)
    np.testing.assert_allclose(kernels.forward(W, X, label), exact, rtol=1e-12)
    assert all(np.all(np.isfinite(g)) for g in kernels.gradients(W, X, label))
    log_softmax = framework_derivation(derive_spec(load_spec("log-softmax")))  # the C a torch module calls
    (tmp_path / "rows").mkdir()
    x = np.array([[1000.0, 999.0, 0.0]])
    np.testing.assert_allclose(load_c(emit(log_softmax, "c"), tmp_path / "rows").forward(x),
                               x - 1000 - np.log(1 + np.exp(-1.0) + np.exp(-1000.0)), rtol=1e-12)
    assert all(check.passed for check in check_array_module(loss, emit(loss, "c")))
    # a softmax beside an implicit zero logit, exp(z)/(1 + Σ exp(z)): read as exp(z − log(1 + Σ exp(z))), the
    # log-sum shifted by max(0, max z) — finite at 1000 in the C and the NumPy, as the per-row kernels are
    null_class = derive_spec(parse_spec("z[b, c] = sum(W[c, d] * X[b, d], d)\n"
                                        "P[b, c] = exp(z[b, c]) / (1 + sum(exp(z[b, k]), k))\n"
                                        "L = -sum(log(P[b, label[b]]), b)", name="null_class"))
    shift = np.maximum(z.max(1), 0)
    exact = -np.sum(z[[0, 1], label] - shift - np.log(np.exp(-shift) + np.exp(z - shift[:, None]).sum(1)))
    for language in ("c", "numpy"):
        files = emit(null_class, language)
        assert all(check.passed for check in check_array_module(null_class, files)), language
    (tmp_path / "null").mkdir()
    np.testing.assert_allclose(load_c(emit(null_class, "c"), tmp_path / "null").forward(W, X, label), exact,
                               rtol=1e-12)
    monkeypatch.setattr(c_arrays._Compiler, "shifted_log_sums", lambda self, expr: (expr, {}))
    verdicts = {check.against: check.passed for check in check_array_module(loss, emit(loss, "c"))}
    assert [against for against, passed in verdicts.items() if not passed] == [
        "inputs of magnitude 1000 (finite where the exact value is)"]


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(p.stem for p in EXAMPLES.glob("*.spec")))
def test_generated_c_matches_the_numpy_module(name, tmp_path):
    from conftest import require_tool

    from softgrad.codegen.build import load_c
    from softgrad.verify.generated import sample_array_inputs

    require_tool("cc")
    derivation = derived(name)
    c_kernels = load_c(emit(derivation, "c"), tmp_path)  # strict flags: every warning is an error
    module = generated(name, tmp_path)
    sizes = {r: 3 + position for position, r in enumerate(derivation.spec.sizes)}
    arrays, _ = sample_array_inputs(derivation, sizes, seed=2, scale=2.0)
    inputs = [arrays[n] for n in derivation.spec.inputs]
    upstream = [arrays[derivation.tensor.upstream]] if derivation.tensor.upstream else []
    np.testing.assert_allclose(c_kernels.forward(*inputs), module.forward(*inputs), rtol=1e-13, atol=1e-14)
    for ours, theirs in zip(c_kernels.gradients(*inputs, *upstream), module.gradients(*inputs, *upstream)):
        np.testing.assert_allclose(ours, theirs, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("source, kept", [
    ("layer-norm-affine", ["x", "gamma", "m", "v"]),  # x̂ is entrywise: recomputed from x, m, v
    ("softmax-regression-labels", ["W", "X", "label", "P"]),  # P, not the loss nor its log
    ("softmax", ["y"]),  # over rows: the output only, and no forward_saving in C
    ("kl-divergence", ["q", "p", "_log_p"]),  # over rows: p and the log the backward reads (dq = log q − log p + 1)
])
def test_the_forward_keeps_what_the_backward_reads_and_the_backward_recomputes_the_rest(source, kept, tmp_path):
    """forward_saving() writes beside the output the arrays made by a sum that backward() reads; backward() gives
    gradients()'s results from them without recomputing those arrays — in the C and in the NumPy module."""
    from softgrad.verify.generated import module_backward, module_gradients, sample_array_inputs

    require_tool("cc")
    example = (EXAMPLES / f"{source}.spec").exists()
    derivation = derived(source) if example else derive_spec(with_rows(load_spec(source)))  # a catalog entry over rows
    files = emit(derivation, "c")
    ((file_name, text),) = emit(derivation, "numpy").items()
    (tmp_path / file_name).write_text(text)
    sizes = {r: 3 + position for position, r in enumerate(derivation.spec.sizes)}
    arrays, parameters = sample_array_inputs(derivation, sizes, seed=2, scale=2.0)
    for module in (load_c(files, tmp_path), import_path(tmp_path / file_name)):
        _, cache = module.forward_saving(*[arrays[n] for n in derivation.spec.inputs])
        assert list(cache) == kept
        expected = module_gradients(module, derivation, arrays, parameters)
        for name, gradient in module_backward(module, derivation, arrays, parameters).items():
            np.testing.assert_allclose(gradient, expected[name], rtol=1e-13, atol=1e-14)
        if derivation.tensor.upstream:  # an upstream gradient of another shape than the output: one clear error
            with pytest.raises(ValueError, match="must have the shape of"):
                module.backward(np.zeros((1, 1, 1)), cache)
    made = []  # the C's results come from the allocator it is given (torch's, from the torch module)
    kernels = load_c(files, tmp_path)
    _, cache = kernels.forward_saving(*[arrays[n] for n in derivation.spec.inputs],
                                      empty=lambda shape: made.append(np.empty(shape)) or made[-1])
    upstream = [arrays[derivation.tensor.upstream]] if derivation.tensor.upstream else []
    results = kernels.backward(*upstream, cache,
                               empty=lambda shape: made.append(np.empty(shape)) or made[-1])
    assert all(any(result is array for array in made) for result in results)
    source_text = files[f"{files.module}.c"]
    backward = source_text[source_text.index(f"int {files.module}_backward("):]
    assert ("_forward_saving(" in source_text) == (kept != ["y"])
    if "m" in kept:  # the backward reads m and v; it makes x̂ again, not m
        assert "m[_ix_b] =" not in backward and "xhat[" in backward
        numpy_backward = text[text.index("def backward("):]
        assert "m[_r0:_r1]" in numpy_backward and "np.sum(x" not in numpy_backward


def test_an_empty_range_the_function_divides_by_is_refused_in_one_line_and_others_run(tmp_path):
    """A mean over no rows has no value: every generated module (NumPy, C, torch, JAX; per-row kernels too)
    refuses an empty range the function divides by with one clear ValueError — not a ZeroDivisionError, nor 0
    from one function and NaN from another. A range it does not divide by may be empty (layer norm of no rows,
    no rows of a per-row kernel: empty results)."""
    require_tool("cc")
    regression = derived("softmax-regression-labels")
    W, X, bias, label = np.ones((3, 4)), np.ones((0, 4)), np.zeros(3), np.zeros(0, dtype=int)
    ((file_name, text),) = emit(regression, "numpy").items()
    (tmp_path / file_name).write_text(text)
    refused = "index b has no entries, and the function divides by its size"
    for module in (import_path(tmp_path / file_name), load_c(emit(regression, "c"), tmp_path)):
        for call in (lambda: module.forward(W, X, bias, label), lambda: module.gradients(W, X, bias, label),
                     lambda: module.forward_saving(W, X, bias, label)):
            with pytest.raises(ValueError, match=refused):
                call()
    import ctypes  # the C functions themselves, called with no rows, return -2 before touching any array

    library = load_c(emit(regression, "c"), tmp_path).library
    no_rows = [ctypes.c_size_t(0), ctypes.c_size_t(3), ctypes.c_size_t(4)]  # n_b, n_c, n_d
    assert library.softmax_regression_labels_forward(None, None, None, None, None, *no_rows) == -2
    assert library.softmax_regression_labels_backward(None, None, None, None, None, None, None, *no_rows) == -2
    layer_norm = derived("layer-norm-affine")
    x, gamma, beta = np.ones((0, 5)), np.ones(5), np.zeros(5)
    c_kernels = load_c(emit(layer_norm, "c"), tmp_path)
    dx, dgamma, dbeta = c_kernels.gradients(x, gamma, beta, np.ones((0, 5)))
    assert dx.shape == (0, 5) and np.all(dgamma == 0) and np.all(dbeta == 0)
    with pytest.raises(ValueError, match="index k has no entries"):
        c_kernels.forward(np.ones((3, 0)), np.ones(0), np.zeros(0))
    torch = require_module("torch")
    ((file_name, text),) = emit(regression, "torch").items()
    (tmp_path / "with_torch").mkdir()
    (tmp_path / "with_torch" / file_name).write_text(text)
    module = import_path(tmp_path / "with_torch" / file_name)
    with pytest.raises(ValueError, match=refused):
        module.softmax_regression_labels(*(torch.as_tensor(a) for a in (W, X, bias, label)))
    require_module("jax")
    ((file_name, text),) = emit(regression, "jax").items()
    (tmp_path / "with_jax").mkdir()
    (tmp_path / "with_jax" / file_name).write_text(text)
    module = import_path(tmp_path / "with_jax" / file_name)
    with pytest.raises(ValueError, match=refused):
        module.softmax_regression_labels(W, X, bias, label)
    # a one-row spec alike: its per-row kernels refuse an empty class axis it divides by, and run on no rows
    centred = derive_spec(parse_spec("y[i] = x[i] - sum(x[k], k) / size(i)", name="centred"))
    ((file_name, text),) = emit(centred, "numpy").items()
    (tmp_path / "rows").mkdir()
    (tmp_path / "rows" / file_name).write_text(text)
    for kernels in (import_path(tmp_path / "rows" / file_name), load_c(emit(centred, "c"), tmp_path / "rows")):
        with pytest.raises(ValueError, match="the class axis has no entries, and the function divides by its size"):
            kernels.centred_vjp(np.ones((3, 0)), np.ones((3, 0)))
        assert kernels.centred_forward(np.ones((0, 4))).shape == (0, 4)
    softmax_rows = emit(derive_spec(load_spec("softmax")), "numpy")  # 1/Σ_k e^x[k] divides by no size
    assert "the class axis has no entries" not in next(iter(softmax_rows.values()))


@pytest.mark.slow
def test_generated_c_in_float32_passes_its_check_and_hostile_names_compile():
    from conftest import require_tool

    require_tool("cc")
    spec = parse_spec("z[b, c] = sum(double[c, d] * int[b, d], d)\n"
                      "T[b, c] = exp(z[b, c]) / sum(exp(z[b, k]), k)\n"
                      "free = -sum(log(T[b, label[b]]), b) / size(b)", name="hostile")
    derivation = derive_spec(spec, time_limit=None)
    for dtype in ("float32", "float64"):
        files = emit(derivation, "c", dtype=dtype)
        checks = check_array_module(derivation, files)
        assert all(check.passed for check in checks), [check.line() for check in checks]
    source = emit(derivation, "c")["hostile.c"]
    assert "double_" in source and "int_" in source and "free_" in source  # renamed, never shadowing C


@pytest.mark.slow
@pytest.mark.parametrize("name", ["attention", "softmax-regression-labels"])
def test_tensor_derivations_render_in_every_format(name, tmp_path):
    import json
    import subprocess

    import jsonschema
    from conftest import require_tool

    derivation = derived(name)
    for fmt in ("text", "latex", "markdown", "html"):
        document = derivation.render(fmt)
        for leak in ("Sum(", "Indexed", "KroneckerDelta", "Partial(", "IndexedBase"):
            assert leak not in document, (fmt, leak)
    schema = json.loads((Path(__file__).parent.parent / "softgrad" / "schemas" / "derivation-1.schema.json")
                        .read_text())
    jsonschema.validate(json.loads(derivation.render("json")), schema)
    pdflatex = require_tool("pdflatex")
    (tmp_path / "d.tex").write_text(derivation.render("latex", standalone=True))
    run = subprocess.run([pdflatex, "-interaction=nonstopmode", "-halt-on-error", "d.tex"], cwd=tmp_path,
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-2000:]


def test_the_softmax_jacobian_is_derived_by_cases_inside_the_backward_pass():
    derivation = derived("attention")
    rules = [step.rule for step in derivation.steps]
    start = rules.index("the Jacobian of P")
    assert rules[start + 1].startswith("case ") and "=" in rules[start + 1]
    assert "≠" in rules[start + 2] and rules[start + 3] == "Kronecker combination"
    distinct = derivation.steps[start + 2]
    assert distinct.distinct is not None and distinct.checked  # checked only where the indices differ
    combined = derivation.steps[start + 3].result
    assert combined.has(sp.KroneckerDelta) and sp.simplify(
        combined - combined.subs(sp.KroneckerDelta(*combined.atoms(sp.KroneckerDelta).pop().args), 0)) != 0


WEIGHT_DECAY = """z[b, c] = sum(W[c, d] * X[b, d], d)
P[b, c] = exp(z[b, c]) / sum(exp(z[b, k]), k)
L = -sum(log(P[b, label[b]]), b) / size(b) + 0.5 * reg * sum(W[e, f]^2, e, f)"""


def test_an_input_read_by_the_loss_itself_and_through_a_definition_derives_weight_decay(tmp_path):
    """W is read by z and by the loss's own decay term (under other index names): the chain rule has a term
    for each, the loss's being its formula differentiated with P held; the gradient is torch's."""
    torch = require_module("torch")
    derivation = derive_spec(parse_spec(WEIGHT_DECAY, name="decay"), wrt="W,X", time_limit=None)
    gradient = derivation.results["dW"].rhs
    c, d = derivation.results["dW"].indices
    assert sp.simplify(gradient - sp.Symbol("reg") * sp.IndexedBase("W")[c, d]).has(sp.IndexedBase("X"))
    ((file_name, text),) = emit(derivation, "numpy").items()
    (tmp_path / file_name).write_text(text)
    module = import_path(tmp_path / file_name)
    rng = np.random.default_rng(3)
    W, X, label = rng.normal(size=(4, 5)), rng.normal(size=(6, 5)), rng.integers(0, 4, size=6)
    reg = 0.7
    loss, dW, dX = module.gradients(W, X, label, reg=reg)
    tW, tX = torch.tensor(W, requires_grad=True), torch.tensor(X, requires_grad=True)
    expected = torch.nn.functional.cross_entropy(tX @ tW.T, torch.tensor(label)) + 0.5 * reg * (tW ** 2).sum()
    expected.backward()
    np.testing.assert_allclose(loss, expected.item(), rtol=1e-12)
    np.testing.assert_allclose(dW, tW.grad.numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dX, tX.grad.numpy(), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("shift", ["+ 1000", "- 1000"])
def test_exponentials_beyond_double_precision_are_checked_in_extended_precision(shift):
    """exp(x + 1000) overflows doubles and exp(x − 1000) underflows them to 0/0: the checks widen to mpmath
    at the same points, as one-index checks do, instead of ending in an internal error."""
    # a weight w without the batch index keeps b a range of its own (else the spec is derived as one row)
    source = f"y[b, i] = w[i] * exp(x[b, i] {shift}) / sum(exp(x[b, k] {shift}), k)"
    derivation = derive_spec(parse_spec(source), time_limit=None, wrt="x")
    assert all(step.checked and step.proved for step in derivation.steps)
    assert "n_b = 1, n_i = 1" in derivation.check_summary  # a batch of one row of one class is checked too
    assert sp.srepr(derivation.results["dx"].rhs) == sp.srepr(derive_spec(parse_spec(
        "y[b, i] = w[i] * exp(x[b, i]) / sum(exp(x[b, k]), k)"), wrt="x", time_limit=None).results["dx"].rhs)


def test_a_spec_whose_value_depends_on_the_precision_is_refused_for_several_indices_too():
    """y = p/Σp for a centred p divides by a sum that is 0 whatever the inputs: rounding decides its value, so no
    step can be judged against it (the one-index checker refused it; the one checker does for every spec)."""
    with pytest.raises(SpecError, match="no stable value at the points sampled"):
        derive_spec(parse_spec("p[b, i] = z[b, i] - sum(z[b, k], k)/size(k)\ny[b, i] = w[i] * p[b, i]/sum(p[b, l], l)"),
                    time_limit=None)


def test_sizes_where_the_spec_has_no_value_are_left_out_and_said():
    """A variance over n − 1 has no value at n = 1: those points are left out of the checks, and the
    summary says so, instead of failing a step or raising."""
    source = ("m[b] = sum(x[b, k], k) / size(k)\nv[b] = sum((x[b, k] - m[b])^2, k) / (size(k) - 1)\n"
              "y[b, i] = gamma[i] * (x[b, i] - m[b]) / sqrt(v[b] + 0.00001)")
    derivation = derive_spec(parse_spec(source), time_limit=None)
    assert "n_k = 1" not in derivation.check_summary and "no finite real value left out" in derivation.check_summary
    with pytest.raises(SpecError, match="no finite real value"):
        derive_spec(parse_spec("y[b, i] = w[i] * x[b, i] / (sum(x[b, k], k) - sum(x[b, j], j))"), time_limit=None)


@pytest.mark.slow
@pytest.mark.parametrize("name, kernel", [("attention", "vjp"), ("softmax-regression-labels", "loss_and_grad")])
def test_openmp_c_passes_its_check_and_gives_the_same_bits_on_any_number_of_threads(name, kernel, tmp_path):
    """codegen --openmp --kernel vjp on attention (loss_and_grad on a loss): each statement's loop over its
    array's first index is shared among threads, every entry computed by one thread in a fixed order — the
    serial build's bits, on 1, 2 and 3 threads; and an unknown kernel is one clear error."""
    from softgrad.verify.generated import load_module, module_backward, module_gradients, sample_array_inputs

    require_tool("cc")
    derivation = derived(name)
    threaded_files = emit(derivation, "c", [kernel], openmp=True)
    assert "#pragma omp parallel for" in threaded_files[f"{threaded_files.module}.c"]
    assert all(check.passed for check in check_array_module(derivation, threaded_files))
    (tmp_path / "serial").mkdir()
    (tmp_path / "threaded").mkdir()
    serial = load_module(emit(derivation, "c", [kernel]), tmp_path / "serial")
    threaded = load_module(threaded_files, tmp_path / "threaded")
    sizes = {r: 13 + 2 * position for position, r in enumerate(derivation.spec.sizes)}
    arrays, parameters = sample_array_inputs(derivation, sizes, seed=2)
    expected = module_gradients(serial, derivation, arrays, parameters)
    import ctypes.util

    openmp = ctypes.CDLL(ctypes.util.find_library("gomp") or "libgomp.so.1")
    try:
        for threads in (1, 2, 3):
            openmp.omp_set_num_threads(threads)
            for path in (module_gradients, module_backward):  # the pair's backward too, from what was kept
                got = path(threaded, derivation, arrays, parameters)
                for input_name, gradient in expected.items():
                    np.testing.assert_array_equal(got[input_name], gradient,
                                                  err_msg=f"{input_name}, {threads} threads, {path.__name__}")
    finally:
        openmp.omp_set_num_threads(os.cpu_count() or 1)
    with pytest.raises(SoftgradError, match="kernel 'jacobian' does not apply"):
        emit(derivation, "c", ["jacobian"])


@pytest.mark.parametrize("batched, one_row", [
    ("y[b, i] = exp(x[b, i]) / sum(exp(x[b, k]), k)", "softmax"),
    ("m[r] = sum(x[r, k], k) / size(k)\nv[r] = sum((x[r, k] - m[r])^2, k) / size(k)\n"
     "y[r, i] = (x[r, i] - m[r]) / sqrt(v[r] + 0.00001)",
     "m = sum(x[k], k)/n; v = sum((x[k] - m)^2, k)/n; y[i] = (x[i] - m)/sqrt(v + 0.00001)"),
])
def test_a_batch_index_that_couples_nothing_is_lifted_as_vmap_lifts_a_function(batched, one_row):
    """b is carried by every array and crossed by no sum: the spec is its one-row spec with the row index
    implicit — derived in the tutorial voice and proved at n = 1…4, with the same kernels as the one-row
    spec (the generated C differs only in the module's name), and the summary says why."""
    from softgrad.derive import load_spec

    spec = parse_spec(batched, name="batched")
    assert not spec.tensor and spec.carried in ("b", "r")
    derivation = derive_spec(spec, time_limit=None)
    reference = derive_spec(load_spec(one_row), time_limit=None)
    assert [s.rule for s in derivation.steps] == [s.rule for s in reference.steps]
    assert all(step.proved for step in derivation.steps) and "vmap" in derivation.check_summary
    assert sp.srepr(derivation.results["vjp"].rhs) == sp.srepr(reference.results["vjp"].rhs)
    from softgrad.codegen.lower.rows import identifier

    def body(d):  # the C source, its header comment (the spec it came from) and the kernels' prefix aside
        text = emit(d, "c", module="kernels")["kernels.c"].replace(identifier(d) + "_", "KERNEL_")
        return [line for line in text.splitlines() if "spec" not in line and "SHA" not in line]

    assert body(derivation) == body(reference)
    for coupled in ("y[b, i] = x[b, i] * w[i]", "y[b, i] = x[b, i] / size(b)", "y[b, i] = sum(x[c, i], c) * x[b, i]"):
        assert parse_spec(coupled).tensor  # a weight without b, the number of rows, a sum over rows


CONTRACTIONS = [
    # batched over h, the second operand transposed (K[h, j, e] read as Kᵀ), scaled by a parameter
    ("S[h, i, j] = s * sum(Q[h, i, e] * K[h, j, e], e)\ny = sum(S[h, i, j] * S[h, i, j], h, i, j)", 3),
    # the first operand transposed, an elementwise term added, a factor over fewer indices folded in
    ("z[c, d] = sum(A[b, c] * c2[b] * B[b, d], b) + bias[d]\ny = sum(z[c, d]^2, c, d)", 3),
    # a contraction inside a function (written to a work array first) and a matrix-vector product
    ("h[b, j] = tanh(sum(W[j, d] * X[b, d], d))\nu[b] = sum(h[b, j] * v[j], j)\ny = sum(u[b]^2, b)", 4),
    # the output's axes the other way round from the operands' (Aᵀ = Cᵀ Bᵀ): operands swap
    ("z[d, b] = sum(X[b, c] * W[c, d], c)\ny = sum(exp(z[d, b]), d, b)", 3),
]


@pytest.mark.parametrize("source, calls", CONTRACTIONS)
def test_contractions_in_generated_c_are_gemm_calls_equal_to_the_numpy_module(source, calls, tmp_path):
    """Every contraction of two arrays — batched, transposed on either side, scaled, with an elementwise term,
    inside a function, with the output's axes swapped — is a BLAS gemm call in the generated C, and the
    kernels equal the NumPy module's (float64) in forward and gradients."""
    from softgrad.codegen.build import load_c
    from softgrad.verify.generated import call_module, module_gradients, sample_array_inputs

    require_tool("cc")
    derivation = derive_spec(parse_spec(source, name="contractions"), time_limit=None)
    files = emit(derivation, "c")
    assert files.blas and files["contractions.c"].count("SOFTGRAD_GEMM(") >= calls
    c_kernels = load_c(files, tmp_path)
    ((file_name, text),) = emit(derivation, "numpy").items()
    (tmp_path / file_name).write_text(text)
    module = import_path(tmp_path / file_name)
    sizes = {r: 3 + position for position, r in enumerate(derivation.spec.sizes)}
    arrays, parameters = sample_array_inputs(derivation, sizes, seed=4)
    np.testing.assert_allclose(call_module(c_kernels, derivation, arrays, parameters, "forward"),
                               call_module(module, derivation, arrays, parameters, "forward"), rtol=1e-12)
    expected = module_gradients(module, derivation, arrays, parameters)
    for name, gradient in module_gradients(c_kernels, derivation, arrays, parameters).items():
        np.testing.assert_allclose(gradient, expected[name], rtol=1e-11, atol=1e-13, err_msg=name)


@pytest.mark.parametrize("language", ["numpy", "c"])
def test_a_class_masked_by_a_minus_infinite_logit_with_target_zero_adds_nothing_to_the_loss(language, tmp_path):
    """T·log P with P = 0 (logit −inf) and T = 0 is 0, as in the one-row kernels and in torch with the same
    convention: the loss and the gradients stay finite (they were NaN)."""
    from softgrad.codegen.build import load_c

    derivation = derived("softmax-regression")
    if language == "c":
        require_tool("cc")
        module = load_c(emit(derivation, "c"), tmp_path)
    else:
        ((file_name, text),) = emit(derivation, "numpy").items()
        (tmp_path / file_name).write_text(text)
        module = import_path(tmp_path / file_name)
    W = np.array([[1.0, 0.5], [0.2, -0.3], [0.0, 0.0]])
    X = np.array([[1.0, 2.0], [0.5, -1.0]])
    bias = np.array([0.0, 0.1, -np.inf])
    T = np.array([[0.3, 0.7, 0.0], [1.0, 0.0, 0.0]])
    loss, dW, dX, dbias = module.gradients(W, X, bias, T)
    z = X @ W[:2].T + bias[:2]  # the two classes that are not masked
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    np.testing.assert_allclose(loss, -(T[:, :2] * log_p).sum() / 2, rtol=1e-14)
    P = np.exp(log_p)
    np.testing.assert_allclose(dW[:2], (P - T[:, :2]).T @ X / 2, rtol=1e-13)
    assert np.all(dW[2] == 0) and dbias[2] == 0 and np.all(np.isfinite(dX))
    assert module.forward(W, X, bias, T) == loss


def test_a_subexpression_the_statements_repeat_is_computed_once(tmp_path):
    """Layer norm's x − m (read by v and x̂), 1/√(v + ε) (x̂ and dx) and dy·x̂ (dx's sum over k2 and dγ's over b, the
    same array under other index names); softmax regression's P − T (dW, dX, dbias): each made once per block."""
    texts = {name: emit(derived(name), "numpy").popitem()[1] for name in ("layer-norm-affine", "softmax-regression")}
    norm = texts["layer-norm-affine"][texts["layer-norm-affine"].index("def gradients"):
                                      texts["layer-norm-affine"].index("def forward_saving")]
    assert norm.count("(x[_r0:_r1] - m[:, None])") == 1 and norm.count("np.sqrt(") == 1
    assert norm.count("(dy[_r0:_r1] * xhat)") == 1 and "np.einsum(\"ba,ba->a\"" not in norm
    assert "out=dx[_r0:_r1])" in norm  # the last multiplication writes the block's rows of dx: nothing copied
    regression = texts["softmax-regression"][texts["softmax-regression"].index("def gradients"):
                                             texts["softmax-regression"].index("def forward_saving")]
    assert regression.count("(P - T[_r0:_r1])") == 1


@pytest.mark.parametrize("language", ["numpy", "torch"])
def test_shared_subexpressions_keep_their_indices_apart(language):
    """x[b, i] − x[b, j] and x[b, j] − x[b, i] are different arrays (one the transpose of the other's negative) and
    must not be shared; Σ_j and Σ_i of the same product under other names must: the module is right either way."""
    if language == "torch":
        require_module("torch")
    from softgrad.verify.frameworks import check_framework_module

    derivation = derive_spec(parse_spec(
        "u[b, i] = sum(w[i, j] * (x[b, i] - x[b, j])^2, j)\n"
        "v[b, j] = sum(w[i, j] * (x[b, j] - x[b, i])^3, i)\n"
        "L = sum(u[b, k] * v[b, k] + x[b, k] * sum(w[k, j] * (x[b, k] - x[b, j])^2, j), b, k)"),
        time_limit=None)
    files = emit(derivation, language)
    checks = (check_array_module(derivation, files) if language == "numpy"
              else check_framework_module(derivation, files))
    assert all(check.passed for check in checks), [check.line() for check in checks if not check.passed]


def test_a_temporary_read_more_often_than_counted_is_never_updated_in_place(monkeypatch):
    """torch updates a shared temporary in place at its last reading (x − m scaled into x̂); should the walk that
    counts the readings count too few, the statements are printed again with every reading leaving it as it is."""
    require_module("torch")
    from softgrad.codegen.backends.numpy import arrays as array_lowering
    from softgrad.verify.frameworks import check_framework_module

    derivation = derive_spec(parse_spec("m[b] = sum(x[b, k], k) / size(k)\np[b, k] = softplus(x[b, k] - m[b])\n"
                                        "q[b, k] = (x[b, k] - m[b])^2\nr[b, k] = sigmoid(x[b, k] - m[b])\n"
                                        "L = sum(p[b, k] * q[b, k] * r[b, k], b, k)"), time_limit=None)
    right = emit(derivation, "torch").popitem()[1]
    assert re.search(r"r = torch\.as_tensor\(\(_t\d+\)\.sigmoid_\(\)", right)  # x − m's last reading: in place
    counted = array_lowering.common_subexpressions
    monkeypatch.setattr(array_lowering, "common_subexpressions",
                        lambda forms: {key: count - 1 for key, count in counted(forms).items()})
    checks = check_framework_module(derivation, emit(derivation, "torch"))
    assert all(check.passed for check in checks), [check.line() for check in checks if not check.passed]


def test_a_square_is_not_read_backwards_as_a_square_root():
    """q = (x − m)² does not give x − m = √q (x − m may be negative): rewriting a result in the spec's names read it
    so, and the checker refused the step; now every step holds and is proved."""
    derivation = derive_spec(parse_spec("m[b] = sum(x[b, k], k) / size(k)\np[b, k] = exp(x[b, k] - m[b])\n"
                                        "q[b, k] = (x[b, k] - m[b])^2\nr[b, k] = sigmoid(x[b, k] - m[b])\n"
                                        "L = sum(p[b, k] * q[b, k] * r[b, k], b, k)"), time_limit=None)
    assert all(step.proved for step in derivation.steps)
    assert not any(isinstance(power, sp.Pow) and power.exp == sp.Rational(1, 2)
                   for step in derivation.steps for form in step.forms for power in form.atoms(sp.Pow))


@pytest.mark.parametrize("language", ["numpy", "c"])
def test_kl_divergence_over_rows_is_kls_at_zero_targets_without_warnings(language, tmp_path):
    """q·log(q/p) written q·(log q − log p), guarded where q = 0: KL's value (0·log 0 = 0) and gradient, finite
    where p underflows, and no RuntimeWarning for the log of 0 the guard discards (as the one-row modules).
    C: forward() writes the log-softmax it reads (it read an array it never wrote: the log was found only after)."""
    import warnings

    source = "p[b, i] = exp(z[b, i]) / sum(exp(z[b, k]), k)\nL = sum(q[b, k] * log(q[b, k] / p[b, k]), b, k)\n"
    files = emit(derive_spec(parse_spec(source, "kl_rows"), wrt="z"), language)
    if language == "c":
        require_tool("cc")
        module = load_c(files, tmp_path)
    else:
        (name, text), = files.items()
        (tmp_path / name).write_text(text, encoding="utf-8")
        module = import_path(tmp_path / name)
    z = np.random.default_rng(5).normal(size=(3, 4))
    z[0, 1] = 1000.0
    q = np.array([[1.0, 0, 0, 0], [0.5, 0.5, 0, 0], [0.1, 0.2, 0.3, 0.4]])
    log_p = z - z.max(-1, keepdims=True)
    log_p -= np.log(np.exp(log_p).sum(-1, keepdims=True))
    expected = np.where(q == 0, 0, q * (np.log(np.where(q == 0, 1, q)) - log_p)).sum()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        loss, gradient = module.gradients(z, q)
        assert np.isclose(module.forward(z, q), expected, rtol=1e-12)
    assert np.isclose(loss, expected, rtol=1e-12)
    np.testing.assert_allclose(gradient, np.exp(log_p) * q.sum(-1, keepdims=True) - q, rtol=1e-12, atol=1e-15)


def test_codegen_check_fails_a_module_whose_loss_is_nan_at_targets_of_zero():
    """codegen --check compares a module at targets with entries of 0 with its limit from above (the same module
    at 1e-300 there): a KL divergence that forms 0·log 0 = NaN passes every other comparison and fails this one."""
    from softgrad.verify.generated import check_module

    source = "p[b, i] = exp(z[b, i]) / sum(exp(z[b, k]), k)\nL = sum(q[b, k] * log(q[b, k] / p[b, k]), b, k)\n"
    derivation = derive_spec(parse_spec(source, "kl_rows"), wrt="z")

    class Unguarded:  # q·(log q − log p), without the guard that makes 0·log 0 = 0
        @staticmethod
        def _log_p(z):
            shifted = z - z.max(-1, keepdims=True)
            return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))

        def forward(self, z, q):
            with np.errstate(all="ignore"):
                return float(np.sum(q * (np.log(q) - self._log_p(z))))

        def gradients(self, z, q):
            return self.forward(z, q), np.exp(self._log_p(z)) * q.sum(-1, keepdims=True) - q

    checks = check_module(Unguarded(), derivation, 0, "float64")
    failed = [check.line() for check in checks if not check.passed]
    assert len(failed) == 1 and "targets with entries of 0 (q)" in failed[0], failed
