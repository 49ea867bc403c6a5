"""What a gradient is checked against: a forward function, and where known, the exact derived result."""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from softgrad.codegen.build import import_path
from softgrad.codegen.emit import emit
from softgrad.codegen.lower.rows import identifier
from softgrad.derive.algebra import positive_inputs
from softgrad.derive.steps import Derivation
from softgrad.verify.signatures import Arrays, Signature


@dataclass
class Problem:
    """forward(x, t) → (rows, n) for a vector function or (rows,) for a loss; all float64.

    `exact` maps kernel names (vjp, vjp_from_output, jacobian, loss_and_grad) to the derivation's
    generated float64 kernels with the same calling convention as `forward`.
    """

    label: str
    is_loss: bool
    forward: Callable[..., Any]
    exact: dict[str, Callable[..., Any]] = field(default_factory=dict)
    constraint: float | None = None  # targets sum to this
    has_target: bool = False
    #: The input x is read under a log (probabilities, --wrt p): the checker draws it on the simplex.
    simplex: bool = False
    #: What the spec says of its targets' entries (`given t in {0, 1}`: "binary"; "unit", "positive"), if anything.
    target_fact: str | None = None
    #: What the spec says of the differentiated input's entries (`given 0 <= p <= 1`: "unit"), if anything.
    input_fact: str | None = None
    #: The derivation and parameter values, for the 40-digit reference where float64 overflows.
    derivation: Derivation | None = None
    parameters: dict[str, float] = field(default_factory=dict)

    @property
    def kinked(self) -> bool:
        """Whether the function may have kinks (|x|, max, min, sign, a step), where a finite difference that
        crosses one is no evidence: unknown without a spec, so assumed."""
        if self.derivation is None:
            return True
        import sympy as sp

        return any(d.expr.has(sp.Abs, sp.Max, sp.Min, sp.sign, sp.Heaviside) for d in self.derivation.spec.definitions)

    def high_precision(self, kernel: str, x: np.ndarray, t: np.ndarray | None,
                       g: np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The kernel's outputs from the derived formulas at 40 digits (see reference.exact_outputs), by the
        kernel's output names; {} without a derivation."""
        if self.derivation is None:
            return {}
        from softgrad.verify.reference import exact_outputs

        spec = self.derivation.spec
        arrays = {self.derivation.wrt: x}
        others = [name for name in spec.inputs if name != self.derivation.wrt]
        if others and t is not None:
            arrays[others[0]] = t
        if g is not None:  # the derivation's name for the upstream gradient
            arrays[str(self.derivation.results["vjp"].upstream)] = g
        return exact_outputs(self.derivation, kernel, arrays, self.parameters)


def from_derivation(derivation: Derivation, parameters: dict[str, float]) -> Problem:
    """The spec's own generated NumPy kernels (verified against a 40-digit reference) as the reference."""
    (name, text), = emit(derivation, "numpy").items()
    with tempfile.TemporaryDirectory(prefix="softgrad-reference-") as folder:
        path = Path(folder) / name
        path.write_text(text, encoding="utf-8")
        module = import_path(path)
    prefix = identifier(derivation)
    values = [parameters[p] for p in derivation.spec.parameters]
    others = [i for i in derivation.spec.inputs if i != derivation.wrt]
    has_target = bool(others)

    def bind(kernel: str) -> Callable[..., Any] | None:
        function = getattr(module, f"{prefix}_{kernel}", None)
        if function is None:
            return None
        return lambda *arrays: function(*arrays, *values)

    bound = {k: bind(k) for k in ("vjp", "vjp_from_output", "jacobian", "loss_and_grad")}
    exact = {k: function for k, function in bound.items() if function is not None}
    base = bind("forward")
    assert base is not None, "every derivation has a forward kernel"
    forward = base
    if not has_target:  # the checker always passes targets; a function without them ignores them

        def forward(x: np.ndarray, t: np.ndarray | None = None) -> Any:
            return base(x)
    spec = derivation.spec
    constraint = float(spec.constraints[0].rhs) if spec.constraints else None
    simplex = derivation.wrt in positive_inputs(spec.definitions, spec.inputs)
    return Problem(spec.name or spec.output.source, not spec.output.is_vector, forward, exact, constraint, has_target,
                   simplex, spec.facts.get(others[0]) if others else None, spec.facts.get(derivation.wrt), derivation,
                   dict(parameters))


def exact_gradient(signature: Signature, problem: Problem, arrays: Arrays) -> dict[str, np.ndarray]:
    """The signature's gradient (dx, or J) from the problem's exact reference kernels, by role ({} without one)."""
    x, t, g = arrays["x"], arrays["t"], arrays["g"]
    if not problem.exact:
        return {}
    if problem.is_loss:
        _, dx = problem.exact["loss_and_grad"](x, *([t] if t is not None else []))
        return {"dx": dx}
    if signature.returns == ("J",):
        return {"J": problem.exact["jacobian"](x)}
    return {"dx": problem.exact["vjp"](x, *([t] if problem.has_target else []), g)}
