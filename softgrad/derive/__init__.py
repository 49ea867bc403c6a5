"""parse → derive: the spec language, the catalog, the rules and the checked derivation.

The module itself is callable: `softgrad.derive("softmax")` is `derive_spec(load_spec("softmax"))`.
"""

import functools
import sys
import types

from softgrad.derive.catalog import CATALOG, load_spec
from softgrad.derive.engine import derive_spec
from softgrad.derive.spec import Spec, parse_spec
from softgrad.derive.steps import Derivation

__all__ = ["CATALOG", "Derivation", "Spec", "derive_spec", "load_spec", "parse_spec"]


@functools.lru_cache(maxsize=64)
def _derived(spec: str, wrt: str | None, seed: int) -> Derivation:
    return derive_spec(load_spec(spec), wrt=wrt, seed=seed)


class _CallableModule(types.ModuleType):
    def __call__(self, spec: str, wrt: str | None = None, seed: int = 0) -> Derivation:
        """Derive a catalog entry or an inline spec; returns a Derivation (renders itself in Jupyter).

        The same spec, wrt and seed give the same derivation, so it is derived once per process and
        shared: treat it as read-only."""
        return _derived(spec, wrt, seed)


sys.modules[__name__].__class__ = _CallableModule
