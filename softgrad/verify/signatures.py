"""Calling conventions of gradients under test, and the reference problem they are checked against."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from softgrad.errors import SoftgradError

#: The arrays of one check, by role: x (the differentiated input), t (targets or None), g (upstream), y.
Arrays = dict[str, Any]


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


def describe_failure(problem: BaseException) -> str:
    """What the user's code did, in a few words: 'called sys.exit(0)' or 'raised ValueError: <its last line>'."""
    if isinstance(problem, SystemExit):
        return f"called sys.exit({problem.code!r})"
    last = str(problem).strip().splitlines()
    return f"raised {type(problem).__name__}" + (f": {last[-1]}" if last else "")


class WrongOutput(Exception):
    """The function ran, but what it did cannot be a correct gradient (NaN or inf for finite inputs,
    complex or integer values, lower precision than asked for, inputs changed in place): a FAIL."""


def call_under_test(function: Callable[..., Any], signature: Signature, arrays: Arrays,
                    dtype: Any) -> list[np.ndarray]:
    """Call the function under test with the signature's arguments; return its outputs as float64 arrays.

    Raises SoftgradError for what makes the check impossible (it raised, exited, crashed, timed out, or
    returned the wrong number or shape of values) and WrongOutput for a result that is wrong by itself.
    `function` is an IsolatedFunction (code run in a child process) or any callable (run here).
    """
    from softgrad.verify.isolation import IsolatedFunction, NotAnArray

    arguments = [arrays[role].astype(dtype) for role in signature.takes]
    in_process = not isinstance(function, IsolatedFunction)  # a child compares its inputs itself
    originals = [a.copy() for a in arguments] if in_process else []
    mutated: set[int] = set()
    try:
        if signature.single_row:
            results = []
            for row in arguments[0]:
                results.append(function(row))
                mutated |= set(getattr(function, "mutated", []) if isinstance(function, IsolatedFunction) else [])
            if any(isinstance(r, NotAnArray) for r in results):
                raise SoftgradError(f"the function returned {next(r for r in results if isinstance(r, NotAnArray))}, "
                                    "not an array")
            outputs = (np.stack([np.asarray(r) for r in results]),)
        else:
            result = function(*arguments)
            outputs = result if isinstance(result, tuple) else (result,)
            if isinstance(function, IsolatedFunction):
                mutated |= set(function.mutated)
    except SoftgradError:
        raise
    except KeyboardInterrupt:
        raise
    except BaseException as problem:  # the user's code failed (or exited): report its own last line
        raise SoftgradError(f"the function under test {describe_failure(problem)}") from None
    if in_process:
        mutated |= {k for k, (a, b) in enumerate(zip(originals, arguments)) if not np.array_equal(a, b, equal_nan=True)}
    if len(outputs) != len(signature.returns):
        raise SoftgradError(f"the function returned {len(outputs)} value(s); signature {signature.text} "
                            f"expects {len(signature.returns)}")
    if mutated:
        names = ", ".join(signature.takes[k] for k in sorted(mutated))
        raise WrongOutput(f"the function changed its input {names} in place (a caller's array would be corrupted)")
    checked = []
    rows, size = arrays["x"].shape
    for role, value in zip(signature.returns, outputs):
        if isinstance(value, NotAnArray):
            raise SoftgradError(f"the function's {role} is {value}, not an array")
        try:
            value = np.asarray(value)
        except Exception:
            raise SoftgradError(f"the function's {role} is a {type(value).__name__}, not an array") from None
        expected = {"dx": (rows, size), "loss": (rows,), "J": (rows, size, size)}[role]
        if value.dtype.hasobject or value.dtype.kind not in "biufc":
            raise SoftgradError(f"the function's {role} has dtype {value.dtype}, not a floating array")
        if value.shape != expected:
            raise SoftgradError(f"the function's {role} has shape {value.shape}, expected {expected}")
        if value.dtype.kind == "c":
            raise WrongOutput(f"the function's {role} is complex ({value.dtype}); a real function's gradient is real")
        if value.dtype.kind != "f":
            raise WrongOutput(f"the function's {role} has dtype {value.dtype}; a gradient needs floating values")
        if value.dtype.itemsize < np.dtype(dtype).itemsize:
            raise WrongOutput(f"the function's {role} is {value.dtype} for {np.dtype(dtype)} inputs (precision lost)")
        value = value.astype(np.float64)
        if not np.isfinite(value).all():
            where = tuple(int(i) for i in np.argwhere(~np.isfinite(value))[0])
            raise WrongOutput(f"the function's {role} is {value[where]} at {where} for finite inputs")
        checked.append(value)
    return checked
