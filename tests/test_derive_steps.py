"""The steps: the reference derivations' order, functions outside the catalog, and checks that bite."""

import pytest
import sympy as sp
from outside_catalog import OUTSIDE_THE_CATALOG

import softgrad
from softgrad.derive import CATALOG, derive_spec, load_spec
from softgrad.derive.check.numeric import StepChecker
from softgrad.derive.spec import Definition, parse_spec
from softgrad.derive.steps import Step
from softgrad.derive.symbols import Partial, class_sum, index
from softgrad.errors import SoftgradError, StepCheckFailed

i, j, k = index("i"), index("j"), index("k")
x, y, g = sp.IndexedBase("x"), sp.IndexedBase("y"), sp.IndexedBase("g")
delta = sp.KroneckerDelta


def one_range_checker(spec, upstream=False):
    """The step checker as the one-range engine makes it (total derivatives), with an upstream gradient g read
    by a surrogate loss l = Σ_k g_k y_k where `upstream`."""
    surrogate = Definition("l", None, class_sum(g[k] * y[k], k), "", 0) if upstream else None
    return StepChecker(spec, None, surrogate, total_derivatives=True)


def rules(derivation, section_title):
    section = next(s for s in derivation.sections if s.title.startswith(section_title))
    return [step.rule for step in section.steps]


def test_softmax_steps_follow_the_reference_order():
    # derivations.md §2–3: quotient rule, the cases, Kronecker form, matrix form, then the VJP.
    d = softgrad.derive("softmax")
    assert rules(d, "Jacobian") == [
        "definition", "quotient rule", "chain rule", "sum rule", "substitute the parts",
        "case i = j", "case i ≠ j", "Kronecker combination", "matrix form",
    ]
    assert rules(d, "Vector") == ["chain rule", "sift and factor", "vector form"]
    cases = {s.rule: s for s in d.steps}
    assert cases["case i = j"].equal == (i, j) and cases["case i ≠ j"].distinct == (i, j)
    assert sp.srepr(d.results["jacobian_matrix"].rhs) == sp.srepr(
        sp.matrices.expressions.DiagMatrix(sp.MatrixSymbol("y", sp.Symbol("n", integer=True, positive=True), 1))
        - sp.MatrixSymbol("y", sp.Symbol("n", integer=True, positive=True), 1)
        * sp.MatrixSymbol("y", sp.Symbol("n", integer=True, positive=True), 1).T)


def test_vjp_reduction_is_explicit_and_independent_of_the_output_index():
    d = softgrad.derive("softmax")
    assert d.reductions == [class_sum(g[j] * y[j], j)]
    assert "O(n)" in next(s for s in d.steps if s.rule == "sift and factor").reason.text()


@pytest.mark.parametrize("name", ["cross-entropy-onehot", "kl-divergence"])
def test_loss_steps_follow_the_reference_order(name):
    # derivations.md §4–5: ∂L/∂y_k, chain rule, split k = j / k ≠ j, general form, then Σt = 1.
    d = softgrad.derive(name)
    order = rules(d, "Gradient")
    intermediate = d.spec.definitions[0].name
    expected = [
        "definition",
        f"differentiate with respect to {intermediate}",
        "chain rule",
        "split the sum: k = j and k ≠ j",
        "combine",
    ]
    if name == "cross-entropy-onehot":
        expected.append("target constraint")
    assert order == expected


def test_cross_entropy_split_matches_the_reference_terms():
    # −t_j (1 − y_j) + Σ_{k≠j} t_k y_j
    d = softgrad.derive("cross-entropy")
    split = next(s for s in d.steps if s.rule.startswith("split"))
    t = sp.IndexedBase("t")
    expected = -t[j] * (1 - y[j]) + sp.Symbol("S")
    got = split.result.replace(lambda e: type(e).__name__ == "SumExcept", lambda e: sp.Symbol("S"))
    assert sp.expand(got - expected) == 0
    summand = next(e for e in sp.preorder_traversal(split.result) if type(e).__name__ == "SumExcept").summand
    assert sp.expand(summand - t[k] * y[j]) == 0


def test_temperature_softmax_outside_the_catalog():
    d = softgrad.derive("y[i] = exp(x[i]/T)/sum(exp(x[k]/T), k)")
    T = sp.Symbol("T", positive=True)
    assert sp.simplify(d.results["jacobian"].rhs - y[i] * (delta(i, j) - y[j]) / T) == 0
    assert d.spec.name is None and all(s.checked for s in d.steps)


