"""verify on code as users write it (tests/corpus/real_*): labels, batch-mean losses, tuples in their own
order, layer classes, torch and JAX custom gradients, the class axis first; each right one passes at
every seed, each wrong one fails with the hint that names its mistake; and no verdict is unearned."""

import functools
import importlib
import importlib.util
import json
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import IN_CI, require_module, require_tool

from softgrad.verify import check_gradient

CORPUS = Path(__file__).parent / "corpus"
sys.path.insert(0, str(CORPUS))

#: (module, right, wrong, spec, signature, options, a fragment of the wrong one's hint or None)
CORPUS_TABLE = [
    ("real_code", "softmax_loss", "softmax_loss_not_divided", "cross-entropy-onehot", "x,labels->loss,dx",
     {"reduction": "mean"}, "mean/sum reduction mismatch"),
    ("real_code", "SoftmaxWithLoss", "SoftmaxWithLossSignFlip", "cross-entropy-onehot", "x,t->loss,dx",
     {"reduction": "mean", "targets": "onehot"}, "sign flip"),
    ("real_code", "Softmax", "SoftmaxDiagonalOnly", "softmax", "x,dout->dx", {}, None),
    ("real_code", "softmax_backward", "softmax_backward_whole_batch", "softmax", "x,g->dx", {}, "whole batch"),
    ("real_code", "log_softmax_backward", "log_softmax_backward_forgot_exp", "log-softmax", "y,g->dx", {}, None),
    ("real_code", "cross_entropy_grad_wrt_probs", "cross_entropy_grad_wrt_probs_as_logits", "cross-entropy",
     "p,t->dp", {"wrt": "y"}, None),
    ("real_code", "kl_grad", "kl_grad_assumes_normalised", "kl-divergence", "z,q->dz", {}, None),
    ("real_code", "softmax_backward", "softmax_backward_float32_dot", "softmax", "x,g->dx", {}, "float32"),
    ("real_code", "softmax_backward_classes_first", "softmax_backward", "softmax", "x,g->dx",
     {"layout": "classes-first"}, "rows and classes swapped"),
    ("real_code", "bce_with_logits", "bce_with_logits_extra_factor", "binary-cross-entropy", "z,t->dz,loss",
     {"reduction": "none"}, None),
    ("real_code", "softmax_backward_naive", "softmax_backward_naive", "softmax", "x,g->dx", {"extremes": False},
     None),  # right within its contract (--extremes off); see test_extremes_are_checked_by_default
    ("real_torch", "SoftmaxFunction", "SoftmaxFunctionBatchSum", "softmax", "x,g->dx", {}, None),
    ("real_torch", "CrossEntropyLoss", "CrossEntropyLossNaive", "cross-entropy-onehot", "z,labels->loss,dz",
     {"reduction": "mean"}, None),
    ("real_jax", "softmax", "softmax_forgot_weights", "softmax", "x,g->dx", {}, None),
    ("real_jax", "log_softmax", "log_softmax_elementwise", "log-softmax", "x,g->dx", {}, None),
]


def require_installed(name):
    """Like require_module, without importing it here: JAX in this process would make every later fork
    (subprocess) unsafe, so JAX code is only ever run in verify's child process."""
    if importlib.util.find_spec(name) is None:
        if IN_CI:
            pytest.fail(f"{name} is required in CI (.ci/run installs it)")
        pytest.skip(f"{name} is not installed")


def _module(name):
    if name == "real_torch":
        require_module("torch")
    return importlib.import_module(name)


@functools.cache
def _isolated(module, name, signature):
    """JAX code loaded once in its own child process (as the command line runs it), reused across seeds."""
    from softgrad.verify.loaders import load_function

    require_installed("jax")
    _children.append(load_function(str(CORPUS / f"{module}.py:{name}"), signature, "float64"))
    return _children[-1]


@pytest.fixture(autouse=True, scope="module")
def _close_children():
    yield
    for function in _children:
        function.close()


_children = []


def _check(module, name, spec, signature, options, seed=0):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the naive code overflows, as it should
        function = _isolated(module, name, signature) if module == "real_jax" else getattr(_module(module), name)
        return check_gradient(function, spec, signature, seed=seed, **options)


@pytest.mark.parametrize("module, right, wrong, spec, signature, options, hint", CORPUS_TABLE,
                         ids=[f"{row[0]}.{row[1]}" for row in CORPUS_TABLE])
