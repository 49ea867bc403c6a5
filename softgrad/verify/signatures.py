"""Calling conventions of gradients under test, and the reference problem they are checked against."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from softgrad.errors import SoftgradError

#: The arrays of one check, by role: x (the differentiated input), t (targets or None), g (upstream), y.
Arrays = dict[str, Any]


#: Argument names read as each role (any order); the differentiated input is the one named by a
#: returned d<name>, or one of INPUT_NAMES.
ROLE_NAMES = {
    "g": ("g", "dy", "dout", "grad_output", "upstream", "dl_dy"),
    "y": ("y", "out", "output"),
    "t": ("t", "target", "targets", "q", "onehot", "soft"),
    "label": ("label", "labels", "classes", "class_index"),
}
INPUT_NAMES = ("x", "z", "logits", "scores", "a", "p", "probs", "inputs")
LOSS_NAMES = ("loss", "l", "value", "cost")
JACOBIAN_NAMES = ("j", "jacobian")


@dataclass(frozen=True)
class Signature:
    """What the function under test takes and returns, row-wise on (rows, n) arrays, in its own order.

    Roles: x (the differentiated input: logits, or probabilities with --wrt p), g (upstream gradient of a
    vector function), y (saved output of the forward), t (targets of a loss), label (integer class
    indices, one per row); outputs dx (gradient), loss, J (Jacobian of one row).
    """

    text: str
    takes: tuple[str, ...]
    returns: tuple[str, ...]

    @property
    def for_loss(self) -> bool:
        """A loss's gradient: no upstream gradient and no Jacobian (z,t->dz, z,label->loss,dz, x->dx)."""
        return "g" not in self.takes and "J" not in self.returns

    @property
    def single_row(self) -> bool:
        return self.returns == ("J",)

    @property
    def input_names(self) -> tuple[str, ...]:
        """The inputs as the signature names them (z, labels, dout), in order."""
        return tuple(self.text.split("->", 1)[0].split(","))

    def name_of(self, role: str) -> str:
        """The output with this role (dx, J, loss) as the signature names it (dz, grad, jacobian)."""
        names = dict(zip(self.returns, self.text.split("->", 1)[1].split(",")))
        return names.get(role, role)

    @property
    def has_targets(self) -> bool:
        return "t" in self.takes or "label" in self.takes


def parse_signature(text: str) -> Signature:
    """Read a calling convention such as 'z,t->loss,dz', 'z,labels->dz,loss' or 'y,dout->dx' (names in the
    code's own order; see ROLE_NAMES)."""
    key = text.replace(" ", "")
    if "->" not in key:
        hint = ""
        if key.endswith("-"):  # `--signature z,t->dz` unquoted: the shell took `>dz` as a redirection
            hint = "; quote it, e.g. --signature 'z,t->dz' (the shell reads > as a redirection)"
        raise SoftgradError(f"a signature reads INPUTS->OUTPUTS, e.g. 'z,t->dz' or 'x,g->dx', not {text!r}{hint}")
    left, right = key.split("->", 1)
    inputs, outputs = left.split(","), right.split(",")
    if not all(name.isidentifier() for name in inputs + outputs):
        raise SoftgradError(f"a signature names its arrays with identifiers separated by commas, not {text!r}")
    gradient_names = {name[1:].lower() for name in outputs if name.lower().startswith("d") and len(name) > 1}
    takes = []
    for name in inputs:
        lowered = name.lower()
        role = "x" if lowered in gradient_names else next(
            (r for r, names in ROLE_NAMES.items() if lowered in names), "x" if lowered in INPUT_NAMES else None)
        if role is None:
            raise SoftgradError(f"unknown signature {text!r}: cannot tell what {name!r} is; name the input x or z "
                                "(or d<name> among the outputs), the upstream gradient g, the saved output y, "
                                "targets t, class labels label")
        takes.append(role)
    returns = []
    for name in outputs:
        lowered = name.lower()
        if lowered in LOSS_NAMES:
            returns.append("loss")
        elif lowered in JACOBIAN_NAMES:
            returns.append("J")
        elif lowered.startswith("d") or lowered == "grad":
            returns.append("dx")
        else:
            raise SoftgradError(f"unknown signature {text!r}: cannot tell what {name!r} is; name the outputs loss, "
                                "d<input> (dx, dz) or J")
    signature = Signature(key, tuple(takes), tuple(returns))
    _check_roles(signature)
    return signature


