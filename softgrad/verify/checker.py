"""Check a gradient against finite differences of the forward function and, where known, the exact result.

Small n: the full Jacobian by Richardson central differences, every element compared. Large n: random
projections ⟨dx, u⟩ against directional differences, then bisection to the wrong element. Tolerances
come from the differences' own noise estimate plus a per-dtype floor relative to the row's scale.
"""

from __future__ import annotations

import numpy as np

from softgrad.verify import differences
from softgrad.verify.problem import Problem
from softgrad.verify.report import Report, Worst
from softgrad.verify.signatures import Signature, call_under_test

FULL_JACOBIAN_UP_TO = 64
#: The floor of the tolerance, relative to the row's scale, by the dtype of the code under test.
FLOOR = {"float64": 1e-8, "float32": 1e-4}
#: Against the exact result: no finite-difference noise, so much tighter for float64.
EXACT_FLOOR = {"float64": 1e-11, "float32": 2e-5}
NOISE_FACTOR = 4.0


def make_cases(problem: Problem, rows: int, size: int, rng: np.random.Generator) -> list[tuple[str, np.ndarray, np.ndarray | None]]:
    """Inputs the checker makes: logits at several scales, near-ties; targets one-hot, soft, unnormalised."""
    cases = []
    for scale in (1.0, 10.0, 1000.0):
        cases.append((f"logits ~ N(0, {scale:g}²)", rng.normal(0, scale, (rows, size))))
    tied = rng.normal(0, 1, (rows, size))
    tied[:, : min(2, size)] = tied.max(axis=1, keepdims=True) + 0.5  # two equal maxima
    cases.append(("near-tied logits", tied + rng.normal(0, 1e-9, (rows, size))))
    if not problem.has_target:
        return [(name, x, None) for name, x in cases]
    targets = []
    one_hot = np.eye(size)[rng.integers(0, size, rows)]
    soft = rng.uniform(0.01, 1, (rows, size))
    targets += [("one-hot targets", one_hot), ("soft targets", soft / soft.sum(1, keepdims=True))]
    if problem.constraint is None:
        targets.append(("unnormalised targets", rng.uniform(0, 2, (rows, size))))
    elif problem.constraint != 1.0:
        targets = [(name, t * problem.constraint) for name, t in targets]
    return [(f"{name}, {target_name}", x, t) for name, x in cases for target_name, t in targets]


def _as_given(array, dtype):
    """The values the code under test really receives (rounded to its dtype), kept in float64: every
    reference is computed at exactly the point the code was called at."""
    return None if array is None else array.astype(dtype).astype(np.float64)


def _row_scale(reference: np.ndarray, terms: np.ndarray | None = None) -> np.ndarray:
    """Per row: the largest |value|, or the size of the terms it is computed from if larger (a correct
    float32 y(g − Σgy) errs by ~eps·|y||g| however small dx is), and at least 1e-3 of the batch's."""
    flat = np.abs(reference).reshape(reference.shape[0], -1).max(axis=1)
    if terms is not None:
        flat = np.maximum(flat, terms)
    batch = flat.max() if flat.size else 0.0
    return np.maximum(flat, max(1e-3 * batch, 1e-300))


def _term_scale(signature, problem, arrays) -> np.ndarray | None:
    """The magnitude of what a gradient is built from: max|g|·max|f(x)| for a VJP, Σ|t| for a loss."""
    x, t, g = arrays["x"], arrays["t"], arrays["g"]
    if problem.is_loss:
        return None if t is None else np.abs(t).sum(-1)
    if signature.returns == ("J",):
        return None
    return np.abs(g).max(-1) * np.abs(problem.forward(x, t)).max(-1)