def test_right_code_passes_and_wrong_code_fails(module, right, wrong, spec, signature, options, hint):
    passed = _check(module, right, spec, signature, options)
    assert passed.passed, passed.text()
    if wrong == right:
        return
    failed = _check(module, wrong, spec, signature, options)
    assert not failed.passed, failed.text()
    assert failed.worst is not None or failed.failures
    if hint is not None:
        assert any(hint in line for line in failed.hints), failed.text()


def test_the_corpus_has_twelve_functions_with_wrong_twins():
    assert len({(m, r) for m, r, w, *_ in CORPUS_TABLE if w != r}) >= 12


@pytest.mark.slow
def test_no_false_alarm_over_200_seeds():
    """Every right function of the corpus passes at 200 seeds (each seed draws new inputs of every case)."""
    for module, right, _, spec, signature, options, _ in CORPUS_TABLE:
        for seed in range(200):
            report = _check(module, right, spec, signature, options, seed)
            assert report.passed, f"seed {seed}\n{report.text()}"


def test_extremes_are_checked_by_default_and_off_is_said():
    naive = _check("real_code", "softmax_backward_naive", "softmax", "x,g->dx", {})
    assert not naive.passed and "+1000" in naive.worst.case, naive.text()
    assert any("vanished" in hint for hint in naive.hints), naive.text()
    excused = _check("real_code", "softmax_backward_naive", "softmax", "x,g->dx", {"extremes": False})
    assert any("extremes off" in line for line in excused.conventions)
    assert not any("1000" in case for case in excused.cases_checked)


def test_projections_keep_every_case_of_full_mode():
    full = _check("real_code", "kl_grad", "kl-divergence", "z,q->dz", {"mode": "full"})
    projected = _check("real_code", "kl_grad", "kl-divergence", "z,q->dz", {"mode": "projections"})
    assert full.cases_checked == projected.cases_checked and len(full.cases_checked) == 18
    wrong = _check("real_code", "softmax_backward_naive", "softmax", "x,g->dx", {"n": 100})
    assert not wrong.passed and wrong.mode == "random projections", wrong.text()


# --- no silent passes: a reference that overflows or is undefined never decides a verdict -------------------
TWO_SIDED = "L = log(sum(exp(x[k]), k) + sum(exp(-x[k]), k))"  # its float64 kernels overflow at |x| ~ 1000


def two_sided_gradient(x):
    z = np.concatenate([x, -x], -1)
    e = np.exp(z - z.max(-1, keepdims=True))
    p = e / e.sum(-1, keepdims=True)
    return p[:, : x.shape[1]] - p[:, x.shape[1]:]


def two_sided_clipped(x):  # right wherever |x| < 700
    x = np.clip(x, -700, 700)
    e, f = np.exp(x), np.exp(-x)
    return (e - f) / (e.sum(-1, keepdims=True) + f.sum(-1, keepdims=True))


@pytest.mark.parametrize("n", [7, 100])
def test_an_overflowing_reference_is_replaced_by_the_40_digit_result(n):
    right = check_gradient(two_sided_gradient, TWO_SIDED, "x->dx", n=n)
    assert right.passed, right.text()
    assert any("40-digit" in line for line in right.conventions)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        wrong = check_gradient(two_sided_clipped, TWO_SIDED, "x->dx", n=n)
    assert not wrong.passed and "1000" in wrong.worst.case, wrong.text()


def test_a_forward_undefined_at_the_inputs_is_never_a_pass(tmp_path):
    """A forward (--fn) that is NaN at the drawn inputs (log of a negative number) stops the check: exit 2,
    naming the inputs, never a pass of the gradient that agrees with nothing."""
    (tmp_path / "g.py").write_text("import numpy as np\n"
                                   "def f(x):\n    return np.log(x)\n"
                                   "def grad(x, g):\n    return g / x\n")
    result = subprocess.run([sys.executable, "-m", "softgrad", "verify", "g.py:grad", "--fn", "g.py:f"],
                            capture_output=True, text=True, cwd=tmp_path)
    ours = [line for line in result.stderr.splitlines() if line.startswith("softgrad")]  # the code's warnings too
    assert result.returncode == 2 and len(ours) == 1, result.stdout + result.stderr
    assert "forward function is not finite at the inputs logits" in ours[0]


