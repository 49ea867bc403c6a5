"""Transcendental calls per entry in the generated C: what a kernel spends its time on. The schedule reuses
what it has (exp(2u) from exp(u), a reduction loop's exp stashed for the output loop, u² multiplied out,
never pow); this test fails when a count rises for any function of the catalog or outside it."""

import re

import pytest
from outside_catalog import OUTSIDE_THE_CATALOG

from softgrad.codegen.emit import emit
from softgrad.derive import CATALOG, derive_spec, load_spec

CALL = re.compile(r"\b(softgrad_(?:exp|log|log1p|expm1|tanh|tanh_softplus|sigmoid|softplus|erf|pow)"
                  r"|exp|expm1|log|log1p|pow|sqrt|tanh|erf|erfc)f?\(")
#: One pass over a row's entries (the streamed chunk loop stands for the head and tail copies of its pass).
PASS = re.compile(r"for \(size_t _i = (?:0; _i < n|_start; _i < _start \+ SOFTGRAD_CHUNK); \+\+_i\) \{")
KINDS = ("loss_and_grad", "vjp_from_output", "jacobian", "vjp", "forward")

#: Calls per entry, summed over a kernel's passes, as of this commit: lower is welcome (update the table),
#: higher fails.
MOST = {
    'softmax': {'forward': 1, 'vjp': 1, 'vjp_from_output': 0},
    'log-softmax': {'forward': 1, 'vjp': 1, 'vjp_from_output': 1},
    'logsumexp': {'forward': 1, 'loss_and_grad': 1},
    'softmax-temperature': {'forward': 1, 'vjp': 1, 'vjp_from_output': 0},
    'cross-entropy': {'forward': 1, 'loss_and_grad': 1},
    'cross-entropy-onehot': {'forward': 1, 'loss_and_grad': 1},
    'kl-divergence': {'forward': 2, 'loss_and_grad': 2},
    'sigmoid': {'forward': 1, 'vjp': 1, 'vjp_from_output': 0},
    'binary-cross-entropy': {'forward': 2, 'loss_and_grad': 3},
    'y[i] = exp(-x[i]) / sum(exp(-x[k]), k)': {'forward': 1, 'vjp': 1, 'vjp_from_output': 0},
    'y[i] = x[i]^2 / sum(x[k]^2, k)': {'forward': 0, 'vjp': 0},
    'y[i] = (1 + x[i] + x[i]^2/2) / sum(1 + x[k] + x[k]^2/2, k)': {'forward': 0, 'vjp': 0},
    'y[i] = x[i] / sqrt(sum(x[k]^2, k))': {'forward': 0, 'vjp': 0},
    'y[i] = 0.5*x[i]*(1 + tanh(0.7978845608*(x[i] + 0.044715*x[i]^3)))': {'forward': 1, 'vjp': 1},
    'y[i] = x[i]*sigmoid(x[i])': {'forward': 1, 'vjp': 1},
    'p[i] = exp(z[i]) / sum(exp(z[k]), k); H = -sum(p[k]*log(p[k]), k)': {'forward': 1, 'loss_and_grad': 1},
    'p[i] = exp(z[i]) / sum(exp(z[k]), k); L = -sum(t[k]*(1-p[k])^2*log(p[k]), k)': {'forward': 1, 'loss_and_grad': 2},
    'p[i] = exp(z[i]) / sum(exp(z[k]), k); L = -sum((0.9*t[k] + 0.1*s)*log(p[k]), k)':
        {'forward': 1, 'loss_and_grad': 1},
    'y[i] = tanh(x[i])': {'forward': 1, 'vjp': 2, 'vjp_from_output': 0},
    'y[i] = x[i]*tanh(log(1 + exp(x[i])))': {'forward': 1, 'vjp': 2},
    'y[i] = log(1 + exp(x[i]))': {'forward': 1, 'vjp': 1},
    'm = sum(x[k], k)/n; v = sum((x[k] - m)^2, k)/n; y[i] = (x[i] - m)/sqrt(v + 0.00001)': {'forward': 0, 'vjp': 0},
    'y[i] = x[i]/sqrt(sum(x[k]^2, k)/n + 0.00001)': {'forward': 0, 'vjp': 0},
    'y[i] = 0.5*x[i]*(1 + erf(x[i]/sqrt(2)))': {'forward': 1, 'vjp': 2},
    'y[i] = max(x[i], 0)': {'forward': 0, 'vjp': 0},
    'y[i] = max(x[i], 0.01*x[i])': {'forward': 0, 'vjp': 0},
    'y[i] = x[i]/(1 + abs(x[i]))': {'forward': 0, 'vjp': 0},
    'y[i] = softplus(x[i])': {'forward': 1, 'vjp': 1},
    'y[i] = log1p(x[i]^2)': {'forward': 1, 'vjp': 0},
    'y[i] = x[i] - sum(x[k], k)/n': {'forward': 0, 'vjp': 0, 'vjp_from_output': 0},
    'y[i] = exp(x[i] + b[i]) / sum(exp(x[k] + b[k]), k)': {'forward': 3, 'vjp': 3},
    'L = sum(softplus(x[k]) - t[k]*x[k], k)': {'forward': 1, 'loss_and_grad': 2},
    'L = sum(max(0, 1 - t[k]*x[k]), k)': {'forward': 0, 'loss_and_grad': 0},
    'L = sum((x[k] - t[k])^2, k)/n': {'forward': 0, 'loss_and_grad': 0},
    'p[i] = exp(z[i]) / sum(exp(z[k]), k); L = sum(p[k]^2, k)': {'forward': 1, 'loss_and_grad': 1},
    'p[i] = exp(z[i]) / sum(exp(z[k]), k); L = -sum(t[k]*log(p[k]), k) + sum(t[k]*(1 - p[k]), k)':
        {'forward': 1, 'loss_and_grad': 1},
    'p[i] = sigmoid(x[i]); L = -sum(t[k]*(1 - p[k])^2*log(p[k]) + (1 - t[k])*p[k]^2*log(1 - p[k]), k)':
        {'forward': 3, 'loss_and_grad': 5},
    'y[i] = exp(sum(x[k], k))*x[i]': {'forward': 0, 'vjp': 0},
}