def verify(function, signature: Signature, problem: Problem, *, label: str = "function", dtype: str = "float64",
           size: int = 7, rows: int = 4, seed: int = 0, reduction: str = "sum", keywords: dict | None = None,
           against: str = "finite differences") -> Report:
    """Check `function` (with `signature`) against `problem`; returns the report (never raises on FAIL)."""
    keywords = keywords or {}
    rng = np.random.default_rng(seed)
    mode = "full Jacobian" if size <= FULL_JACOBIAN_UP_TO else "random projections"
    report = Report(label, signature.text, against, dtype, mode, seed, differences.DEFAULT_STEP, 0)
    cases = make_cases(problem, rows, size, rng)
    if mode == "random projections":
        cases = cases[:1] + cases[3:4]  # large n: one ordinary and one near-tied batch
    representable = np.dtype(dtype)
    cases = [(case, _as_given(x, representable), _as_given(t, representable)) for case, x, t in cases]
    for case, x, t in cases:
        upstream = _as_given(rng.normal(size=x.shape), representable)
        arrays = {"x": x, "t": t, "g": upstream}
        if "y" in signature.takes:
            arrays["y"] = _as_given(problem.forward(x, t), representable)
        outputs = dict(zip(signature.returns, call_under_test(function, signature, arrays, dtype, keywords)))
        if reduction == "mean" and "dx" in outputs:
            outputs["dx"] = outputs["dx"] * rows
        if mode == "full Jacobian":
            _compare_full(report, signature, problem, case, arrays, outputs, dtype)
        else:
            _compare_projections(report, signature, problem, case, arrays, outputs, dtype, rng)
        if "loss" in outputs:
            loss = problem.forward(x, t) * (1 / rows if reduction == "mean" else 1)
            error = np.abs(outputs["loss"] - loss) / _row_scale(loss[:, None])
            if (error > EXACT_FLOOR[dtype] * 100).any():
                report.fail(f"loss differs from the forward function by {error.max():.3g} (relative) for {case}")
        if not report.passed:
            break
    _structural_checks(report, function, signature, problem, cases[0], dtype, keywords, rng)
    return report


def _numeric_gradient(signature, problem, arrays):
    """Finite-difference reference for the signature's outputs, with its noise: (values, noise)."""
    x, t, g = arrays["x"], arrays["t"], arrays["g"]
    rows = len(x)

    def forward(stacked):
        repeat = len(stacked) // rows
        return problem.forward(stacked, None if t is None else np.tile(t, (repeat, 1)))

    if problem.is_loss:
        difference = differences.jacobian(lambda s: forward(s)[:, None], x)
        return {"dx": (difference.value[:, 0, :], difference.noise[:, 0, :])}
    difference = differences.jacobian(forward, x)
    if signature.returns == ("J",):
        return {"J": (difference.value, difference.noise)}
    return {"dx": (np.einsum("ri,rij->rj", g, difference.value), np.einsum("ri,rij->rj", np.abs(g), difference.noise))}


def _exact(signature, problem, arrays):
    x, t, g = arrays["x"], arrays["t"], arrays["g"]
    if not problem.exact:
        return {}
    if problem.is_loss:
        _, dx = problem.exact["loss_and_grad"](x, *([t] if t is not None else []))
        return {"dx": dx}
    if signature.returns == ("J",):
        return {"J": problem.exact["jacobian"](x)}
    return {"dx": problem.exact["vjp"](x, *([t] if problem.has_target else []), g)}