def test_square_normalisation_outside_the_catalog():
    d = softgrad.derive("y[i] = x[i]**2/sum(x[k]**2, k)")
    S = class_sum(x[k] ** 2, k)
    expected = (2 * x[i] * delta(i, j) - 2 * x[i] ** 2 * x[j] / S) / S
    inlined = d.results["jacobian"].rhs.subs(y[i], x[i] ** 2 / S)
    assert sp.simplify(inlined - expected) == 0
    assert d.reductions and all(i not in r.free_symbols for r in d.reductions)


def test_softmax_entropy_outside_the_catalog():
    d = softgrad.derive("y[i] = exp(x[i])/sum(exp(x[k]), k)\nH = -sum(y[k]*log(y[k]), k)")
    H = sp.Symbol("H")
    assert sp.simplify(d.results["gradient"].rhs + y[j] * (sp.log(y[j]) + H)) == 0
    assert any(s.rule == "outputs of y sum to 1" for s in d.steps)


def test_points_where_the_spec_has_no_value_are_left_out_and_said():
    """A variance over n − 1 (torch.var's default) has no value at n = 1: those points are left out of the
    checks and the sizes said are the ones used; the proofs hold at n = 2 to 4 (it was an internal error)."""
    d = softgrad.derive("m = sum(x[k], k)/n; v = sum((x[k] - m)^2, k)/(n - 1); y[i] = (x[i] - m)/sqrt(v + 0.00001)")
    assert "checked numerically, every entry, at n = 2, 3, 5 " in d.check_summary, d.check_summary
    assert "3 sampled points where y has no finite real value left out" in d.check_summary
    steps = [step for section in d.sections for step in section.steps]
    assert all(step.proved for step in steps), d.render("text")
    at_one = {step.rule for step in steps if step.proof_detail == "identical at n = 1, 2, 3, 4"}
    assert at_one == {"derivative of m", "sum rule"}  # the two steps that do not read v: ∂m/∂x_j, ∂(x_i − m)/∂x_j
    assert all(step.proof_detail == "identical at n = 2, 3, 4" for step in steps if step.rule not in at_one)


def test_a_constant_that_underflows_is_checked_in_extended_precision():
    """exp(x − 1000) is 0 in double precision, so 0/0 there; in extended precision every point has a value."""
    d = softgrad.derive("y[i] = exp(x[i] - 1000)/sum(exp(x[k] - 1000), k)")
    assert "checked numerically, every entry, at n = 1, 2, 3, 5 (" in d.check_summary
    assert "left out" not in d.check_summary
    assert all(step.proved for section in d.sections for step in section.steps)


def test_a_vector_defined_through_another_with_the_same_summation_index():
    """Inlining p_k into Σ_k p_k² renames p's own Σ_k, once to the name of the backward pass's scalar l, which
    inlining then replaced inside the sum's limits: an internal error on a valid spec. Now derived, every
    step proved; the VJP is softmax's at 2z, 2y ⊙ (g − ⟨g, y⟩)."""
    d = softgrad.derive("p[i] = exp(z[i])/sum(exp(z[k]), k)\ny[i] = p[i]^2/sum(p[k]^2, k)")
    proved, checked = (int(word) for word in d.check_summary.split()[:3:2])
    assert proved == checked > 0, d.check_summary
    z, g = sp.IndexedBase("z"), sp.IndexedBase("g")
    softmax_2z = sp.exp(2 * z[i]) / class_sum(sp.exp(2 * z[k]), k)
    expected = 2 * softmax_2z * (g[i] - class_sum(g[j] * softmax_2z.subs(i, j), j))
    logits = [0.3, -1.2, 2.0]
    softmax_values = [sp.exp(2 * v) / sum(sp.exp(2 * w) for w in logits) for v in logits]  # y is softmax(2z)
    values = {z: sp.Array(logits), g: sp.Array([1.5, -0.5, 0.25]), sp.IndexedBase("y"): sp.Array(softmax_values)}
    for row in range(3):
        entry = {i: row, sp.Symbol("n", integer=True, positive=True): 3}
        got = d.results["vjp"].rhs.xreplace(entry).doit()
        want = expected.xreplace(entry).doit()
        assert abs(float((got - want).subs(values).doit())) < 1e-12

def test_wrt_another_input():
    d = softgrad.derive("cross-entropy", wrt="t")
    assert sp.simplify(d.results["gradient"].rhs + sp.log(y[j])) == 0


