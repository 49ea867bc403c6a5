"""softgrad: derive, generate and verify the gradients of ML functions, starting with softmax.

`softgrad.derive("softmax")` returns the checked Derivation; `softgrad.derive` is also the package
holding the engine (the module is callable, so both readings work).
"""

from __future__ import annotations

from softgrad import derive, render  # render registers how derive's objects print
from softgrad._version import __version__

__all__ = ["__version__", "derive", "render"]
