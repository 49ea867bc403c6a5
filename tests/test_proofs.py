"""Steps are proved exactly where SymPy can, and a proof is never claimed for a step that is not an identity."""

import os
import signal

import numpy as np
import pytest
import sympy as sp
from hypothesis import given, settings
from hypothesis import strategies as st
from outside_catalog import OUTSIDE_THE_CATALOG

import softgrad
from softgrad.derive.catalog import CATALOG
from softgrad.derive.check import proof
from softgrad.derive.check.numbers import wide_precision
from softgrad.derive.check.numeric import ONE_RANGE_SIZES, StepChecker
from softgrad.derive.check.proof import Prover, _Atomizer, _is_zero, index_patterns
from softgrad.derive.engine import Engine
from softgrad.derive.spec import parse_spec
from softgrad.derive.steps import Step
from softgrad.derive.symbols import Partial, index

EVERY_SPEC = list(CATALOG) + OUTSIDE_THE_CATALOG


def test_the_corpus_has_at_least_25_functions_outside_the_catalog():
    assert len(set(OUTSIDE_THE_CATALOG)) >= 25


def test_index_patterns_are_the_set_partitions_that_fit():
    i, j, k = (index(name) for name in "ijk")
    assert list(index_patterns([i, j], 1)) == [{i: 0, j: 0}]
    assert list(index_patterns([i, j], 4)) == [{i: 0, j: 0}, {i: 0, j: 1}]
    assert len(list(index_patterns([i, j, k], 4))) == 5  # the Bell number B3


@pytest.mark.parametrize("spec", list(CATALOG))
def test_every_catalog_step_is_proved(spec):
    derivation = softgrad.derive(spec)
    unproved = [step.rule for step in derivation.steps if not step.proved]
    assert not unproved
    assert "proved exactly" in derivation.check_summary


@pytest.mark.parametrize("spec", EVERY_SPEC)
def test_every_step_is_compared_at_every_size_it_has_pairs_for(spec):
    """n = 1 has no pair i ≠ j; every other size has pairs for every step, and each is compared."""
    for step in softgrad.derive(spec).steps:
        expected = [size for size in ONE_RANGE_SIZES if size >= 2] if step.distinct else list(ONE_RANGE_SIZES)
        assert list(step.check_sizes) == expected, (step.rule, step.check_detail)


def _differences_at(step: Step, checker: StepChecker) -> list[float]:
    """|lhs − form| / max(1, |lhs|) of a step at every index pattern the step claims, at the checker's points."""
    differences = []
    free = sorted({s for e in [step.lhs, *step.forms] if not isinstance(e, sp.MatrixExpr)
                   for s in e.free_symbols if s.is_integer and str(s) != "n"}, key=str)
    for point in checker.points if step.assumes else checker.free_points:
        expected = checker.entries(step.lhs, point, free)
        claimed = np.ones(np.shape(expected), dtype=bool)
        for pair, same in ((step.distinct, False), (step.equal, True)):
            if pair and set(pair) <= set(free):
                grid = np.indices(np.shape(expected))
                claimed &= (grid[free.index(pair[0])] == grid[free.index(pair[1])]) == same
        for form in step.forms:
            if isinstance(form, sp.MatrixExpr):
                continue
            got = checker.entries(form, point, free)
            differences += [float(abs(a - b) / max(1, abs(b))) for a, b in zip(np.ravel(got[claimed]),
                                                                             np.ravel(expected[claimed]))]
    return differences


@pytest.mark.parametrize("spec", EVERY_SPEC)
def test_a_proved_step_holds_at_a_size_neither_check_used(spec):
    """n = 6 is neither a proof size nor a numeric check size: a false proof would show there (in 30 digits; the
    targets a constraint normalises sum to 1 to double rounding)."""
    derivation = softgrad.derive(spec)
    made = Engine(derivation.spec, derivation.wrt).checker  # with the VJP's upstream gradient and loss
    surrogate = made.forward[len(derivation.spec.definitions):]
    with wide_precision():
        checker = StepChecker(derivation.spec, None, surrogate[0] if surrogate else None, seed=7,
                              wide=True, total_derivatives=True, sizes=(6,))
        for step in derivation.steps:
            if step.proved:
                assert max(_differences_at(step, checker), default=0.0) < 1e-14, step.rule


