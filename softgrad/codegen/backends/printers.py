"""lower → emit: SymPy's NumPy and C99 printers, taught the kernel's vocabulary.

Vector entries print as array reads (`x` in NumPy, `_row_x[_i]` in C: names the generator introduces
begin with '_', which spec names cannot), reductions as their per-row
scalars, and the few functions SymPy has no stable spelling for (σ, softplus, the guarded product)
as overflow-free forms.
"""

from __future__ import annotations

from typing import Any

import sympy as sp
from sympy.codegen.ast import float32, float64, real
from sympy.codegen.rewriting import create_expand_pow_optimization, optimize
from sympy.printing.c import C99CodePrinter
from sympy.printing.numpy import NumPyPrinter

from softgrad.codegen.lower.kernel import COLUMN, LOOP, softplus
from softgrad.derive.symbols import n

# any base, not only symbols: (x − t)² is (x − t)·(x − t), which the compiler computes once, never pow()
_expand_small_powers = create_expand_pow_optimization(4, base_req=lambda base: True)


def prepare(expr: sp.Expr) -> sp.Expr:
    """u**2 → u*u (small integer powers are cheaper and as exact multiplied out, whatever u is)."""
    return optimize(expr, [_expand_small_powers])


class NumpyKernelPrinter(NumPyPrinter):
    """NumPy expressions over whole rows: an entry x_i is the array x (broadcast along the last axis)."""

    def __init__(self, matrix: bool = False):
        super().__init__({"fully_qualified_modules": False, "allow_unknown_functions": False})
        self.matrix = matrix
        self.reduction_names: set[str] = set()

    def _print_Indexed(self, expr: Any) -> Any:
        name = str(expr.base)
        if not self.matrix:
            return name
        return f"{name}[..., :, None]" if expr.indices[0] == LOOP else f"{name}[..., None, :]"

    def _print_Symbol(self, expr: Any) -> Any:
        name = super()._print_Symbol(expr)
        if self.matrix and name in self.reduction_names:
            return f"{name}[..., None]"
        return name

    def _print_KroneckerDelta(self, expr: Any) -> Any:
        return "_identity"

    def _print_guarded_product(self, expr: Any) -> Any:
        weight, factor = (self._print(a) for a in expr.args)
        return f"np.where({weight} == 0, 0, {weight} * ({factor}))"

    def _print_softplus(self, expr: Any) -> Any:
        return f"np.logaddexp(0, {self._print(expr.args[0])})"

    def _print_sigmoid(self, expr: Any) -> Any:
        return f"_sigmoid({self._print(expr.args[0])})"

    def _print_erf(self, expr: Any) -> Any:
        return f"_erf({self._print(expr.args[0])})"

    def _print_Heaviside(self, expr: Any) -> Any:
        return f"np.heaviside({self._print(expr.args[0])}, {self._print(expr.args[1])})"

    def _nested(self, function: str, arguments: Any) -> str:
        printed = str(self._print(arguments[-1]))
        for argument in reversed(arguments[:-1]):
            printed = f"{function}({self._print(argument)}, {printed})"
        return printed

    def _print_Max(self, expr: Any) -> Any:
        return self._nested("np.maximum", expr.args)

    def _print_Min(self, expr: Any) -> Any:
        return self._nested("np.minimum", expr.args)

    def _module_format(self, fqn: str, register: bool = True) -> str:
        # `numpy.exp` → `np.exp`: the generated module imports numpy as np
        return "np." + fqn.split(".", 1)[1] if fqn.startswith("numpy.") else super()._module_format(fqn, register)