def _check_roles(signature: Signature) -> None:
    takes, returns, text = signature.takes, signature.returns, signature.text
    repeated = {r for r in takes + returns if (takes + returns).count(r) > 1}
    if repeated:
        raise SoftgradError(f"signature {text!r} names the {sorted(repeated)[0]} role twice")
    labels_hint = " (if y holds class labels, name it labels: 'x,labels->loss,dx')"
    if "x" in takes and "y" in takes:
        raise SoftgradError(f"signature {text!r} takes both the input x and the saved output y; a backward takes "
                            "one of them" + (labels_hint if "g" not in takes else ""))
    if "x" not in takes and "y" not in takes:
        raise SoftgradError(f"signature {text!r} must take the input x (or, for a backward from the saved output, y)")
    if "y" in takes and "g" not in takes:
        raise SoftgradError(f"signature {text!r}: a backward from the saved output y also takes the upstream g"
                            + labels_hint)
    if "J" in returns and (returns != ("J",) or takes != ("x",)):
        raise SoftgradError(f"signature {text!r}: a Jacobian is checked as x->J (one row in, n × n out)")
    if "dx" not in returns and "J" not in returns:
        raise SoftgradError(f"signature {text!r} returns no gradient (d<input>)")
    if "loss" in returns and "g" in takes:
        raise SoftgradError(f"signature {text!r}: a loss takes no upstream gradient g")
    if "t" in takes and "label" in takes:
        raise SoftgradError(f"signature {text!r} takes both targets t and labels: one kind of target per function")


def describe_failure(problem: BaseException) -> str:
    """What the user's code did, in a few words: 'called sys.exit(0)' or 'raised ValueError: <its last line>'."""
    if isinstance(problem, SystemExit):
        return f"called sys.exit({problem.code!r})"
    last = str(problem).strip().splitlines()
    return f"raised {type(problem).__name__}" + (f": {last[-1]}" if last else "")


class WrongOutput(Exception):
    """The function ran, but what it did cannot be a correct gradient (NaN or inf for finite inputs,
    complex or integer values, lower precision than asked for, inputs changed in place): a FAIL.
    `bad` counts the elements that are wrong by themselves (None: the whole result)."""

    def __init__(self, message: str, bad: int | None = None) -> None:
        super().__init__(message)
        self.bad = bad


def call_code(function: Callable[..., Any], arguments: list[Any], names: Sequence[str]) -> tuple[Any, ...]:
    """Call the code under test once; its results as a tuple. The one way every verifier calls user code.

    Raises SoftgradError where it raised or exited (its own last line), WrongOutput where it changed one of
    its inputs in place (a caller's array would be corrupted; `names` name the arguments for that line).
    `function` is an IsolatedFunction (code run in a child process, which compares its inputs itself) or any
    callable (run here, its array arguments compared with copies).
    """
    from softgrad.verify.isolation import IsolatedFunction

    isolated = isinstance(function, IsolatedFunction)
    originals = {k: np.copy(a) for k, a in enumerate(arguments) if isinstance(a, np.ndarray)} if not isolated else {}
    try:
        result = function(*arguments)
    except SoftgradError:
        raise
    except KeyboardInterrupt:
        raise
    except BaseException as problem:  # the user's code failed (or exited): report its own last line
        raise SoftgradError(f"the function under test {describe_failure(problem)}") from None
    mutated = set(function.mutated) if isinstance(function, IsolatedFunction) else {
        k for k, original in originals.items() if not np.array_equal(original, arguments[k], equal_nan=True)}
    if mutated:
        changed = ", ".join(names[k] for k in sorted(mutated))
        raise WrongOutput(f"the function changed its input {changed} in place (a caller's array would be corrupted)")
    return result if isinstance(result, tuple) else (result,)