def test_a_wrong_step_is_neither_proved_nor_checked():
    spec = parse_spec("y[i] = exp(x[i]) / sum(exp(x[k]), k)")
    y, x = sp.IndexedBase("y"), sp.IndexedBase("x")
    i, j = index("i"), index("j")
    wrong = Step("made up", Partial(y[i], x[j]), [y[i] * (sp.KroneckerDelta(i, j) - y[i])], reason=None)  # type: ignore[arg-type]
    prover = Prover(spec, spec.definitions, spec.inputs)
    assert prover.prove(wrong, [i, j], None, None) == []
    right = Step("right", Partial(y[i], x[j]), [y[i] * (sp.KroneckerDelta(i, j) - y[j])], reason=None)  # type: ignore[arg-type]
    assert prover.prove(right, [i, j], None, None) == [1, 2, 3, 4]


def test_a_step_that_holds_only_at_some_sizes_is_not_proved():
    """Σ_k x_k = x_i holds at n = 1 only: the prover must not claim it."""
    spec = parse_spec("y[i] = sum(x[k], k)")
    y, x = sp.IndexedBase("y"), sp.IndexedBase("x")
    wrong = Step("made up", y[index("i")], [x[index("i")]], reason=None)  # type: ignore[arg-type]
    assert Prover(spec, spec.definitions, spec.inputs).prove(wrong, [index("i")], None, None) == []


def test_a_size_where_a_side_has_no_value_is_left_to_the_others():
    """y = x/(n − 1) has no value at n = 1: no claim there, a proof at n = 2 to 4; a wrong form still fails."""
    spec = parse_spec("y[i] = x[i]/(n - 1)")
    y, x, n = sp.IndexedBase("y"), sp.IndexedBase("x"), sp.Symbol("n", integer=True, positive=True)
    i = index("i")
    prover = Prover(spec, spec.definitions, spec.inputs)
    right = Step("right", y[i], [2 * x[i] / (2 * n - 2)], reason=None)  # type: ignore[arg-type]
    assert prover.prove(right, [i], None, None) == [2, 3, 4]
    wrong = Step("wrong", y[i], [x[i] / n], reason=None)  # type: ignore[arg-type]
    assert prover.prove(wrong, [i], None, None) == []


def test_decimals_are_the_exact_numbers_they_spell():
    """A decimal is the exact number it spells to 15 digits: 0.1·x + 0.2·x (which SymPy adds in floating point,
    0.30000000000000004) equals the form 0.3·x; a decimal off in its 15th digit is another number."""
    spec = parse_spec("y[i] = 0.1*x[i] + 0.2*x[i] + 0.00001")
    y, x = sp.IndexedBase("y"), sp.IndexedBase("x")
    i = index("i")
    prover = Prover(spec, spec.definitions, spec.inputs)
    spelled = sp.Float("0.3") * x[i] + sp.Float("0.00001")
    assert spelled != spec.output.expr  # as SymPy holds them, the two differ
    assert prover.prove(Step("same", y[i], [spelled], reason=None), [i], None, None) == [1, 2, 3, 4]  # type: ignore[arg-type]
    off = sp.Float("0.300000000000001") * x[i] + sp.Float("0.00001")
    assert prover.prove(Step("off", y[i], [off], reason=None), [i], None, None) == []  # type: ignore[arg-type]


def _rational_expressions() -> st.SearchStrategy[sp.Expr]:
    """Nested sums, products and integer powers (negative too) of a few symbols and a root."""
    a, b = sp.symbols("a b", real=True)
    leaves = st.sampled_from([a, b, sp.Integer(2), sp.Rational(1, 3), a + 1, sp.sqrt(a**2 + 1), sp.exp(a - 2 * b)])

    def extend(children: st.SearchStrategy[sp.Expr]) -> st.SearchStrategy[sp.Expr]:
        return st.one_of(
            st.tuples(children, children).map(lambda pair: pair[0] + pair[1]),
            st.tuples(children, children).map(lambda pair: pair[0] * pair[1]),
            st.tuples(children, st.sampled_from([-2, -1, 2, 3])).map(lambda pair: (pair[0] + 3) ** pair[1]),
        )
    return st.recursive(leaves, extend, max_leaves=8)