class CKernelPrinter(C99CodePrinter):
    """C99 for one row: an entry x_i is x_row[i]; float32 kernels use the f-suffixed functions, and loop
    bodies (vector_exp) softgrad's vectorizable exp, log, log1p, expm1, tanh, erf and σ."""

    def __init__(self, dtype: str = "float64", vector_exp: bool = False):
        settings = {"type_aliases": {real: float32 if dtype == "float32" else float64}}
        super().__init__(settings)
        self.suffix = "f" if dtype == "float32" else ""
        self.vector_exp = vector_exp  # loop bodies call softgrad_exp, which vectorizes; per-row code calls libm
        self.math_macros: dict[Any, str] = {}  # constants as numbers: M_SQRT1_2 and friends are not ISO C

    def _vector_call(self, expr: Any, name: str) -> Any:
        """softgrad's branch-free version of a libm function inside loops (it vectorizes); libm elsewhere."""
        if not self.vector_exp:
            return getattr(super(), f"_print_{name}")(expr)
        return f"softgrad_{name}{self.suffix}({self._print(expr.args[0])})"

    def _print_exp(self, expr: Any) -> Any:
        return self._vector_call(expr, "exp")

    def _print_log(self, expr: Any) -> Any:
        if len(expr.args) != 1:  # log(x, base) never reaches here: SymPy writes it as a quotient of logs
            return super()._print_log(expr)
        return self._vector_call(expr, "log")

    def _print_log1p(self, expr: Any) -> Any:
        return self._vector_call(expr, "log1p")

    def _print_expm1(self, expr: Any) -> Any:
        return self._vector_call(expr, "expm1")

    def _print_erf(self, expr: Any) -> Any:
        return self._vector_call(expr, "erf")

    def _print_tanh(self, expr: Any) -> Any:
        if self.vector_exp and isinstance(expr.args[0], softplus):  # Mish: one exp instead of three calls
            return f"softgrad_tanh_softplus{self.suffix}({self._print(expr.args[0].args[0])})"
        return self._vector_call(expr, "tanh")

    #: x^(k + ½) as multiplies and one sqrt up to this |exponent| (two roundings and sqrt's: within 2 ulp)
    HALF_POWERS_UP_TO = sp.Rational(5, 2)

    def _print_Pow(self, expr: Any) -> Any:
        """Inside loops: x^(±½) and x^−1 as libm's sqrt and a division, x^(k + ½) as multiplies and a sqrt,
        and every other exponent (a runtime one, or an integer beyond what prepare() multiplies out) by
        softgrad_pow, which vectorizes; per-row code keeps libm's pow."""
        if not self.vector_exp:
            return super()._print_Pow(expr)
        exponent = expr.exp
        value = sp.Rational(float(exponent)) if exponent.is_Float else exponent
        if value.is_Rational and value in (sp.S.Half, -sp.S.Half, sp.S.NegativeOne):
            return super()._print_Pow(sp.Pow(expr.base, value, evaluate=False))
        if value.is_Rational and value.q == 2 and abs(value) <= self.HALF_POWERS_UP_TO:
            base = self.parenthesize(expr.base, 60)
            product = "*".join([base] * (abs(value.p) // 2) + [f"sqrt{self.suffix}({self._print(expr.base)})"])
            return product if value > 0 else f"1.0{self.suffix and 'f'}/({product})"
        return f"softgrad_pow{self.suffix}({self._print(expr.base)}, {self._print(exponent)})"

    def _print_Indexed(self, expr: Any) -> Any:
        position = "_i" if expr.indices[0] == LOOP else "_j"
        return f"_row_{expr.base}[{position}]"

    def _print_KroneckerDelta(self, expr: Any) -> Any:
        return "(_i == _j)"

    def _print_guarded_product(self, expr: Any) -> Any:
        weight, factor = (self._print(a) for a in expr.args)
        return f"softgrad_guarded{self.suffix}({weight}, {factor})"

    def _print_softplus(self, expr: Any) -> Any:
        return f"softgrad_softplus{self.suffix}({self._print(expr.args[0])})"

    def _print_power_of(self, expr: Any) -> Any:
        """base^k multiplied out (|k| ≤ 4): the base is a CSE temporary or a call the compiler computes once."""
        base, power = self.parenthesize(expr.args[0], 60), int(expr.args[1])
        product = "*".join([base] * abs(power))
        return product if power > 0 else f"1.0{self.suffix and 'f'}/({product})"

    def _print_sigmoid(self, expr: Any) -> Any:
        return f"softgrad_sigmoid{self.suffix}({self._print(expr.args[0])})"

    def _print_power_from(self, expr: Any) -> Any:
        """b^(e + k) as b^e·b^k (k > 0) or b^e/b^|k|, and its per-row value where b = 0."""
        base, lower, at_zero = (self._print(a) for a in (expr.args[0], expr.args[1], expr.args[3]))
        steps = int(expr.args[2])
        factor = "*".join([f"({base})"] * abs(steps))
        product = f"({lower})*{factor}" if steps > 0 else f"({lower})/({factor})"
        return f"softgrad_select{self.suffix}(({base}) == 0, {at_zero}, {product})"

    def _print_NumberSymbol(self, expr: Any) -> Any:
        return str(self._print(sp.Float(expr, 17)))  # π as a number: no declaration the printer would add

    _print_Pi = _print_Exp1 = _print_NumberSymbol

    def _print_Heaviside(self, expr: Any) -> Any:
        """H(u) without a branch: (u > 0) + ½ (u == 0), in the kernel's floating type."""
        u = self._print(expr.args[0])
        real = "float" if self.suffix else "double"
        return f"(({real})({u} > 0) + ({real})0.5 * ({real})({u} == 0))"

    def _print_sign(self, expr: Any) -> Any:
        u = self._print(expr.args[0])
        real = "float" if self.suffix else "double"
        return f"(({real})({u} > 0) - ({real})({u} < 0))"


def assert_printable(expr: sp.Expr) -> None:
    """Indices other than the loop indices would print as nonsense: refuse them early."""
    stray = {s for s in expr.free_symbols if s.is_integer and s not in (LOOP, COLUMN, n)}
    if stray:
        raise ValueError(f"expression still has free indices {stray}: {expr}")
