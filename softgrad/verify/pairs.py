"""Forward/backward pairs with a cache, the convention of every layer in course code:

    out, cache = layernorm_forward(x, gamma, beta)
    dx, dgamma, dbeta = layernorm_backward(dout, cache)

checked with `--signature 'x,gamma,beta->out,cache; dout,cache->dx,dgamma,dbeta'`. The forward takes spec
inputs (and parameters); its first result is the spec's output, the others are whatever it keeps for the
backward (any objects: tuples, dicts), handed on by name. The backward takes names the forward took or
returned, and for an array output one more: the upstream gradient. The two are composed into one function
(inputs[, upstream] → output, gradients), which is what the several-index checks call.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from softgrad.errors import SoftgradError

__all__ = ["Pair", "compose", "parse_pair"]


@dataclass(frozen=True)
class Pair:
    forward_takes: tuple[str, ...]
    forward_returns: tuple[str, ...]
    backward_takes: tuple[str, ...]
    backward_returns: tuple[str, ...]

    @property
    def upstream(self) -> tuple[str, ...]:
        """What the backward takes that the forward neither took nor returned: the upstream gradient."""
        known = set(self.forward_takes) | set(self.forward_returns)
        return tuple(name for name in self.backward_takes if name not in known)

    @property
    def takes(self) -> tuple[str, ...]:
        """The composed function's arguments: the forward's, then the upstream gradient (if any)."""
        return self.forward_takes + self.upstream

    @property
    def returns(self) -> tuple[str, ...]:
        """The composed function's results: the forward's output, then the backward's gradients."""
        return self.forward_returns[:1] + self.backward_returns


def _names(text: str, what: str, whole: str) -> tuple[str, ...]:
    names = tuple(name for name in text.split(",") if name)
    bad = next((name for name in names if not name.isidentifier()), None)
    if bad is not None or not names:
        raise SoftgradError(f"the {what} of {whole!r} must be names separated by commas"
                            + (f" ({bad!r} is not one)" if bad else ""))
    return names


def parse_pair(text: str) -> Pair | None:
    """`x,gamma,beta->out,cache; dout,cache->dx,dgamma,dbeta` as a Pair; None for a one-function signature."""
    if ";" not in text:
        return None
    parts = text.replace(" ", "").split(";")
    if len(parts) != 2 or any("->" not in part for part in parts):
        raise SoftgradError("a forward/backward signature is 'FORWARD INPUTS->OUTPUTS; BACKWARD INPUTS->GRADIENTS', "
                            f"e.g. 'x,gamma,beta->out,cache; dout,cache->dx,dgamma,dbeta'; got {text!r}")
    (forward_takes, forward_returns), (backward_takes, backward_returns) = (
        (_names(left, "inputs", part), _names(right, "outputs", part))
        for part in parts for left, right in [part.split("->", 1)])
    names = [*forward_takes, *forward_returns]
    if len(set(names)) != len(names) or len(set(backward_returns)) != len(backward_returns):
        raise SoftgradError(f"a name appears twice in the signature {text!r}")
    if set(backward_returns) & set(names):
        raise SoftgradError(f"the backward's results must have names of their own in {text!r}")
    pair = Pair(forward_takes, forward_returns, backward_takes, backward_returns)
    if len(pair.upstream) > 1:
        raise SoftgradError(f"the backward takes {', '.join(pair.upstream)}, which the forward neither takes nor "
                            "returns: only one (the upstream gradient) may be new")
    return pair


class PairFailure(Exception):
    """The forward returned another number of results than the signature names."""


def compose(forward: Callable[..., Any], backward: Callable[..., Any], pair: Pair) -> Callable[..., Any]:
    """One function (pair.takes → pair.returns) that runs the forward, then the backward on what it kept."""
    def forward_and_backward(*arguments: Any) -> tuple[Any, ...]:
        named = dict(zip(pair.takes, arguments))
        produced = forward(*[named[name] for name in pair.forward_takes])
        produced = tuple(produced) if isinstance(produced, (tuple, list)) else (produced,)
        if len(produced) != len(pair.forward_returns):
            raise PairFailure(f"the forward returned {len(produced)} value(s); the signature names "
                              f"{len(pair.forward_returns)} ({', '.join(pair.forward_returns)})")
        named.update(zip(pair.forward_returns, produced))
        gradients = backward(*[named[name] for name in pair.backward_takes])
        gradients = tuple(gradients) if isinstance(gradients, (tuple, list)) else (gradients,)
        return (produced[0], *gradients)

    names = getattr(forward, "__name__", "forward"), getattr(backward, "__name__", "backward")
    forward_and_backward.__name__ = "+".join(names)
    return forward_and_backward