def test_a_forward_function_that_overflows_is_named(tmp_path):
    """The gradient is right and stable; the naive forward given to judge it overflows at 1000: exit 2."""
    (tmp_path / "g.py").write_text(
        "import numpy as np\n"
        "def f(x):\n    e = np.exp(x)\n    return e / e.sum(-1, keepdims=True)\n"
        "def g(x, g):\n    e = np.exp(x - x.max(-1, keepdims=True))\n    y = e / e.sum(-1, keepdims=True)\n"
        "    return y * (g - (g * y).sum(-1, keepdims=True))\n")
    result = subprocess.run([sys.executable, "-m", "softgrad", "verify", "g.py:g", "--fn", "g.py:f"],
                            capture_output=True, text=True, cwd=tmp_path)
    ours = [line for line in result.stderr.splitlines() if line.startswith("softgrad")]
    assert result.returncode == 2 and len(ours) == 1, result.stdout + result.stderr
    assert "forward function is not finite" in ours[0] and "1000" in ours[0]


def test_relative_error_is_never_astronomical():
    failed = _check("real_code", "softmax_backward_naive", "softmax", "x,g->dx", {})
    data = failed.to_dict()
    assert data["worst"]["relative_error"] is None or data["worst"]["relative_error"] < 1e6
    assert "e+2" not in failed.text() and "e+3" not in failed.text()


# --- the same through the command line: loaded in a child process, no adapter code ------------------------
def run(*args, cwd=CORPUS):
    return subprocess.run([sys.executable, "-m", "softgrad", "verify", *args], capture_output=True, text=True,
                          cwd=cwd)