def as_array(name: str, value: Any) -> np.ndarray:
    """A returned value as a NumPy array (a torch tensor's values, wherever it lives); SoftgradError where it is
    not an array of numbers at all."""
    from softgrad.verify.isolation import NotAnArray

    if isinstance(value, NotAnArray):
        raise SoftgradError(f"the function's {name} is {value}, not an array")
    try:
        array: np.ndarray = np.asarray(value.detach().cpu().numpy() if hasattr(value, "detach") else value)
    except Exception:
        raise SoftgradError(f"the function's {name} is a {type(value).__name__}, not an array") from None
    if array.dtype.hasobject or array.dtype.kind not in "biufc":
        raise SoftgradError(f"the function's {name} has dtype {array.dtype}, not a floating array")
    return array


def real_floats(name: str, value: np.ndarray, dtype: Any) -> np.ndarray:
    """The values as float64, after WrongOutput for values no gradient can have: complex, integers, or a
    narrower float than the inputs (precision lost)."""
    if value.dtype.kind == "c":
        raise WrongOutput(f"the function's {name} is complex ({value.dtype}); a real function's gradient is real")
    if value.dtype.kind != "f":
        raise WrongOutput(f"the function's {name} has dtype {value.dtype}; a gradient needs floating values")
    if value.dtype.itemsize < np.dtype(dtype).itemsize:
        raise WrongOutput(f"the function's {name} is {value.dtype} for {np.dtype(dtype)} inputs (precision lost)")
    return value.astype(np.float64)


def call_under_test(function: Callable[..., Any], signature: Signature, arrays: Arrays, dtype: Any,
                    layout: str = "classes-last") -> dict[str, np.ndarray]:
    """Call the function under test with the signature's arguments; return its outputs by role as float64
    arrays, in the checker's layout (rows, n) whatever `layout` the code uses; a loss as it came, () or (rows,).

    Raises SoftgradError for what makes the check impossible (it raised, exited, crashed, timed out, or
    returned the wrong number or shape of values) and WrongOutput for a result that is wrong by itself.
    """
    first = layout == "classes-first" and not signature.single_row
    arguments = []
    for role in signature.takes:
        if role == "label":
            arguments.append(np.ascontiguousarray(arrays["label"], dtype=np.int64))
        else:
            value = arrays[role].astype(dtype)
            arguments.append(np.ascontiguousarray(value.T) if first else value)
    if signature.single_row:  # x->J: one row at a time
        rows = [as_array("J", call_code(function, [row], signature.takes)[0]) for row in arguments[0]]
        outputs: tuple[Any, ...] = (np.stack(rows),)
    else:
        outputs = call_code(function, arguments, signature.takes)
    if len(outputs) != len(signature.returns):
        raise SoftgradError(f"the function returned {len(outputs)} value(s); signature {signature.text} "
                            f"expects {len(signature.returns)}")
    checked = {}
    rows, size = arrays["x"].shape
    for role, value in zip(signature.returns, outputs):
        value = as_array(role, value)
        if role == "loss" and value.shape in ((), (1,), (rows,)):
            value = value.reshape(() if value.size == 1 and rows != 1 else value.shape[:1] or ())
        else:
            expected = {"dx": (size, rows) if first else (rows, size), "loss": (rows,), "J": (rows, size, size)}[role]
            if value.shape != expected:
                _wrong_shape(role, value.shape, expected, first, layout)
        value = real_floats(role, value, dtype)
        if first and role == "dx":
            value = np.ascontiguousarray(value.T)
        if not np.isfinite(value).all():
            where = tuple(int(i) for i in np.argwhere(~np.isfinite(value))[0])
            raise WrongOutput(f"the function's {role} is {value[where]} at {where} for finite inputs",
                              int((~np.isfinite(value)).sum()))
        checked[role] = value
    return checked


def _wrong_shape(role: str, shape: tuple[int, ...], expected: tuple[int, ...], first: bool, layout: str) -> None:
    """One line for an output of the wrong shape, with the --layout hint when it is the transpose."""
    hint = ""
    if len(expected) == 2 and shape == expected[::-1] and expected[0] != expected[1]:
        other = "classes-last" if first else "classes-first"
        hint = f"; it is the transpose: does the code put the class axis {other.split('-')[1]}? (--layout {other})"
    elif role == "loss":
        hint = "; a loss is one number (--reduction sum or mean) or one per row (--reduction none)"
    raise SoftgradError(f"the function's {role} has shape {shape}, expected {expected} ({layout}){hint}")
