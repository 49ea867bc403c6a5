"""Run the code under test in a child process, so that nothing it does can decide the verdict.

The child (softgrad.verify.worker) loads the function and calls it on request. It is judged only by
what it sends back: a process that exits, is killed by a signal, crashes or does not answer within the
time limit ends the check with one line saying which (exit status 2), never with a pass. What the code
prints goes to standard error, so `--json` output stays valid. Messages are a length-prefixed JSON
header followed by raw array bytes: the parent never unpickles what the child sends.
"""

from __future__ import annotations

import json
import os
import select
import signal
import struct
import subprocess
import sys
import time
import weakref
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from softgrad.budget import CALL_SECONDS, LOAD_SECONDS
from softgrad.errors import SoftgradError

DEFAULT_TIMEOUT = CALL_SECONDS
LOAD_TIMEOUT = LOAD_SECONDS

_LENGTH = struct.Struct("<Q")


def send(descriptor: int, header: dict[str, Any], arrays: Sequence[np.ndarray] = ()) -> None:
    """Write one message: its header (with each array's dtype and shape) and the arrays' bytes."""
    arrays = [np.require(a, requirements="C") for a in arrays]  # 0-d stays 0-d (a spec parameter)
    header = dict(header, arrays=[{"dtype": a.dtype.str, "shape": list(a.shape)} for a in arrays])
    encoded = json.dumps(header).encode("utf-8")
    payload = b"".join([_LENGTH.pack(len(encoded)), encoded] + [_LENGTH.pack(a.nbytes) + a.tobytes() for a in arrays])
    view = memoryview(payload)
    while view:
        written = os.write(descriptor, view)
        view = view[written:]


class _Reader:
    """Reads messages from a descriptor, each read bounded by a deadline (None: wait forever)."""

    def __init__(self, descriptor: int) -> None:
        self.descriptor = descriptor

    def exactly(self, count: int, deadline: float | None) -> bytes:
        chunks, remaining = [], count
        while remaining:
            if deadline is not None:
                left = deadline - time.monotonic()
                ready, _, _ = select.select([self.descriptor], [], [], max(left, 0))
                if not ready:
                    raise TimeoutError
            chunk = os.read(self.descriptor, min(remaining, 1 << 22))
            if not chunk:
                raise EOFError
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)

    def message(self, deadline: float | None = None) -> tuple[dict[str, Any], list[np.ndarray]]:
        (length,) = _LENGTH.unpack(self.exactly(_LENGTH.size, deadline))
        header = json.loads(self.exactly(length, deadline))
        arrays = []
        for description in header.get("arrays", []):
            (size,) = _LENGTH.unpack(self.exactly(_LENGTH.size, deadline))
            dtype = np.dtype(description["dtype"])
            if dtype.hasobject:
                raise ValueError("object arrays are not accepted")
            data = self.exactly(size, deadline)
            arrays.append(np.frombuffer(data, dtype=dtype).reshape(description["shape"]).copy())
        return header, arrays


def _describe_ending(returncode: int) -> str:
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        crash = (
            " (a crash in the code under test)" if name in ("SIGSEGV", "SIGBUS", "SIGILL", "SIGFPE", "SIGABRT") else ""
        )
        return f"was killed by {name}{crash}"
    return f"ended the process with exit status {returncode} (sys.exit, os._exit or C exit?)"


def _stop(process: subprocess.Popen[bytes], descriptors: tuple[int, int], cleanup: Callable[[], None] | None) -> None:
    """Kill the child if it still runs, close its pipes, then run the cleanup (once: a weakref.finalize)."""
    if process.poll() is None:
        process.kill()
        process.wait()
    for descriptor in descriptors:
        try:
            os.close(descriptor)
        except OSError:
            pass
    if cleanup is not None:
        cleanup()


