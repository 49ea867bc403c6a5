"""Independently written expectations for the catalog (from ../shared/reference/derivations.md).

Each entry: the expected results as SymPy expressions, and an independent NumPy forward function of
one row for finite differences. Written by hand here, not produced by softgrad.
"""

import numpy as np
import sympy as sp

from softgrad.derive.symbols import class_sum, index

i, j, k = index("i"), index("j"), index("k")
x, y, t, z, p, q, g = (sp.IndexedBase(name) for name in "xytzpqg")
T = sp.Symbol("T", positive=True)
L = sp.Symbol("L")
delta = sp.KroneckerDelta


def softmax(v):
    e = np.exp(v - v.max())
    return e / e.sum()


EXPECTED = {
    "softmax": {
        "jacobian_equal": y[i] * (1 - y[i]),
        "jacobian_distinct": -y[i] * y[j],
        "jacobian": y[i] * (delta(i, j) - y[j]),
        "vjp": y[i] * (g[i] - class_sum(g[j] * y[j], j)),
    },
    "softmax-temperature": {
        "jacobian": y[i] * (delta(i, j) - y[j]) / T,
        "vjp": y[i] * (g[i] - class_sum(g[j] * y[j], j)) / T,
    },
    "log-softmax": {
        "jacobian": delta(i, j) - sp.exp(y[j]),
        "vjp": g[i] - sp.exp(y[i]) * class_sum(g[j], j),
    },
    "logsumexp": {"gradient": sp.exp(x[j] - L)},
    "sigmoid": {
        "jacobian": delta(i, j) * y[i] * (1 - y[i]),
        "vjp": g[i] * y[i] * (1 - y[i]),
    },
    "cross-entropy": {
        "jacobian": y[i] * (delta(i, j) - y[j]),
        "gradient": y[j] * class_sum(t[k], k) - t[j],
    },
    "cross-entropy-onehot": {
        "gradient": y[j] * class_sum(t[k], k) - t[j],
        "gradient_constrained": y[j] - t[j],
    },
    "kl-divergence": {
        "jacobian": p[i] * (delta(i, j) - p[j]),
        "gradient": p[j] * class_sum(q[k], k) - q[j],
    },
    "binary-cross-entropy": {"gradient": p[j] - t[j]},
}

#: One-row forward functions written with NumPy, for finite differences (inputs: dict of arrays).
FORWARD = {
    "softmax": lambda a, T=None: softmax(a["x"]),
    "softmax-temperature": lambda a, T: softmax(a["x"] / T),
    "log-softmax": lambda a, T=None: a["x"] - a["x"].max() - np.log(np.exp(a["x"] - a["x"].max()).sum()),
    "logsumexp": lambda a, T=None: np.log(np.exp(a["x"]).sum()),
    "sigmoid": lambda a, T=None: 1 / (1 + np.exp(-a["x"])),
    "cross-entropy": lambda a, T=None: -(a["t"] * np.log(softmax(a["x"]))).sum(),
    "cross-entropy-onehot": lambda a, T=None: -(a["t"] * np.log(softmax(a["x"]))).sum(),
    "kl-divergence": lambda a, T=None: (a["q"] * np.log(a["q"] / softmax(a["z"]))).sum(),
    "binary-cross-entropy": lambda a, T=None: -(
        a["t"] * np.log(1 / (1 + np.exp(-a["x"]))) + (1 - a["t"]) * np.log(1 - 1 / (1 + np.exp(-a["x"])))
    ).sum(),
}
