"""File input and output that never leaves a half-written file and turns OS errors into one line."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from softgrad.errors import SoftgradError


def read_text(path: str | Path, what: str = "file") -> str:
    """The text of a file, or a SoftgradError saying why it cannot be read."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise SoftgradError(f"cannot read {what} {str(path)!r}: no such file") from None
    except IsADirectoryError:
        raise SoftgradError(f"cannot read {what} {str(path)!r}: it is a directory") from None
    except UnicodeDecodeError:
        raise SoftgradError(f"cannot read {what} {str(path)!r}: not UTF-8 text") from None
    except OSError as problem:
        raise SoftgradError(f"cannot read {what} {str(path)!r}: {problem.strerror}") from None


def write_atomically(path: str | Path, text: str) -> None:
    """Write text to path through a temporary file in the same folder and a rename: all or nothing."""
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    try:
        descriptor, temporary = tempfile.mkstemp(dir=folder, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as problem:
        raise SoftgradError(f"cannot write {str(path)!r}: {problem.strerror}") from None
    try:
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(temporary, target)
    except OSError as problem:
        Path(temporary).unlink(missing_ok=True)
        raise SoftgradError(f"cannot write {str(path)!r}: {problem.strerror}") from None