def test_a_wrong_step_fails_its_check_with_a_counterexample():
    spec = parse_spec("y[i] = exp(x[i]) / sum(exp(x[k]), k)")
    checker = one_range_checker(spec)
    typo = Step(
        rule="Kronecker combination",
        lhs=Partial(y[i], x[j]),
        forms=[y[j] * (delta(i, j) - y[i]) + y[i] * y[j] * 0.001],
        reason="an index typo",
    )
    with pytest.raises(StepCheckFailed, match=r"n = \d+, i = \d+, j = \d+"):
        checker.check(typo)



def _matrix_forms():
    from sympy.matrices.expressions import DiagMatrix, HadamardPower, HadamardProduct, OneMatrix

    from softgrad.derive.symbols import n
    Y, G = sp.MatrixSymbol("y", n, 1), sp.MatrixSymbol("g", n, 1)
    ones = OneMatrix(n, 1)
    jacobian = (i, j), Partial(y[i], x[j])
    vjp = (i,), sp.Sum(g[k] * Partial(y[k], x[i]), (k, 0, n - 1))
    return [  # (axes, left side, a right form, the same with one slip)
        (*jacobian, DiagMatrix(Y) - Y * Y.T, DiagMatrix(Y) - Y * Y.T * 2),
        (*jacobian, DiagMatrix(Y) - Y * Y.T, DiagMatrix(Y) - (Y * Y.T).T * sp.Identity(n) * 0.999),
        (*jacobian, HadamardProduct(Y * ones.T, sp.Identity(n) - ones * Y.T),
         HadamardProduct(Y * ones.T, sp.Identity(n) - Y * ones.T)),
        (*vjp, HadamardProduct(Y, G - ones * (G.T * Y)), HadamardProduct(Y, G - ones * (Y.T * Y))),
        (*vjp, HadamardProduct(Y, G) - HadamardPower(Y, 2) * 0 - Y * (G.T * Y),
         HadamardProduct(Y, G) - HadamardPower(Y, 2) - Y * (G.T * Y)),
    ]


@pytest.mark.parametrize("axes, lhs, right, slip", _matrix_forms())
def test_matrix_forms_are_checked_entry_by_entry(axes, lhs, right, slip):
    """Each kind of matrix node (diag, products, ᵀ, ∘, powers ∘, 𝟙, I, scalars) is evaluated at the points
    and written out by the prover: the right form passes both and one slip in it fails both."""
    from softgrad.derive.check.proof import Prover

    spec = parse_spec("y[i] = exp(x[i]) / sum(exp(x[k]), k)")
    step = Step(rule="matrix form", lhs=lhs, forms=[right], reason="", matrix_axes=axes)
    wrong = Step(rule="matrix form", lhs=lhs, forms=[slip], reason="", matrix_axes=axes)
    assert one_range_checker(spec, upstream=True).check(step).checked
    with pytest.raises(StepCheckFailed):
        one_range_checker(spec, upstream=True).check(wrong)
    prover = Prover(spec, spec.definitions, [*spec.inputs, "g"])
    assert prover.prove(step, list(axes), None, None) == [1, 2, 3, 4]
    assert prover.prove(wrong, list(axes), None, None) == []

def test_the_general_form_is_checked_without_the_constraint():
    # p − t is wrong for targets that do not sum to 1: the checker must see that.
    spec = parse_spec("y[i] = exp(x[i]) / sum(exp(x[k]), k)\nL = -sum(t[k] * log(y[k]), k)")
    checker = one_range_checker(spec)
    t = sp.IndexedBase("t")
    wrong = Step(rule="combine", lhs=Partial(sp.Symbol("L"), x[j]), forms=[y[j] - t[j]], reason="assumes Σt = 1")
    with pytest.raises(StepCheckFailed):
        checker.check(wrong)
    right = Step(rule="combine", lhs=Partial(sp.Symbol("L"), x[j]), forms=[y[j] - t[j]], reason="",
                 assumes=("given sum(t[k], k) = 1",))
    with pytest.raises(StepCheckFailed):  # the spec declares no such constraint: samples stay unnormalised
        checker.check(right)


def test_nothing_depends_on_the_catalog_names():
    # the same text under no name derives the same results
    named, anonymous = softgrad.derive("kl-divergence"), softgrad.derive(
        "p[i] = exp(z[i]) / sum(exp(z[k]), k)\nL = sum(q[k] * log(q[k] / p[k]), k)")
    assert {k: v.rhs for k, v in named.results.items()} == {k: v.rhs for k, v in anonymous.results.items()}