def _compare_full(report, signature, problem, case, arrays, outputs, dtype):
    numeric = _numeric_gradient(signature, problem, arrays)
    exact = _exact(signature, problem, arrays)
    terms = _term_scale(signature, problem, arrays)
    for role, (value, noise) in numeric.items():
        analytic = outputs[role]
        scale = _row_scale(value, terms)[(...,) + (None,) * (value.ndim - 1)]
        tolerance = NOISE_FACTOR * noise + FLOOR[dtype] * scale
        error = np.abs(analytic - value)
        bad = error > tolerance
        report.elements += analytic.size
        if role in exact:
            exact_tolerance = np.broadcast_to(
                EXACT_FLOOR[dtype] * _row_scale(exact[role], terms)[(...,) + (None,) * (value.ndim - 1)], analytic.shape)
            exact_bad = np.abs(analytic - exact[role]) > exact_tolerance
            if exact_bad.any() and not bad.any():
                # below what finite differences can see, but not the exact result
                worst = np.unravel_index(np.argmax(np.abs(analytic - exact[role]) / exact_tolerance), analytic.shape)
                report.fail(f"{role} differs from the exact result by {np.abs(analytic - exact[role])[worst]:.3g} "
                            f"at {_where(worst)} (tolerance {exact_tolerance[worst]:.3g}, {case}); "
                            "too small for finite differences to see")
                _record_worst(report, worst, analytic, value, exact.get(role), exact_tolerance,
                              f"{EXACT_FLOOR[dtype]:g} × row scale against the exact result", case, arrays)
                report.bad_elements += int(exact_bad.sum())
        if bad.any():
            worst = np.unravel_index(np.argmax(error / tolerance), analytic.shape)
            report.fail(f"{role} does not match finite differences at {int(bad.sum())} element(s) ({case})")
            how = (f"{NOISE_FACTOR:g} × difference noise {noise[worst]:.2g} + {dtype} floor "
                   f"{FLOOR[dtype]:g} × row scale {scale[worst[0]].item():.3g}")
            _record_worst(report, worst, analytic, value, exact.get(role), tolerance, how, case, arrays)
            report.bad_elements += int(bad.sum())


def _where(position) -> str:
    names = ["row", "i", "j"]
    return ", ".join(f"{n} {int(p)}" for n, p in zip(names, position))


def _record_worst(report, position, analytic, numeric, exact, tolerance, how, case, arrays):
    if report.worst is not None:
        return
    row, i = int(position[0]), int(position[1])
    j = int(position[2]) if len(position) > 2 else None
    x = arrays["x"][row]
    column = j if j is not None else i
    step = differences.DEFAULT_STEP
    plus, minus = x.copy(), x.copy()
    plus[column] += step
    minus[column] -= step
    report.worst = Worst(row, i, j, float(analytic[position]), float(numeric[position]),
                         None if exact is None else float(exact[position]), float(tolerance[position]), how, case,
                         bool(np.argmax(plus) != np.argmax(minus)))


def _compare_projections(report, signature, problem, case, arrays, outputs, dtype, rng, probes: int = 3):
    """⟨dx, u⟩ against the directional difference of the forward along u; bisection on a mismatch."""
    x, t, g = arrays["x"], arrays["t"], arrays["g"]
    analytic = outputs["dx"]
    report.elements += analytic.size

    def objective(stacked, weights):
        repeat = len(stacked) // len(weights)
        targets = None if t is None else np.tile(t, (repeat, 1))[: len(stacked)]
        values = problem.forward(stacked, targets)
        return values if problem.is_loss else (values * np.tile(weights, (repeat, 1))).sum(-1)

    def mismatch(direction, rows_mask=None):
        numeric = differences.directional(lambda s: objective(s, g), x, direction)
        projected = (analytic * direction).sum(-1)
        scale = np.abs(analytic * direction).sum(-1)
        tolerance = NOISE_FACTOR * numeric.noise + FLOOR[dtype] * np.maximum(scale, 1e-3 * scale.max() + 1e-300)
        return np.abs(projected - numeric.value), tolerance, numeric.value, projected

    exact = _exact(signature, problem, arrays)
    for _ in range(probes):
        direction = rng.choice([-1.0, 1.0], size=x.shape)
        error, tolerance, numeric, projected = mismatch(direction)
        if (error > tolerance).any():
            row = int(np.argmax(error / tolerance))
            column = _bisect(lambda d: mismatch(d), direction, row)
            single = np.zeros_like(x)
            single[row, column] = 1.0
            element_error, element_tolerance, element_numeric, _ = mismatch(single)
            report.fail(f"dx projected on a random ±1 direction differs from finite differences in row {row} "
                        f"({case}); bisection found element {column}")
            report.bad_elements += 1
            report.worst = Worst(row, column, None, float(analytic[row, column]), float(element_numeric[row]),
                                 None if "dx" not in exact else float(exact["dx"][row, column]),
                                 float(element_tolerance[row]),
                                 f"{NOISE_FACTOR:g} × difference noise + {dtype} floor {FLOOR[dtype]:g} × |dx_i|", case,
                                 False)
            return
    if "dx" in exact:
        scale = _row_scale(exact["dx"], _term_scale(signature, problem, arrays))[:, None]
        error = np.abs(analytic - exact["dx"]) / (EXACT_FLOOR[dtype] * scale)
        if (error > 1).any():
            position = np.unravel_index(np.argmax(error), error.shape)
            report.fail(f"dx differs from the exact result at {_where(position)} ({case})")
            report.bad_elements += int((error > 1).sum())
            report.worst = Worst(int(position[0]), int(position[1]), None, float(analytic[position]),
                                 float(exact["dx"][position]), float(exact["dx"][position]),
                                 float(EXACT_FLOOR[dtype] * scale[position[0], 0]),
                                 f"{EXACT_FLOOR[dtype]:g} × row scale against the exact result", case, False)