def _function_expressions() -> st.SearchStrategy[sp.Expr]:
    """Sums, products, powers (constant and symbolic exponents) and the functions specs use, of two symbols."""
    from sympy.codegen.cfunctions import log1p

    from softgrad.derive.symbols import sigmoid, softplus
    a, b = sp.symbols("a b", real=True)
    leaves = st.sampled_from([a, b, sp.Integer(2), sp.Rational(1, 3), sp.Float(0.5), a**2 + 1])
    functions = [sp.exp, sp.log, sp.tanh, sp.erf, sigmoid, softplus, log1p, sp.sqrt, sp.Abs]

    def extend(children: st.SearchStrategy[sp.Expr]) -> st.SearchStrategy[sp.Expr]:
        return st.one_of(
            st.tuples(children, children).map(lambda pair: pair[0] + pair[1]),
            st.tuples(children, children).map(lambda pair: pair[0] * pair[1]),
            st.tuples(children, st.sampled_from([-2, -1, sp.Rational(1, 2), 3, b, a - b])).map(
                lambda pair: (pair[0] ** 2 + 1) ** pair[1]),
            st.tuples(st.sampled_from(functions), children).map(lambda pair: pair[0](pair[1])),
        )
    return st.recursive(leaves, extend, max_leaves=6)


@given(_function_expressions())
@settings(max_examples=80, deadline=None)
def test_the_provers_derivative_is_sympys(expression):
    """The prover differentiates without SymPy's is_zero questions: the result must be SymPy's diff, and
    where its form differs, equal in value (mpmath, 30 digits, at two points)."""
    a, b = sp.symbols("a b", real=True)
    ours, sympys = proof._derivative(expression, a, {}), sp.diff(expression, a)
    if ours == sympys:
        return
    for point in ({a: sp.Rational(3, 7), b: sp.Rational(5, 4)}, {a: sp.Rational(-6, 5), b: sp.Rational(1, 3)}):
        difference = (ours - sympys).xreplace(point).evalf(30)
        assert abs(complex(difference)) < 1e-20 * max(1.0, abs(complex(sympys.xreplace(point).evalf(30))))

@given(_rational_expressions())
@settings(max_examples=60, deadline=None)
def test_the_zero_test_says_zero_for_identities_and_only_for_them(expression):
    """Rewritten by SymPy into another form it is still 0; plus a term that is never 0, it is not."""
    a = sp.Symbol("a", real=True)
    assert _is_zero(expression - sp.cancel(sp.expand(expression)))
    assert not _is_zero(expression - sp.cancel(sp.expand(expression)) + 1 / (a**2 + 1))
    assert not _is_zero(expression - sp.cancel(sp.expand(expression)) + sp.sqrt(a**2 + 1) - a)


def test_the_zero_test_uses_what_a_root_is():
    a, b = sp.symbols("a b", real=True)
    root = sp.sqrt(a**2 + b**2 + 1)
    assert _is_zero(root**3 - (a**2 + b**2 + 1) * root)
    assert _is_zero(1 / root - root / (a**2 + b**2 + 1))
    assert not _is_zero(root**3 - (a**2 + b**2) * root)
    assert not _is_zero(root - a)


def test_an_exponential_with_a_fractional_coefficient_is_a_root_of_the_whole():
    """exp(u/2)² = exp(u) (a mean's 1/n inside an exp: softmax of x − mean was 3 of 10 steps proved)."""
    a, b = sp.symbols("a b", real=True)
    assert _is_zero(sp.exp(a / 2) ** 2 - sp.exp(a))
    assert _is_zero(sp.exp(a - b / 3) * sp.exp(b / 3) ** 4 - sp.exp(a + b))
    assert not _is_zero(sp.exp(a / 2) - sp.exp(a))
    assert not _is_zero(sp.exp(a / 3) ** 2 - sp.exp(a / 2))
    d = softgrad.derive("p[i] = z[i] - sum(z[k], k)/n; y[i] = exp(p[i])/sum(exp(p[k]), k)")
    proved = {step.rule for step in d.steps if step.proved}
    assert {"quotient rule", "case i = j", "case i ≠ j", "sift and factor"} <= proved, d.render("text")
    assert len(proved) >= 9  # were 3 of 10 (the Kronecker and matrix forms are still checked numerically only)


def test_one_atomizer_serves_many_differences_without_mixing_them():
    """The prover keeps one atomizer per derivation: a root met in one difference is used by the next that
    reads it (also inside another root), and adds nothing to one that does not."""
    a, b = sp.symbols("a b", positive=True)
    inner = sp.sqrt(a + 1)
    outer = sp.sqrt(1 + inner)
    shared = _Atomizer()
    assert _is_zero(inner**2 - a - 1, shared)
    assert not _is_zero(b - a, shared)
    assert not _is_zero(inner - a, shared)
    assert _is_zero((outer**2 - inner)**2 - 1, shared)  # (1 + √(a+1)) − √(a+1) = 1 needs both roots
    assert not _is_zero(outer - inner, shared)
    assert set(shared.roots_in(shared(outer))) == set(shared.roots)  # the nested root comes with the outer
    assert not shared.roots_in(shared(a + b))


