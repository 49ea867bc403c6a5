"""The built-in catalog, written in the spec language: the engine sees these exactly as user specs."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from softgrad.derive.spec import Spec, parse_spec
from softgrad.errors import SoftgradError


@dataclass(frozen=True)
class Entry:
    summary: str
    source: str


CATALOG: dict[str, Entry] = {
    "softmax": Entry("probabilities from logits", "y[i] = exp(x[i]) / sum(exp(x[k]), k)"),
    "log-softmax": Entry("log-probabilities from logits", "y[i] = x[i] - log(sum(exp(x[k]), k))"),
    "logsumexp": Entry("smooth maximum of the logits", "L = log(sum(exp(x[k]), k))"),
    "softmax-temperature": Entry("softmax with a temperature T > 0", "y[i] = exp(x[i] / T) / sum(exp(x[k] / T), k)"),
    "cross-entropy": Entry(
        "cross-entropy of softmax(x) against targets t (any targets)",
        "y[i] = exp(x[i]) / sum(exp(x[k]), k)\nL = -sum(t[k] * log(y[k]), k)",
    ),
    "cross-entropy-onehot": Entry(
        "cross-entropy of softmax(x) against targets that sum to 1 (one-hot or soft labels)",
        "y[i] = exp(x[i]) / sum(exp(x[k]), k)\nL = -sum(t[k] * log(y[k]), k)\ngiven sum(t[k], k) = 1",
    ),
    "kl-divergence": Entry(
        "KL(q ‖ softmax(z)), the divergence of the model's p from targets q",
        "p[i] = exp(z[i]) / sum(exp(z[k]), k)\nL = sum(q[k] * log(q[k] / p[k]), k)",
    ),
    "sigmoid": Entry("elementwise logistic function", "y[i] = sigmoid(x[i])"),
    "binary-cross-entropy": Entry(
        "binary cross-entropy of sigmoid(x) against targets t, summed over entries",
        "p[i] = sigmoid(x[i])\nL = -sum(t[k] * log(p[k]) + (1 - t[k]) * log(1 - p[k]), k)",
    ),
}


def load_spec(text: str) -> Spec:
    """A catalog name, or spec text written inline."""
    name = text.strip()
    if name in CATALOG:
        return parse_spec(CATALOG[name].source, name=name)
    if "=" not in text and (name.endswith(".spec") or Path(name).is_file()):  # a spec file, as `-f` reads
        from softgrad.files import read_text

        return parse_spec(read_text(name, "spec file"), name=Path(name).stem)
    if "=" not in text:
        known = ", ".join(CATALOG)
        raise SoftgradError(
            f"unknown catalog entry {name!r} (known: {known}); or write a spec such as 'y[i] = exp(x[i])'"
        )
    return parse_spec(text)