@pytest.mark.parametrize("spec", list(CATALOG) + OUTSIDE_THE_CATALOG)
def test_no_step_is_checked_on_nothing(spec):
    """Every step compares at least one index pair, and says at which sizes (a case i ≠ j has none at n = 1)."""
    derivation = softgrad.derive(spec)
    for step in derivation.steps:
        count = int(step.check_detail.rpartition(" comparisons")[0].rpartition(", ")[2])
        assert step.checked and count > 0, (step.rule, step.check_detail)
        assert step.check_sizes and (1 not in step.check_sizes or not step.distinct), (step.rule, step.check_detail)


def test_inputs_are_sampled_from_their_domain():
    """Signed where the spec allows (and of magnitude 4 and more at some points), positive under a log or a
    square root."""
    checker = one_range_checker(parse_spec("y[i] = sqrt(u[i]) * x[i] / sum(exp(x[k]), k)"))
    xs = [complex(v).real for p in checker.free_points for v in p.arrays["x"]]
    us = [complex(v).real for p in checker.free_points for v in p.arrays["u"]]
    assert min(xs) < 0 < max(xs) and max(abs(v) for v in xs) > 4
    assert min(us) > 0


def test_tidy_leaves_cancel_out_beyond_its_size_limit(monkeypatch):
    """cancel()'s gcds grow faster than the expression (over 30 s on a 1,150-operation VJP of a centred,
    squared normalisation): beyond LARGEST_CANCELLED operations tidy tries factor() alone."""
    from softgrad.derive import algebra

    cancelled = []
    real_cancel = sp.cancel
    monkeypatch.setattr(sp, "cancel", lambda expr, *args, **kwargs: cancelled.append(expr) or real_cancel(expr))
    monkeypatch.setattr(algebra, "LARGEST_CANCELLED", 10)
    small, large = (x[i] + 1) / (x[i] ** 2 - 1), sum((x[i] + m) / (x[i] ** 2 - m ** 2) for m in (1, 2, 3))
    assert sp.count_ops(small) <= 10 < sp.count_ops(large)
    assert algebra._tidy(small) == 1 / (x[i] - 1) and cancelled == [small]
    assert sp.simplify(algebra._tidy(large) - sum(1 / (x[i] - m) for m in (1, 2, 3))) == 0  # factor() cancels
    assert cancelled == [small]


def test_a_derivation_collects_cycles_rarely_and_puts_the_thresholds_back():
    """While deriving, the cycle collector runs every 50,000 new objects (SymPy's objects are acyclic and many);
    the caller's thresholds are restored afterwards, also when the derivation fails."""
    import gc

    import softgrad.derive.engine as engine

    seen = []
    original = engine._derive

    def spying(*arguments):
        seen.append(gc.get_threshold())
        return original(*arguments)

    before = gc.get_threshold()
    try:
        gc.set_threshold(700, 10, 10)
        engine._derive = spying
        derive_spec(load_spec("softmax"))
        with pytest.raises(SoftgradError):
            derive_spec(load_spec("softmax"), wrt="nothing")
        assert gc.get_threshold() == (700, 10, 10)
    finally:
        engine._derive = original
        gc.set_threshold(*before)
    assert seen[0] == (50_000, 10, 10)


@pytest.mark.parametrize(("source", "targets"), [
    ("p[i] = exp(z[i]) / sum(exp(z[k]), k); L = -sum(t[k]*log(p[k]), k)", ["t"]),
    ("u[i] = 2*t[i] + 1; p[i] = exp(z[i]) / sum(exp(z[k]), k); L = -sum(u[k]*log(p[k]), k)", ["t"]),  # via u
    ("u[i] = q[i]^2; p[i] = exp(z[i]) / sum(exp(z[k]), k); L = -sum(u[k]*log(p[k]), k)", []),  # q², not affine
    ("w = sum(q[k], k); p[i] = exp(z[i]) / sum(exp(z[k]), k); L = -w*sum(q[k]*log(p[k]), k)", []),  # q·q
    ("u[i] = 3*q[i]; w = sum(u[k], k); p[i] = exp(z[i]) / sum(exp(z[k]), k); L = -w*sum(log(p[k]), k)",
     ["q"]),  # through two definitions
    ("L = sum((x[k] - t[k])^2, k)/n", ["t"])])  # neither affine: the target's name decides
def test_the_targets_of_a_loss_are_found_through_its_definitions(source, targets):
    """An input the loss is affine in (read through sums, products with one such factor, and definitions of
    either) is a target; the default --wrt is then the other input."""
    from softgrad.derive import algebra

    spec = load_spec(source)
    assert algebra.targets_of_loss(spec, list(spec.inputs)) == targets
