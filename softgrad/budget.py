"""Time budgets: long symbolic work ends in one clear error instead of running forever.

SymPy cannot be interrupted politely, so the budget is a timer signal. Its handler raises an exception
that is not an `Exception` (SymPy catches those in places and would carry on), and it keeps firing
every second until the work has unwound. Only the main thread receives signals: elsewhere (a worker
thread, a notebook kernel's executor) the work runs without a budget.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from softgrad.errors import SoftgradError

#: Default budget of one derivation, in seconds: the slowest catalog entry takes about 2 s.
DERIVE_SECONDS = 120.0
#: Default budget of one call of code under test (the first call may compile, e.g. numba or torch.compile),
#: and of loading it (importing torch, compiling C), in seconds: a module that loops on import is stopped
#: in seconds, not minutes (torch and JAX import in 2–4 s here; --timeout raises both).
CALL_SECONDS = 10.0
LOAD_SECONDS = 12.0


class _Expired(BaseException):
    """Raised inside the budgeted work by the timer; turned into a SoftgradError at the boundary."""


class TimeLimitExceeded(SoftgradError):
    """The work did not finish within its budget (exit status 2)."""


@contextmanager
def time_limit(seconds: float | None, what: str) -> Iterator[None]:
    """Run the body with a budget of `seconds` (None: no limit); past it, raise TimeLimitExceeded."""
    usable = hasattr(signal, "setitimer") and threading.current_thread() is threading.main_thread()
    if seconds is None or not usable:
        yield
        return
    if seconds <= 0:
        raise SoftgradError("a time limit must be positive")

    def expired(signum: int, frame: object) -> None:
        raise _Expired

    previous_handler = signal.signal(signal.SIGALRM, expired)
    previous_timer = signal.setitimer(signal.ITIMER_REAL, seconds, 1.0)
    try:
        yield
    except _Expired:
        raise TimeLimitExceeded(f"{what} did not finish within {seconds:g} s (raise the limit with --time-limit)") \
            from None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous_handler)
        if previous_timer[0] > 0:  # an outer budget keeps running
            signal.setitimer(signal.ITIMER_REAL, *previous_timer)