class IsolatedFunction:
    """A function of a file or module, called in a child process: `result = isolated(*arrays)`.

    Each call returns what the function returned (an array or a tuple of arrays) and sets
    `mutated` to the positions of the arguments it changed in place. Use as a context manager (or call close())."""

    def __init__(self, reference: str, signature_text: str, dtype: str, timeout: float = DEFAULT_TIMEOUT,
                 role: str = "the function under test", cleanup: Callable[[], None] | None = None,
                 layout: str = "classes-last", plan: dict[str, Any] | None = None) -> None:
        if not timeout > 0:
            raise SoftgradError("--timeout must be a positive number of seconds")
        self.reference, self.timeout, self.role = reference, timeout, role
        self.calls = 0
        self.mutated: list[int] = []
        #: What the last call did wrong that its outputs do not show (C written outside an array, …).
        self.findings: list[str] = []
        self.__name__ = reference.rsplit(":", 1)[-1]
        requests_read, self._requests = os.pipe()
        self._replies, replies_write = os.pipe()
        self._reader = _Reader(self._replies)
        environment = dict(os.environ)
        package_root = str(Path(__file__).resolve().parents[2])
        environment["PYTHONPATH"] = os.pathsep.join(filter(None, [package_root, environment.get("PYTHONPATH")]))
        try:
            self._process = subprocess.Popen(
                [sys.executable, "-m", "softgrad.verify.worker", str(requests_read), str(replies_write)],
                pass_fds=(requests_read, replies_write), stdin=subprocess.DEVNULL, stdout=sys.stderr.fileno(),
                env=environment, cwd=os.getcwd())
        finally:
            os.close(requests_read)
            os.close(replies_write)
        # the child is stopped when this object is closed, collected or at exit (atexit runs finalizers; the
        # CLI skips the interpreter's teardown, where __del__ would have been the last chance)
        self._finalizer = weakref.finalize(self, _stop, self._process, (self._requests, self._replies), cleanup)
        try:
            reply, _ = self._exchange({"op": "load", "reference": reference, "signature": signature_text,
                                       "dtype": dtype, "layout": layout, "plan": plan}, [], max(timeout, LOAD_TIMEOUT),
                                      "while loading")
        except BaseException:  # Ctrl-C while it loads included: the child is not left running
            self.close()
            raise
        #: How the code is called (a layer's forward then backward, torch autograd, jax.vjp); "" for a function.
        self.how = str(reply.get("how", ""))

    def __call__(self, *arrays: Any) -> Any:
        self.calls += 1
        # settings (a dict such as ln_param) travel as JSON in the header, arrays as bytes after it
        objects = {str(position): value for position, value in enumerate(arrays) if isinstance(value, dict)}
        sent = [value for value in arrays if not isinstance(value, dict)]
        header, outputs = self._exchange({"op": "call", "objects": objects}, sent, self.timeout,
                                         f"in call {self.calls}")
        self.mutated = header.get("mutated", [])
        self.findings = [str(line) for line in header.get("findings", [])]
        others = header.get("other_outputs", {})
        results: list[object] = list(outputs)
        for position, description in sorted((int(k), v) for k, v in others.items()):
            results.insert(position, NotAnArray(description))
        return tuple(results) if header.get("tuple") else results[0]

    def _exchange(self, header: dict[str, Any], arrays: list[np.ndarray], timeout: float,
                  when: str) -> tuple[dict[str, Any], list[np.ndarray]]:
        try:
            send(self._requests, header, arrays)
            reply, outputs = self._reader.message(time.monotonic() + timeout)
        except TimeoutError:
            self.close()
            raise SoftgradError(f"{self.role} did not return within {timeout:g} s {when} "
                                "(an endless loop? --timeout sets the limit)") from None
        except (EOFError, BrokenPipeError):
            returncode = self._process.wait()
            self.close()
            raise SoftgradError(f"{self.role} {_describe_ending(returncode)} {when}") from None
        except (ValueError, json.JSONDecodeError):
            self.close()
            raise SoftgradError(f"{self.role}'s process sent a malformed answer {when}") from None
        if "error" in reply:  # loading failed: the message is whole
            raise SoftgradError(reply["error"])
        if "failed" in reply:  # the code raised or called sys.exit
            raise SoftgradError(f"{self.role} {reply['failed']}")
        return reply, outputs

    def close(self) -> None:
        """Stop the child (if it still runs) and release the pipes (then the cleanup, e.g. the folder a C source
        was compiled in, runs)."""
        self._finalizer()
        self._requests = self._replies = -1

    def __enter__(self) -> IsolatedFunction:
        return self

    def __exit__(self, *exception: object) -> None:
        self.close()


class NotAnArray:
    """An output the child could not send as a numeric array (a string, None, a dict, …)."""

    def __init__(self, description: str) -> None:
        self.description = description

    def __repr__(self) -> str:
        return self.description