def _bisect(mismatch, direction, row) -> int:
    """Halve the support of the direction in one row, following the half that still mismatches."""
    candidates = np.arange(direction.shape[1])
    while len(candidates) > 1:
        halves = np.array_split(candidates, 2)
        ratios = []
        for half in halves:
            masked = np.zeros_like(direction)
            masked[row, half] = direction[row, half]
            error, tolerance, _, _ = mismatch(masked)
            ratios.append(error[row] / tolerance[row])
        candidates = halves[int(np.argmax(ratios))]
    return int(candidates[0])


def _structural_checks(report, function, signature, problem, case, dtype, keywords, rng):
    """Cheap properties: linear in g, vjp(0) = 0, repeatable, and Σ dx = 0 for a shift-invariant forward."""
    _, x, t = case
    arrays = {"x": x, "t": t, "g": rng.normal(size=x.shape)}
    if "y" in signature.takes:
        arrays["y"] = _as_given(problem.forward(x, t), np.dtype(dtype))
    if "J" in signature.returns:
        return
    first = call_under_test(function, signature, arrays, dtype, keywords)[-1]
    again = call_under_test(function, signature, arrays, dtype, keywords)[-1]
    tolerance = FLOOR[dtype] * (np.abs(first).max() + 1e-300)
    report.checks.append(("repeatable", bool(np.abs(first - again).max() <= tolerance), ""))
    if "g" in signature.takes:
        other = dict(arrays, g=rng.normal(size=x.shape))
        combined = dict(arrays, g=2 * arrays["g"] - 3 * other["g"])
        second = call_under_test(function, signature, other, dtype, keywords)[-1]
        mixed = call_under_test(function, signature, combined, dtype, keywords)[-1]
        linear = np.abs(mixed - (2 * first - 3 * second)).max() <= 10 * FLOOR[dtype] * (np.abs(mixed).max() + 1e-300)
        report.checks.append(("linear in g", bool(linear), ""))
        zero = call_under_test(function, signature, dict(arrays, g=np.zeros_like(x)), dtype, keywords)[-1]
        report.checks.append(("vjp(0) = 0", bool(np.abs(zero).max() == 0), ""))
    shifted = problem.forward(x + 1.25, t)
    if np.allclose(shifted, problem.forward(x, t), rtol=1e-12, atol=1e-12):
        sums = np.abs(first.sum(-1)) / (np.abs(first).sum(-1) + 1e-300)
        report.checks.append(("sums to 0 (shift-invariant)", bool(sums.max() <= 100 * FLOOR[dtype]), ""))
    for name, ok, _ in report.checks:
        if not ok:
            report.fail(f"structural check failed: {name}")