def test_a_numerator_too_large_to_expand_is_not_called_zero(monkeypatch):
    """Past LARGEST_NUMERATOR terms the zero test gives up (the step stays checked numerically) rather than
    expand on: Π(1 + a_k)² over a common denominator grows as the product of the denominators."""
    a = sp.symbols("a0:6", positive=True)
    identity = sum(((1 - t) / (1 + t)) ** 2 for t in a) - sum((1 - 2 * t + t**2) / (1 + t) ** 2 for t in a)
    assert identity != 0 and _is_zero(identity)
    monkeypatch.setattr(proof, "LARGEST_NUMERATOR", 50)
    assert not _is_zero(identity)


def test_a_difference_too_large_to_simplify_is_not_called_zero():
    """Past LARGEST_DIFFERENCE nodes the prover declines (the step stays checked numerically) rather than
    spending unbounded time, even on a difference that is 0; just under the limit it decides."""
    a = sp.Symbol("a")
    identity = sp.Add(*[(sp.exp(k * a) + 1)**2 - sp.exp(2 * k * a) - 2 * sp.exp(k * a) - 1 for k in range(1, 30)])
    assert identity != 0
    assert _is_zero(identity)
    size = sum(1 for _ in sp.preorder_traversal(identity))
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(proof, "LARGEST_DIFFERENCE", size)
        assert _is_zero(identity)
        patch.setattr(proof, "LARGEST_DIFFERENCE", size - 1)
        assert not _is_zero(identity)


@pytest.mark.parametrize("spec", ["softmax", "kl-divergence", "m = sum(x[k], k)/n; v = sum((x[k] - m)^2, k)/n; "
                                  "y[i] = (x[i] - m)/sqrt(v + 0.00001)"])
def test_proofs_in_the_background_mark_the_same_steps_as_proofs_in_process(spec, monkeypatch):
    """A derivation proves its steps in a forked process where it can: same marks as proving them one by one,
    and no process is left behind."""
    from softgrad.derive.engine import derive_spec

    with monkeypatch.context() as patch:
        patch.setattr(proof, "_may_fork", lambda: False)
        alone = derive_spec(softgrad.derive.load_spec(spec))
    started = []
    original = proof.BackgroundProofs._start
    monkeypatch.setattr(proof.BackgroundProofs, "_start", lambda self: started.append(1) or original(self))
    monkeypatch.setattr(proof, "_may_fork", lambda: True)
    together = derive_spec(softgrad.derive.load_spec(spec))
    assert started == [1]
    assert [(s.proved, s.proof_detail) for s in together.steps] == [(s.proved, s.proof_detail) for s in alone.steps]
    assert together.check_summary == alone.check_summary
    with pytest.raises(ChildProcessError):
        os.waitpid(-1, os.WNOHANG)


def test_a_background_prover_that_dies_is_replaced_by_proofs_in_process(monkeypatch):
    """Should the forked prover fail (killed, out of memory), the steps are proved here: no proof is lost."""
    from softgrad.derive.engine import derive_spec

    monkeypatch.setattr(proof, "_may_fork", lambda: True)
    original = proof.BackgroundProofs.results

    def killed_first(self):
        if self._child is not None:
            os.kill(self._child[0], signal.SIGKILL)
            os.waitpid(self._child[0], 0)
        return original(self)
    monkeypatch.setattr(proof.BackgroundProofs, "results", killed_first)
    derivation = derive_spec(softgrad.derive.load_spec("softmax"))
    assert all(step.proved for step in derivation.steps)


def test_a_fork_that_fails_leaves_the_proofs_to_this_process(monkeypatch):
    """No process to be had (a process limit): the derivation proves its steps itself, and says so nowhere."""
    from softgrad.derive.engine import derive_spec

    def refused():
        raise BlockingIOError(11, "Resource temporarily unavailable")
    monkeypatch.setattr(proof, "_may_fork", lambda: True)
    monkeypatch.setattr(os, "fork", refused)
    derivation = derive_spec(softgrad.derive.load_spec("softmax"))
    assert all(step.proved for step in derivation.steps)
