"""How each array library spells what the array lowering prints: NumPy, PyTorch and jax.numpy.

The lowering (softgrad.codegen.backends.numpy.arrays) decides *what* to compute — which sums are matrix
products, where a row maximum shifts an exponent, which axes a value has; a dialect only says how one
library writes it (`axis=` or `dim=`, `np.max` or `torch.amax`, in place or not). One lowering, three
targets, as SymForce prints one expression graph in several languages.
"""

from __future__ import annotations

from dataclasses import dataclass

import sympy as sp
from sympy.codegen.cfunctions import log1p

from softgrad.derive.symbols import sigmoid, softplus

__all__ = ["DIALECTS", "JAX", "NUMPY", "TORCH", "ArrayDialect"]


@dataclass(frozen=True)
class ArrayDialect:
    """The spelling of one array library. Printed code reads `_dtype` (the float type of the call) and,
    for torch, `_device` (where its tensors live)."""

    name: str
    functions: dict[type, str]  # SymPy function → the library's entrywise function
    scalar_functions: dict[type, str]  # for a Python float (a spec parameter); empty: the entrywise ones
    sqrt: str
    scalar_sqrt: str
    reduce_max: str  # the maximum over axes
    axis: str  # the keyword naming axes: axis or dim
    keepdims: str
    transpose: str  # a permutation of axes
    index_cast: str  # suffix turning an integer array into one that indexes
    float_cast: str  # suffix turning a boolean array into `_dtype`
    copy: str  # suffix giving an array its own memory (after a broadcast)
    array: str  # format: code → an array of `_dtype`
    arange: str  # format: size → 0, 1, …, size − 1
    #: whether `x /= s` and out= update an array in place (jax arrays are immutable)
    in_place: bool
    #: whether einsum takes optimize=True (NumPy's default einsum does not call BLAS)
    einsum_optimize: bool
    #: whether a new array is updated by method chains (`(a * b).sub_(c)`) instead of allocating another
    chain_in_place: bool = False
    equal: str = "equal"  # entrywise equality (torch.equal is one bool: torch's is eq)
    power: str = "power"

    def in_place_method(self, function: str) -> str | None:
        """The method that applies a namespace function to a new array in place (torch.exp → exp_), if any."""
        prefix = f"{self.namespace}."
        if not self.chain_in_place or not function.startswith(prefix) or "." in function[len(prefix):]:
            return None
        return function[len(prefix):] + "_"

    @property
    def namespace(self) -> str:
        return {"numpy": "np", "torch": "torch", "jax": "jnp"}[self.name]

    def call(self, function: str, *arguments: str) -> str:
        return f"{self.namespace}.{function}({', '.join(arguments)})"

    def total(self, code: str, axes: tuple[int, ...], keepdims: bool = False) -> str:
        """Σ over axes."""
        return self._over(f"{self.namespace}.sum", code, axes, keepdims)

    def maximum_over(self, code: str, axes: tuple[int, ...], keepdims: bool = False) -> str:
        """max over axes."""
        return self._over(self.reduce_max, code, axes, keepdims)

    def squeeze(self, code: str, axes: tuple[int, ...]) -> str:
        return self._over(f"{self.namespace}.squeeze", code, axes, False)

    def _over(self, function: str, code: str, axes: tuple[int, ...], keepdims: bool) -> str:
        axis = axes if len(axes) > 1 else axes[0]
        return f"{function}({code}, {self.axis}={axis}{f', {self.keepdims}=True' if keepdims else ''})"

    def extreme(self, largest: bool, first: tuple[str, bool], second: tuple[str, bool]) -> str:
        """max(a, b) or min(a, b) entrywise; each operand (code, whether it is an array)."""
        if self.name == "torch" and not (first[1] and second[1]):  # torch.maximum takes two tensors
            array, scalar = (first[0], second[0]) if first[1] else (second[0], first[0])
            return f"torch.clamp({array}, {'min' if largest else 'max'}={scalar})"
        return self.call("maximum" if largest else "minimum", first[0], second[0])

    def heaviside(self, code: str) -> str:
        """H(u) with H(0) = 1/2."""
        if self.name == "torch":
            return f"torch.heaviside({code}, torch.full_like({code}, 0.5))"
        return self.call("heaviside", code, "0.5")

    def normalised(self, name: str, axis: int) -> list[str] | None:
        """P = exp(E)/Σ exp(E) and its log from `_exponent` by the library's own fused softmax (a shift by the
        row maximum inside), or None where the lowering writes the passes out (NumPy has no softmax)."""
        if self.name == "torch":
            return [f"{name} = torch.softmax(_exponent, dim={axis})",
                    f"_log_{name} = torch.log_softmax(_exponent, dim={axis})"]
        if self.name == "jax":
            return [f"{name} = jax.nn.softmax(_exponent, axis={axis})",
                    f"_log_{name} = jax.nn.log_softmax(_exponent, axis={axis})"]
        return None

    def softmax_backward(self, upstream: str, output: str, axis: int, log: bool) -> str | None:
        """y·(g − Σ g·y) over `axis` (log: g − exp(y)·Σ g) by the library's fused kernel for a softmax's (a
        log-softmax's) backward, one pass instead of four; None where the lowering writes the passes out."""
        if self.name == "torch":
            function = "_log_softmax_backward_data" if log else "_softmax_backward_data"
            return f"(torch.{function}({upstream}, {output}, {axis}, {upstream}.dtype))"
        return None

    def log_softmax(self, code: str, axis: int) -> str | None:
        """x − log Σ exp(x) over `axis` by the library's fused log-softmax (shifted by the row maximum inside), or
        None where the lowering writes the passes out."""
        if self.name == "torch":
            return f"(torch.log_softmax({code}, dim={axis}))"
        if self.name == "jax":
            return f"jax.nn.log_softmax({code}, axis={axis})"
        return None

    def unless_nan(self, plain: str, guarded: str) -> str | None:
        """`plain` (a sum of products t·f), or `guarded` (the same sum never forming 0·inf) where plain holds a NaN:
        torch eager then skips the comparison and selection of the guard (two passes over the arrays) whenever no
        weight of 0 meets an infinite factor; None where the guard is always printed (NumPy, jax.jit: fused)."""
        if self.name == "torch":
            return f"_unless_nan({plain}, lambda: {guarded})"
        return None

    def softmax(self, code: str, axis: int) -> str | None:
        """exp of a log-softmax over `axis`, made beside it by the forward where a backward reads exp y: jax.jit
        computes the shifted exponentials once for both (XLA merges the same operations), where exp(y) in the
        backward would compute them again; None elsewhere (torch's fused backward takes y itself)."""
        if self.name == "jax":
            return f"jax.nn.softmax({code}, axis={axis})"
        return None

    def window(self, code: str, spans: str) -> str | None:
        """An array read at shifted positions u ± v + c as sliding windows (the template's _window: NumPy's
        sliding_window_view, torch's unfold), or None where the lowering gathers the entries by index arrays
        (JAX: no views)."""
        if self.name in ("numpy", "torch"):
            return f"_window({code}, {spans})"
        return None

    def where(self, condition: str, then: str, otherwise: str) -> str:
        return self.call("where", condition, then, otherwise)