def calls_per_entry(source: str) -> dict[str, int]:
    """Per kernel (forward, vjp, …): transcendental calls inside the loops over a row's entries."""
    counts = {}
    for match in re.finditer(r"^void (\w+)\(.*\n\{\n", source, re.M):
        kind = next(k for k in KINDS if match.group(1).endswith(k))
        body = source[match.end():source.find("\n}\n", match.end())]
        total = 0
        for loop in PASS.finditer(body):
            depth, position = 1, loop.end()
            while depth:
                depth += {"{": 1, "}": -1}.get(body[position], 0)
                position += 1
            total += len(CALL.findall(body[loop.end():position]))
        if kind != "jacobian":
            counts[kind] = total
    return counts


@pytest.mark.parametrize("spec", list(CATALOG) + OUTSIDE_THE_CATALOG)
def test_transcendental_calls_per_entry_never_rise(spec):
    (source,) = [text for name, text in emit(derive_spec(load_spec(spec.replace("; ", "\n"))), "c").items()
                 if name.endswith(".c")]
    counts = calls_per_entry(source)
    assert counts == {kind: min(counts[kind], MOST[spec][kind]) for kind in counts}, (counts, MOST[spec])
    assert set(counts) == set(MOST[spec])


def test_the_counter_sees_what_it_counts():
    counts = calls_per_entry(next(text for name, text in emit(derive_spec(load_spec(
        "p[i] = exp(z[i]) / sum(exp(z[k]), k)\nL = sum(p[k]^2, k)")), "c").items() if name.endswith(".c")))
    assert counts == {"forward": 1, "loss_and_grad": 1}  # exp(2u) is exp(u)·exp(u): one call, not two
    assert calls_per_entry("void f_forward(void)\n{\n    for (size_t _i = 0; _i < n; ++_i) {\n"
                           "        y = log(a) + pow(b, 2.5);\n    }\n}\n") == {"forward": 2}


#: Specs whose loops call softgrad_pow: as MOST, calls per entry (exp, log and pow) as of this commit.
POWERS = {
    "p[i] = exp(z[i]) / sum(exp(z[k]), k); L = -sum(t[k]*(1-p[k])^g*log(p[k]), k)": {'forward': 3, 'loss_and_grad': 4},
    "y[i] = x[i]^7 + x[i]^1.5 - x[i]^(-2.5)": {'forward': 3, 'vjp': 3},
}


@pytest.mark.parametrize("spec", POWERS)
def test_a_power_next_to_another_costs_no_second_pow(spec):
    """(1 − p)^γ and (1 − p)^(γ−1) in one pass are one pow and a multiply (focal loss with a parameter γ:
    six calls per entry in loss_and_grad before, four now)."""
    files = emit(derive_spec(load_spec(spec)), "c")
    counts = calls_per_entry(next(text for name, text in files.items() if name.endswith(".c")))
    assert counts == {kind: min(counts[kind], POWERS[spec][kind]) for kind in counts}, (counts, POWERS[spec])
    assert set(counts) == set(POWERS[spec])
