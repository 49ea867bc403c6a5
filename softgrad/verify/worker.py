"""The child process of softgrad.verify.isolation: loads the code under test and calls it on request.

    python -m softgrad.verify.worker REQUESTS_FD REPLIES_FD

Its standard output is the parent's standard error (what the code prints never mixes with a report).
Ctrl-C is left to the parent, which stops this process.
"""

from __future__ import annotations

import os
import signal
import sys
import warnings

import numpy as np

from softgrad.verify.signatures import describe_failure


def _outputs(result: object) -> tuple[bool, list[np.ndarray], dict[int, str]]:
    """(was a tuple, numeric arrays, {position: description} of outputs that are not numeric arrays)."""
    is_tuple = isinstance(result, tuple)
    values = list(result) if isinstance(result, tuple) else [result]
    arrays, others = [], {}
    for position, value in enumerate(values):
        try:
            array = np.asarray(value.detach().cpu().numpy() if hasattr(value, "detach") else value)
        except Exception:
            array = None
        if array is None or array.dtype.hasobject or array.dtype.kind not in "biufc":
            others[position] = f"a {type(value).__name__}"
            continue
        arrays.append(array)
    return is_tuple, arrays, others


def main(requests: int, replies: int) -> None:
    from softgrad.verify.isolation import _Reader, send

    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # a library's warnings (torch, JAX, NumPy, softgrad's own adapters) are not the code's: they stay out of the report
    warnings.filterwarnings("ignore", module=r"(torch|jax|jaxlib|numpy|softgrad)(\.|$)")
    os.environ.setdefault("JAX_ENABLE_X64", "1")  # JAX code under test is checked in float64 (if it imports JAX)
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    reader = _Reader(requests)
    function = None
    while True:
        try:
            header, arrays = reader.message()
        except EOFError:
            return
        if header["op"] == "load":
            from softgrad.errors import SoftgradError
            from softgrad.verify.loaders import load_in_process
            from softgrad.verify.signatures import parse_signature

            try:
                try:
                    signature = parse_signature(header["signature"])
                except SoftgradError:  # a tensor signature: Python functions as they are
                    signature = None
                function, how = load_in_process(header["reference"], signature, header["dtype"],
                                                header.get("layout", "classes-last"), header["signature"],
                                                header.get("plan"))
            except SoftgradError as problem:
                send(replies, {"error": str(problem)})
                continue
            except BaseException as problem:  # an adapter ran the user's code (a constructor) and it failed
                send(replies, {"error": f"loading {header['reference']} {describe_failure(problem)}"})
                continue
            send(replies, {"ok": True, "how": how})
            continue
        copies = [a.copy() for a in arrays]
        # a spec parameter arrives as a 0-d array: the code gets the Python float it was written for; settings
        # (dicts) arrive in the header, at their positions
        arguments: list[object] = [float(a) if a.ndim == 0 and a.dtype.kind == "f" else a for a in arrays]
        for position, value in sorted((int(k), v) for k, v in header.get("objects", {}).items()):
            arguments.insert(position, value)
        try:
            assert function is not None, "the first request loads the function"
            result = function(*arguments)
        except BaseException as problem:
            send(replies, {"failed": describe_failure(problem)})
            continue
        mutated = [position for position, (before, after) in enumerate(zip(copies, arrays))
                   if not np.array_equal(before, after, equal_nan=True)]
        is_tuple, outputs, others = _outputs(result)
        findings = [str(line) for line in getattr(function, "findings", None) or []]
        send(replies, {"ok": True, "tuple": is_tuple, "mutated": mutated, "findings": findings,
                       "other_outputs": {str(k): v for k, v in others.items()}}, outputs)


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