_ENTRYWISE = {sp.exp: "exp", sp.log: "log", sp.tanh: "tanh", sp.Abs: "abs", log1p: "log1p", sp.sign: "sign"}

NUMPY = ArrayDialect(
    "numpy", {**{f: f"np.{n}" for f, n in _ENTRYWISE.items()}, sigmoid: "_sigmoid", softplus: "_softplus",
              sp.erf: "_erf"},
    {sp.exp: "math.exp", sp.log: "math.log", sp.tanh: "math.tanh", log1p: "math.log1p", sp.erf: "math.erf"},
    sqrt="np.sqrt", scalar_sqrt="math.sqrt", reduce_max="np.max", axis="axis", keepdims="keepdims",
    transpose="np.transpose", index_cast=".astype(np.intp)", float_cast=".astype(_dtype)", copy=".copy()",
    array="np.asarray({}, dtype=_dtype)", arange="np.arange({})", in_place=True, einsum_optimize=True)

TORCH = ArrayDialect(
    "torch", {**{f: f"torch.{n}" for f, n in _ENTRYWISE.items()}, sigmoid: "torch.sigmoid",
              softplus: "_softplus", sp.erf: "torch.special.erf"},
    # a spec parameter is a Python float in the torch modules: math keeps it one
    {sp.exp: "math.exp", sp.log: "math.log", sp.tanh: "math.tanh", log1p: "math.log1p", sp.erf: "math.erf"},
    sqrt="torch.sqrt", scalar_sqrt="math.sqrt", reduce_max="torch.amax", axis="dim", keepdims="keepdim",
    transpose="torch.permute", index_cast=".long()", float_cast=".to(_dtype)", copy=".clone()",
    array="torch.as_tensor({}, dtype=_dtype, device=_device)", arange="torch.arange({}, device=_device)",
    in_place=True, einsum_optimize=False, chain_in_place=True, equal="eq", power="pow")

JAX = ArrayDialect(
    "jax", {**{f: f"jnp.{n}" for f, n in _ENTRYWISE.items()}, sigmoid: "jax.nn.sigmoid",
            softplus: "jax.nn.softplus", sp.erf: "jax.scipy.special.erf"},
    {},  # a spec parameter may be traced under jit: jnp functions take it as they take arrays
    sqrt="jnp.sqrt", scalar_sqrt="jnp.sqrt", reduce_max="jnp.max", axis="axis", keepdims="keepdims",
    transpose="jnp.transpose", index_cast=".astype(jnp.int32)", float_cast=".astype(_dtype)", copy="",
    array="jnp.asarray({}, dtype=_dtype)", arange="jnp.arange({})", in_place=False, einsum_optimize=False)

DIALECTS = {dialect.name: dialect for dialect in (NUMPY, TORCH, JAX)}
