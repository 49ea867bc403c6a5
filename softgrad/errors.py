"""The errors softgrad reports to users: each carries the exit status the CLI must return."""

from __future__ import annotations


class SoftgradError(Exception):
    """Something softgrad could not run (exit status 2): bad input, missing file, failed tool."""

    exit_status = 2


class SpecError(SoftgradError):
    """A malformed spec, located by line and column (1-based) so the user can find it."""

    def __init__(self, message: str, line: int | None = None, column: int | None = None):
        self.problem = message
        self.line = line
        self.column = column
        where = ""
        if line is not None:
            where = f"spec line {line}" + (f", col {column}" if column is not None else "") + ": "
        super().__init__(where + message)


class StepCheckFailed(SoftgradError):
    """A derivation step did not survive its numeric check: a bug in softgrad, never printed as fact."""
