"""verify: check gradients (Python, C, or a formula) against finite differences and the exact result.

For test suites:

    from softgrad.verify import assert_gradient
    assert_gradient(my_softmax_backward, against="softmax", signature="x,g->dx")
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from softgrad.verify.report import Report

if TYPE_CHECKING:
    from softgrad.verify.problem import Problem


def check_gradient(function: Callable[..., Any], against: str | None = None, signature: str | None = None, *,
                   forward: Callable[..., Any] | None = None,
                   dtype: str = "float64", n: int = 7, batch: int = 4, seed: int = 0, reduction: str = "sum",
                   parameters: dict[str, Any] | None = None, wrt: str | None = None,
                   label: str | None = None, mode: str = "auto",
                   progress: Callable[[int, int, str], None] | None = None, sizes: str | None = None,
                   extremes: bool = True, targets: str | None = None,
                   layout: str = "classes-last", order: int = 1) -> Report:
    """The verify report for `function` against a spec (catalog name, spec text or .spec file) or a forward
    function.

    `function` may be a function, a (forward, backward) pair with a cache (several indices; the signature
    names both: "x,gamma,beta->out,cache; dout,cache->dx,dgamma,dbeta"), a layer class or instance with
    forward() and backward(), a
    torch.autograd.Function or nn.Module, or a jax.custom_vjp function (see adapters). reduction: sum,
    mean or none (one loss per row); targets: labels, onehot, soft or unnormalized (default: what the
    signature and the spec say); layout: classes-last or classes-first; extremes: False skips inputs of
    order 1000. progress(done, total, case), if given, is told of each input case as its check starts.
    For a spec with several indices, `signature` names the function's arrays ("X,W,bias,T->loss,dW,dbias"),
    `sizes` the ranges' sizes ("b=8,c=10"); the report is the same kind (schema softgrad.report/2).
    order=2: `function` is a loss's Hessian–vector product, signature "x,t,v->hv" (the spec's
    inputs and the vector; the product), checked against the derived one."""
    from softgrad.errors import SoftgradError
    from softgrad.verify.checker import verify
    from softgrad.verify.problem import Problem
    from softgrad.verify.second_order import second_order_signature
    from softgrad.verify.signatures import parse_signature

    shown: tuple[str, str] | None = None  # what the report names: the spec and signature as the user gave them
    matrix = False
    if order == 2:
        if against is None:
            raise SoftgradError("order=2 checks a Hessian–vector product against a spec: give against=SPEC")
        original, given_signature = against, signature or ""
        against, signature, vector_position = second_order_signature(against, signature, wrt)
        matrix = vector_position is not None
        shown = (f"{load_spec_name(original)}, second order ({'H' if matrix else 'H·v'})", given_signature)
        if vector_position is not None:  # the Hessian itself ('x,t->H'): checked through its products with vectors
            from softgrad.derive import load_spec
            from softgrad.verify.hessian_matrix import HessianAsProduct

            function = HessianAsProduct(function, vector_position, given_signature.replace(" ", "").rpartition("->")[2],
                                        by_rows=not load_spec(original).tensor)
    if against is not None:
        # several indices, a pair, a Hessian–vector product or a learnable scalar's gradient: checked by rows
        if checked_by_rows(None, against, signature, order):
            if targets is not None or layout != "classes-last" or reduction != "sum":
                raise SoftgradError("targets, layout and reduction apply to one-index specs; with several indices "
                                    "the signature names each array and the spec says its reduction")
            how = ""
            if isinstance(function, tuple):  # (forward, backward) with a cache between them: see verify.pairs
                from softgrad.verify.pairs import compose, parse_pair

                pair = parse_pair(signature or "")
                if pair is None or len(function) != 2:
                    raise SoftgradError("a (forward, backward) pair needs a signature 'FORWARD INPUTS->OUTPUTS; "
                                        "BACKWARD INPUTS->GRADIENTS'")
                from softgrad.verify.adapters import on_its_arrays

                function, how = on_its_arrays(compose(function[0], function[1], pair), list(function))
            else:
                from softgrad.verify.adapters import adapt_several
                from softgrad.verify.isolation import IsolatedFunction

                loaded = getattr(function, "function", function)  # a Hessian's C or Python, inside its wrapper
                if isinstance(loaded, IsolatedFunction):  # loaded (and adapted) in its child process
                    how = loaded.how
                elif signature is not None:  # framework code or a layer, passed in from Python: run in this process
                    adapted = adapt_several(function, signature, getattr(function, "__name__", "function"))
                    if adapted is not None:
                        function, how = adapted
            tensor_report = _check_arrays(function, against, signature, sizes, dtype, seed, parameters or {},
                                          extremes, label, mode)
            if shown is not None:  # the products and the vector under the user's names (hv, v), not the VJP's
                checked_names, given_names = (re.split(r"->|,", text.replace(" ", ""))
                                              for text in (signature or "", shown[1]))
                names = dict(zip(checked_names, given_names)) if len(checked_names) == len(given_names) else {}
                products = dict(zip((signature or "").replace(" ", "").rpartition("->")[2].split(","),
                                    shown[1].replace(" ", "").rpartition("->")[2].split(",")))
                if matrix and not tensor_report.passed:
                    line = _worst_hessian_entry(function, against, signature or "", tensor_report.sizes, seed,
                                                parameters or {})
                    if line is not None:
                        tensor_report.failures.insert(0, line)
                    products = {name: product + "·v" for name, product in products.items()}  # elements of H·v
                if tensor_report.worst is not None:
                    tensor_report.worst.array = products.get(tensor_report.worst.array, tensor_report.worst.array)
                for name, product in products.items():
                    tensor_report.hints = [hint.replace(f"{name} ", f"{product} ") for hint in tensor_report.hints]
                if not matrix:  # what the code did wrong (unwritten entries, writes outside), under its own names
                    tensor_report.failures = [re.sub(r"\b\w+\b", lambda word: names.get(word[0], word[0]), line)
                                              for line in tensor_report.failures]
                # the structural checks under the vector's name (H itself: the v it is checked with through H·v)
                vectors = set(checked_names) - set(given_names) if matrix else set()
                tensor_report.checks = [(re.sub(r"\b\w+\b", lambda word: "v" if word[0] in vectors else names.get(
                    word[0], word[0]), name), ok, detail) for name, ok, detail in tensor_report.checks]
                tensor_report.against, tensor_report.signature = shown
            if how:
                tensor_report.conventions.insert(0, how if how.startswith("called") else f"called as {how}")
            return tensor_report
    if (against is None) == (forward is None):
        raise SoftgradError("give either against=SPEC or forward=FUNCTION")
    if against is not None:
        problem = reference_problem(against, wrt, parameters or {})
        default = default_signature(problem)
    else:
        chosen = parse_signature(signature or "x,g->dx")
        is_loss = chosen.for_loss
        given_forward = forward
        assert given_forward is not None  # exactly one of against and forward was given
        problem = Problem(getattr(forward, "__name__", "forward"), is_loss,
                          (lambda x, t=None: np.asarray(given_forward(x, t) if is_loss else given_forward(x),
                                                        dtype=np.float64)),
                          {}, None, is_loss)
        default = chosen.text
    chosen = parse_signature(signature or default)
    if chosen.for_loss != problem.is_loss:
        kind = "a loss" if problem.is_loss else "a vector function"
        raise SoftgradError(f"signature {chosen.text} does not fit {kind} (e.g. {default_signature(problem)})")
    if chosen.has_targets and not problem.has_target and against is not None:
        raise SoftgradError(f"signature {chosen.text} takes targets, but {against} has none (e.g. "
                            f"{default_signature(problem)})")
    if n < 1 or batch < 1:
        raise SoftgradError("--n and --batch must be at least 1")
    if reduction not in ("sum", "mean", "none") or layout not in ("classes-last", "classes-first"):
        raise SoftgradError(f"reduction is sum, mean or none and layout classes-last or classes-first, not "
                            f"{reduction!r} and {layout!r}")
    from softgrad.verify.isolation import IsolatedFunction

    how = function.how if isinstance(function, IsolatedFunction) else ""
    name = label or str(getattr(function, "__name__", "function"))
    if not isinstance(function, IsolatedFunction):  # code passed in from Python: the same adapters as loading
        from softgrad.verify.adapters import adapt

        function, how = adapt(function, chosen, name)
    report = verify(function, chosen, problem, label=name, dtype=dtype, size=n, rows=batch, seed=seed,
                    reduction=reduction, against=against or "the forward function", mode=mode, progress=progress,
                    targets=targets, layout=layout, extremes=extremes)
    if how:
        report.conventions.insert(0, how)
    return report


def _check_arrays(function: Callable[..., Any], against: str, signature: str | None, sizes: str | None,
                  dtype: str, seed: int, parameters: dict[str, Any], extremes: bool,
                  label: str | None, mode: str = "auto") -> Report:
    from softgrad.derive import derive_spec, load_spec
    from softgrad.derive.spec import with_rows
    from softgrad.errors import SoftgradError
    from softgrad.verify.arrays import example_signature, parse_array_signature, parse_sizes, verify_arrays

    spec = with_rows(load_spec(against))  # a one-index spec with its row index written out: x[b, i]
    if signature is None:
        raise SoftgradError("a spec with several indices needs a signature naming the function's arrays, e.g. "
                            + example_signature(spec))
    outputs = signature.replace(" ", "").split("->")[-1].split(",")  # the gradients (a pair's: its backward's)
    wrt = ",".join(name[1:] for name in outputs if name.startswith("d") and (
        name[1:] in spec.inputs or name[1:] in spec.parameters)) or None  # dT: a learnable scalar
    derivation = derive_spec(spec, wrt=wrt)
    chosen = parse_array_signature(signature, derivation,
                                    [name for name, value in parameters.items() if isinstance(value, dict)])
    return verify_arrays(function, derivation, chosen, parse_sizes(sizes, derivation.spec),
                         label=label or str(getattr(function, "__name__", "function")), against=spec.name or against,
                         dtype=dtype, seed=seed, parameters=parameters, extremes=extremes, mode=mode)


def check_target(target: str, against: str | None, signature: str | None = None, *,
                 forward_reference: str | None = None, dtype: str = "float64", n: int = 7, batch: int = 4,
                 seed: int = 0, reduction: str = "sum", parameters: dict[str, Any] | None = None,
                 wrt: str | None = None, mode: str = "auto", progress: Callable[[int, int, str], None] | None = None,
                 targets: str | None = None, layout: str = "classes-last", extremes: bool = True,
                 sizes: str | None = None, order: int = 1, timeout: float | None = None) -> Report:
    """What `softgrad verify TARGET` runs, for every spec: the code TARGET names (FILE.py:FUNCTION, MODULE:FUNCTION,
    FILE.c:FUNCTION, LIB.so:FUNCTION; a function, a layer class, a framework's Function or module) loaded in a
    child process, then checked by check_gradient against a spec or a forward function (`forward_reference`,
    FILE:FUNCTION). Options as the command line names them; timeout: seconds one call may take."""
    from softgrad.budget import CALL_SECONDS
    from softgrad.errors import SoftgradError
    from softgrad.verify.loaders import load_function

    timeout = CALL_SECONDS if timeout is None else timeout
    if against is not None and forward_reference is None and checked_by_rows(target, against, signature, order):
        if targets is not None or layout != "classes-last" or reduction != "sum":
            raise SoftgradError("--targets, --layout and --reduction apply to one-index specs; with several indices "
                                "the signature names each array (labels are passed as integers) and the spec says "
                                "its reduction (a mean is '/ size(b)')")
        return _check_target_by_rows(target, against, signature, sizes, dtype, seed, parameters or {}, timeout,
                                     extremes, order, wrt, mode)
    if sizes is not None:
        raise SoftgradError("--size applies to specs with several indices; for one-index specs use --n and --batch")
    if (against is None) == (forward_reference is None):
        raise SoftgradError("give --against SPEC, or --fn FILE:FUNCTION for the forward function")
    from softgrad.verify.signatures import parse_signature

    default = signature or "x,g->dx"
    if against is not None:  # derived once (cached); a bad spec or parameter is reported before user code runs
        default = signature or default_signature(reference_problem(against, wrt, parameters or {}))
    chosen = parse_signature(default)
    function = load_function(target, chosen, dtype, timeout, layout=layout)
    forward = None
    try:
        if forward_reference:
            forward = load_function(forward_reference, chosen, "float64", timeout, role="the forward function")
        return check_gradient(function, against, chosen.text, forward=forward, dtype=dtype, n=n, batch=batch,
                              seed=seed, reduction=reduction, parameters=parameters, wrt=wrt, label=target, mode=mode,
                              progress=progress, targets=targets, layout=layout, extremes=extremes)
    finally:
        function.close()
        if forward is not None:
            forward.close()


def _check_target_by_rows(target: str, against: str, signature: str | None, sizes: str | None, dtype: str, seed: int,
                          parameters: dict[str, Any], timeout: float, extremes: bool, order: int, wrt: str | None,
                          mode: str) -> Report:
    """check_target for code checked by rows (named arrays, a pair, a Hessian–vector product, C with declared
    roles): loaded in its child process (C as projects write it through verify.c_conventions), then checked."""
    from softgrad.derive import load_spec
    from softgrad.errors import SoftgradError
    from softgrad.verify.c_conventions import is_c_target
    from softgrad.verify.loaders import load_function

    if signature is None and order == 2:
        raise SoftgradError("a Hessian–vector product needs --signature naming the inputs, the vector and the product, "
                            "e.g. --signature 'x,t,v->hv'")
    if signature is None:  # reported before any user code is loaded
        from softgrad.verify.arrays import example_signature

        raise SoftgradError(f"a spec with several indices needs --signature naming the function's inputs and outputs, "
                            f"e.g. --signature '{example_signature(load_spec(against))}'")
    checked_as = signature
    function: Any
    if is_c_target(target) and order == 1:  # C as projects write it: see verify.c_conventions
        from softgrad.verify.loaders import load_c_target

        function, checked_as, dtype = load_c_target(target, signature, against, sizes, dtype, timeout)
    elif is_c_target(target):  # C computing H·v: loaded as the gradient's VJP it is checked as
        from softgrad.verify.loaders import load_c_product

        function, checked_as, dtype = load_c_product(target, signature, against, sizes, dtype, timeout, wrt)
    else:
        function = load_function(target, signature, dtype, timeout)
    try:
        report = check_gradient(function, against, checked_as, dtype=dtype, seed=seed, parameters=parameters,
                                sizes=sizes, extremes=extremes, label=target, order=order,
                                wrt=wrt if order == 2 else None, mode=mode)
        report.signature = signature
        return report
    finally:
        function.close()


def checked_by_rows(target: str | None, against: str, signature: str | None, order: int = 1) -> bool:
    """Whether code is checked as several-index code is, by rows: a spec with several indices, a forward/backward
    pair, a Hessian–vector product, C with declared roles ('dx <- y,dy'), or a gradient of a scalar parameter
    (dT: the temperature made learnable)."""
    from softgrad.derive import load_spec
    from softgrad.verify.c_conventions import is_c_target

    text = (signature or "").replace(" ", "")
    spec = load_spec(against)
    returned = text.rpartition("->")[2].split(",") if "->" in text else []
    return (spec.tensor or ";" in text or order == 2
            or (target is not None and is_c_target(target) and any(mark in text for mark in ("<-", "+=", "[")))
            or any(name.startswith("d") and name[1:] in spec.parameters for name in returned))


def wrt_of(signature: str | None) -> str:
    """The input of a gradient signature's result: x of '…->dx'."""
    return (signature or "").replace(" ", "").rpartition("->")[2].removeprefix("d")


def load_spec_name(against: str) -> str:
    """How a report names a spec: its title, or the text as given."""
    from softgrad.derive import load_spec

    return load_spec(against).name or against


def _worst_hessian_entry(function: Any, against: str, signature: str, sizes: dict[str, int], seed: int,
                         parameters: dict[str, Any]) -> str | None:
    """The report line naming a hand-written Hessian's worst entry (see verify.hessian_matrix)."""
    from softgrad.derive import derive_spec, load_spec
    from softgrad.derive.spec import with_rows
    from softgrad.verify.hessian_matrix import worst_entry

    derivation = derive_spec(with_rows(load_spec(against)), wrt=wrt_of(signature))
    return worst_entry(function, derivation, sizes, seed, parameters)


def default_signature(problem: Problem) -> str:
    """The calling convention verify assumes when none is given: a VJP, or a loss's gradient."""
    if not problem.is_loss:
        return "x,g->dx"
    return "z,t->dz" if problem.has_target else "x->dx"


def reference_problem(against: str, wrt: str | None, parameters: dict[str, float]) -> Problem:
    """The reference a gradient is checked against: the spec's derivation and its generated kernels.
    Refuses parameters the spec does not have, and values that are not finite and positive."""
    import math

    from softgrad.errors import SoftgradError

    for name, value in parameters.items():
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise SoftgradError(f"parameter {name} must be a finite number > 0 (spec parameters are positive), "
                                f"not {value!r} (--param {name}=VALUE)")
    return _reference_problem(against, wrt, tuple(sorted((k, float(v)) for k, v in parameters.items())))


@functools.lru_cache(maxsize=32)
def _reference_problem(against: str, wrt: str | None, parameters: tuple[tuple[str, float], ...]) -> Problem:
    """The derivation and its generated reference kernels, made once per (spec, wrt, parameters)."""
    from softgrad.derive import derive_spec, load_spec
    from softgrad.errors import SoftgradError
    from softgrad.verify.problem import from_derivation

    spec = load_spec(against)
    if wrt is not None and spec.definition(wrt) is not None:  # an intermediate (--wrt p): the rest of the spec
        from softgrad.derive.spec import from_intermediate

        spec = from_intermediate(spec, wrt)
    derivation = derive_spec(spec, wrt=wrt)
    given = dict(parameters)
    unknown = [p for p in given if p not in derivation.spec.parameters]
    if unknown:
        known = ", ".join(derivation.spec.parameters) or "none"
        raise SoftgradError(f"the spec has no parameter {unknown[0]!r} (its parameters: {known})")
    missing = [p for p in derivation.spec.parameters if p not in given]
    if missing:
        raise SoftgradError(f"give a value for the parameter(s) {', '.join(missing)} (e.g. --param {missing[0]}=1.5)")
    return from_derivation(derivation, {name: float(given[name]) for name in derivation.spec.parameters})


def assert_gradient(function: Callable[..., Any], against: str | None = None, signature: str | None = None,
                    **options: Any) -> Report:
    """Raise AssertionError with the full report if `function` is not the gradient; return the report."""
    report = check_gradient(function, against, signature, **options)
    if not report.passed:
        raise AssertionError(report.text())
    return report


__all__ = ["assert_gradient", "check_gradient", "default_signature", "reference_problem"]
