"""A per-row kernel: what the emitters print. Reductions over the class axis, then elementwise outputs.

Expressions inside a kernel use one loop index `LOOP` for vector entries (two, `LOOP` and `COLUMN`, in
an explicit Jacobian); reductions are plain scalar symbols computed once per row.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import sympy as sp

from softgrad.derive.symbols import index, softplus

__all__ = ["COLUMN", "LOOP", "Kernel", "Output", "Reduction", "guarded_product", "power_from", "power_of", "softplus"]

LOOP = index("i")
COLUMN = index("j")


class guarded_product(sp.Function):
    """a·b, but 0 where a = 0 even if b is ±inf (0·log 0 = 0, as in xlogy): masked classes stay finite."""

    nargs = 2


class power_of(sp.Function):
    """base^k for a small integer k, kept as it is (SymPy would turn exp(u)^2 back into exp(2u)): the C
    printer multiplies it out, so exp(2u) costs one exponential where exp(u) is computed anyway."""

    nargs = 2


class power_from(sp.Function):
    """b^(e + k) for a small integer k ≠ 0, computed from b^e (which the same pass computes) as b^e·b^k, and
    at b = 0, where b^e may be infinite, as `at_zero` (a per-row value such as 0^γ): args (b, b^e, k,
    at_zero). One pow per entry where a pass needs both, as focal loss's (1 − p)^γ and (1 − p)^(γ−1)."""

    nargs = 4


@dataclass
class Reduction:
    """symbol = op over the loop index of body (op: 'sum' or 'max')."""

    symbol: sp.Symbol
    op: str
    body: sp.Expr


@dataclass
class Output:
    """An output array (vector: one entry per loop index; scalar: one per row; matrix: n × n per row)."""

    name: str
    shape: str  # "vector" | "scalar" | "matrix"
    expr: sp.Expr
    doc: str
    role: str = "value"  # "gradient" for the gradient of the differentiated input (VJPs, loss gradients)


@dataclass
class Kernel:
    name: str
    kind: str  # forward | vjp | vjp_from_output | jacobian | loss_and_grad
    doc: str
    inputs: list[tuple[str, str]]  # (array name, what it is)
    parameters: list[str]
    reductions: list[Reduction]
    outputs: list[Output]
    upstream: str | None = None  # the input that is the upstream gradient (VJP kernels)
    steps_per_row: str = "O(n)"
    #: printed name → what the derivation calls it (a spec name, d<wrt> or J), for inputs and outputs
    origin: dict[str, str] = field(default_factory=dict)

    @property
    def explicit_jacobian(self) -> bool:
        """The output is an (n, n) matrix per row: a double loop over (i, j), for small n."""
        return any(o.shape == "matrix" for o in self.outputs)

    def levels(self) -> list[list[Reduction]]:
        """Reductions grouped so that each group needs only earlier groups: one loop per group."""
        remaining = list(self.reductions)
        groups = []
        while remaining:
            ready = [r for r in remaining if not (r.body.free_symbols & {q.symbol for q in remaining})]
            if not ready:
                raise ValueError("reductions depend on each other in a cycle")
            groups.append(ready)
            remaining = [r for r in remaining if r not in ready]
        return groups