@pytest.mark.parametrize("target, args, how", [
    ("real_code.py:SoftmaxWithLoss", ["--against", "cross-entropy-onehot", "--signature", "x,t->loss,dx",
                                      "--reduction", "mean", "--targets", "onehot"], "then .backward()"),
    ("real_code.py:softmax_loss", ["--against", "cross-entropy-onehot", "--signature", "x,labels->loss,dx",
                                   "--reduction", "mean"], "class labels"),
    ("real_torch.py:CrossEntropyLoss", ["--against", "cross-entropy-onehot", "--signature", "z,labels->loss,dz",
                                        "--reduction", "mean"], "torch autograd"),
    ("real_jax.py:softmax", ["--against", "softmax"], "jax.vjp"),
    ("real_code.c:softmax_backward_classes_first", ["--against", "softmax", "--layout", "classes-first"],
     "class axis first"),
])
def test_the_command_line_checks_them_as_written(target, args, how):
    if "torch" in target:
        require_module("torch")
    if "jax" in target:
        require_installed("jax")
    if target.endswith("classes_first"):
        require_tool("cc")
    result = run(target, *args, "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(result.stdout)
    assert data["verdict"] == "PASS" and any(how in line for line in data["conventions"]), data


def test_c_with_the_class_axis_first_and_the_wrong_stride_fails():
    require_tool("cc")
    result = run("real_code.c:softmax_backward_classes_first_wrong_stride", "--against", "softmax",
                 "--layout", "classes-first")
    assert result.returncode == 1 and result.stdout.startswith("FAIL"), result.stdout + result.stderr


def test_a_transposed_result_names_the_layout():
    result = run("real_code.py:softmax_backward", "--against", "softmax", "--n", "5", "--batch", "3",
                 "--layout", "classes-first")
    assert result.returncode == 1 and "hint: dx is the gradient with rows and classes swapped" in result.stdout
    assert "--layout classes-last" in result.stdout, result.stdout


def test_missing_frameworks_are_one_clear_line(tmp_path):
    """Code that needs torch is loaded only in its child; softgrad itself never imports torch or JAX."""
    code = ("import sys\nimport softgrad.verify.adapters, softgrad.cli\n"
            "print('torch' in sys.modules, 'jax' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.stdout.split() == ["False", "False"], result.stdout + result.stderr
    (tmp_path / "m.py").write_text("import not_a_framework_here\n")
    failed = subprocess.run([sys.executable, "-m", "softgrad", "verify", "m.py:f", "--against", "softmax"],
                            capture_output=True, text=True, cwd=tmp_path)
    assert failed.returncode == 2 and failed.stderr.count("\n") == 1 and "not_a_framework_here" in failed.stderr


def test_a_loss_returned_per_row_needs_reduction_none_or_matches_sum():
    module = _module("real_code")
    report = check_gradient(module.bce_with_logits, "binary-cross-entropy", "z,t->dz,loss")  # sum accepts per-row
    assert report.passed, report.text()

    def mean_loss(z, t):
        dz, loss = module.bce_with_logits(z, t)
        return dz, loss.mean()

    declared_sum = check_gradient(mean_loss, "binary-cross-entropy", "z,t->dz,loss")
    assert not declared_sum.passed and any("reduction mismatch" in h for h in declared_sum.hints)


def test_signatures_read_names_in_any_order():
    from softgrad.verify.signatures import parse_signature

    assert parse_signature("z,labels->dz,loss").takes == ("x", "label")
    assert parse_signature("z,labels->dz,loss").returns == ("dx", "loss")
    assert parse_signature("t,logits->loss,dlogits").takes == ("t", "x")
    assert parse_signature("y,t->dy").takes == ("x", "t")  # y differentiated: an input, not the saved output
    assert parse_signature("out,dout->dx").takes == ("y", "g")


def test_in_ci_the_frameworks_are_installed():
    if IN_CI:
        require_module("torch")
        require_installed("jax")


# --- targets as code takes them ----------------------------------------------------------------------------
ONEHOT_ONLY = ("import numpy as np\n"
               "def grad(z, t):\n"
               "    assert set(np.unique(t)) <= {0.0, 1.0}, 'one-hot targets only'\n"
               "    e = np.exp(z - z.max(1, keepdims=True))\n"
               "    return e / e.sum(1, keepdims=True) - t\n")


def test_code_that_asserts_one_hot_targets_is_checked_with_targets_onehot(tmp_path):
    (tmp_path / "g.py").write_text(ONEHOT_ONLY)
    default = run("g.py:grad", "--against", "cross-entropy-onehot", cwd=tmp_path)
    assert default.returncode == 2 and "one-hot targets only" in default.stderr  # soft targets reached it
    chosen = run("g.py:grad", "--against", "cross-entropy-onehot", "--targets", "onehot", cwd=tmp_path)
    assert chosen.returncode == 0 and "one-hot targets: --targets onehot" in chosen.stdout, chosen.stdout


@pytest.mark.parametrize("args, fragment", [
    (["--against", "cross-entropy-onehot", "--targets", "unnormalized"], "contradicts the spec"),
    (["--against", "cross-entropy", "--targets", "labels"], "needs a signature that takes them"),
    (["--against", "logsumexp", "--signature", "x,labels->dx"], "takes targets, but logsumexp has none"),
    (["--against", "cross-entropy", "--signature", "z,labels->dz", "--targets", "soft"], "takes class labels"),
    (["--against", "docs/examples/attention.spec", "--layout", "classes-first", "--signature", "Q,K,V,dO->dQ"],
     "apply to one-index specs"),
])
def test_target_options_that_cannot_apply_are_one_line(tmp_path, args, fragment):
    (tmp_path / "g.py").write_text(ONEHOT_ONLY)
    root = Path(__file__).resolve().parent.parent
    args = [str(root / a) if a.startswith("docs/") else a for a in args]
    result = run("g.py:grad", *args, cwd=tmp_path)
    assert result.returncode == 2 and result.stderr.count("\n") == 1 and fragment in result.stderr, result.stderr


def test_the_report_with_its_new_fields_follows_the_schema():
    from test_json import validate

    failed = _check("real_code", "softmax_loss_not_divided", "cross-entropy-onehot", "x,labels->loss,dx",
                    {"reduction": "mean"})
    data = failed.to_dict()
    validate(data, "report-2")
    assert data["conventions"][0].startswith("targets: class labels") and len(data["inputs"]) == 6
    assert all(case["bad_elements"] <= case["elements"] for case in data["cases"])


def test_the_python_api_refuses_one_index_options_for_tensor_specs():
    from softgrad.errors import SoftgradError

    spec = str(Path(__file__).resolve().parent.parent / "docs" / "examples" / "attention.spec")
    with pytest.raises(SoftgradError, match="apply to one-index specs"):
        check_gradient(lambda *arrays: arrays, spec, "Q,K,V,dO->dQ", layout="classes-first")
