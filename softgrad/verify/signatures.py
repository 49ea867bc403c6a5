"""Calling conventions of gradients under test, and the reference problem they are checked against."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from softgrad.errors import SoftgradError


@dataclass(frozen=True)
class Signature:
    """What the function under test takes and returns, row-wise on (rows, n) arrays.

    Roles: x (the differentiated input: logits), g (upstream gradient of a vector function),
    y (saved output of the forward), t (targets of a loss); outputs dx (gradient), loss, J (Jacobian).
    """

    text: str
    takes: tuple[str, ...]
    returns: tuple[str, ...]

    @property
    def for_loss(self) -> bool:
        return "t" in self.takes

    @property
    def single_row(self) -> bool:
        return self.returns == ("J",)


SIGNATURES = {
    "x,g->dx": Signature("x,g->dx", ("x", "g"), ("dx",)),
    "y,g->dx": Signature("y,g->dx", ("y", "g"), ("dx",)),
    "z,t->dz": Signature("z,t->dz", ("x", "t"), ("dx",)),
    "z,t->loss,dz": Signature("z,t->loss,dz", ("x", "t"), ("loss", "dx")),
    "x->J": Signature("x->J", ("x",), ("J",)),
}


def parse_signature(text: str) -> Signature:
    key = text.replace(" ", "")
    if key not in SIGNATURES:
        hint = ""
        if key.endswith("-"):  # `--signature z,t->dz` unquoted: the shell took `>dz` as a redirection
            hint = "; quote it, e.g. --signature 'z,t->dz' (the shell reads > as a redirection)"
        raise SoftgradError(f"unknown signature {text!r} (known: {', '.join(SIGNATURES)}){hint}")
    return SIGNATURES[key]


def call_under_test(function, signature: Signature, arrays: dict[str, np.ndarray], dtype):
    """Call the function under test with the signature's arguments; return its outputs as float64 arrays.

    Raises SoftgradError for anything that is the function's fault (it raised, wrong count or shape, NaN).
    """
    arguments = [arrays[role].astype(dtype) for role in signature.takes]
    try:
        if signature.single_row:
            result = np.stack([np.asarray(function(row)) for row in arguments[0]])
            outputs = (result,)
        else:
            result = function(*arguments)
            outputs = result if isinstance(result, tuple) else (result,)
    except SoftgradError:
        raise
    except Exception as problem:  # the user's code failed: report its own last line
        raise SoftgradError(f"the function under test raised {type(problem).__name__}: {problem}") from None
    if len(outputs) != len(signature.returns):
        raise SoftgradError(f"the function returned {len(outputs)} value(s); signature {signature.text} "
                            f"expects {len(signature.returns)}")
    checked = []
    rows, size = arrays["x"].shape
    for role, value in zip(signature.returns, outputs):
        value = np.asarray(value, dtype=np.float64)
        expected = {"dx": (rows, size), "loss": (rows,), "J": (rows, size, size)}[role]
        if value.shape != expected:
            raise SoftgradError(f"the function's {role} has shape {value.shape}, expected {expected}")
        if not np.isfinite(value).all():
            raise SoftgradError(f"the function's {role} contains NaN or inf for finite inputs")
        checked.append(value)
    return checked
