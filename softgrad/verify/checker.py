"""Check a gradient against finite differences of the forward function and, where known, the exact result.

Small n: the full Jacobian by Richardson central differences, every element compared. Large n: random
projections ⟨dx, u⟩ against directional differences, then bisection to the wrong element. Tolerances
come from the differences' own noise estimate plus a per-dtype floor relative to the row's scale.
"""

from __future__ import annotations

import sys

import numpy as np

from softgrad.verify import differences
from softgrad.verify.problem import Problem
from softgrad.verify.report import Report, Worst
from softgrad.errors import SoftgradError
from softgrad.verify.signatures import Signature, WrongOutput, call_under_test

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
    one_hot = np.zeros((rows, size))  # not np.eye(size)[…]: that is n × n, 80 GB at n = 1e5
    one_hot[np.arange(rows), rng.integers(0, size, rows)] = 1.0
    soft = rng.uniform(0.01, 1, (rows, size))
    targets += [("one-hot targets", one_hot), ("soft targets", soft / soft.sum(1, keepdims=True))]
    if problem.constraint is None:
        targets.append(("unnormalised targets", rng.uniform(0, 2, (rows, size))))
    elif problem.constraint != 1.0:
        targets = [(name, t * problem.constraint) for name, t in targets]
    return [(f"{name}, {target_name}", x, t) for name, x in cases for target_name, t in targets]


class _Progress:
    """A one-line progress display on stderr, only when stderr is a terminal and the check is long."""

    def __init__(self, total: int, enabled: bool):
        self.total, self.count = total, 0
        self.enabled = enabled and sys.stderr.isatty()

    def step(self, label: str) -> None:
        self.count += 1
        if self.enabled:
            filled = int(20 * self.count / self.total)
            sys.stderr.write(f"\rverify [{'#' * filled}{'.' * (20 - filled)}] {self.count}/{self.total} {label[:40]:40}")
            sys.stderr.flush()

    def done(self) -> None:
        if self.enabled:
            sys.stderr.write("\r" + " " * 90 + "\r")
            sys.stderr.flush()


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
           size: int = 7, rows: int = 4, seed: int = 0, reduction: str = "sum",
           against: str = "finite differences", mode: str = "auto") -> Report:
    """Check `function` (with `signature`) against `problem`; returns the report (never raises on FAIL).

    mode: "full" (every element by finite differences), "projections" (random projections and
    bisection), or "auto" (full up to n = 64).
    """
    rng = np.random.default_rng(seed)
    if mode == "auto":
        mode = "full" if size <= FULL_JACOBIAN_UP_TO or signature.returns == ("J",) else "projections"
    mode = {"full": "full Jacobian", "projections": "random projections"}[mode]
    report = Report(label, signature.text, against, dtype, mode, seed, differences.DEFAULT_STEP, 0)
    cases = make_cases(problem, rows, size, rng)  # projections too: extreme logits, near ties, every target kind
    representable = np.dtype(dtype)
    cases = [(case, _as_given(x, representable), _as_given(t, representable)) for case, x, t in cases]
    progress = _Progress(len(cases), enabled=size * rows >= 100_000)
    for case, x, t in cases:
        progress.step(case)
        upstream = _as_given(rng.normal(size=x.shape), representable)
        arrays = {"x": x, "t": t, "g": upstream}
        if "y" in signature.takes:
            arrays["y"] = _as_given(problem.forward(x, t), representable)
        try:
            outputs = dict(zip(signature.returns, call_under_test(function, signature, arrays, dtype)))
        except WrongOutput as problem:
            report.fail(f"{problem} (inputs: {case})")
            break
        if reduction == "mean" and "dx" in outputs:
            outputs["dx"] = outputs["dx"] * rows
        first = case == cases[0][0]
        if mode == "full Jacobian" and (first or size <= FULL_JACOBIAN_UP_TO or "J" in outputs):
            _compare_full(report, signature, problem, case, arrays, outputs, dtype)
        else:
            _compare_projections(report, signature, problem, case, arrays, outputs, dtype, rng)
        if "loss" in outputs:
            loss = problem.forward(x, t) * (1 / rows if reduction == "mean" else 1)
            error = np.abs(outputs["loss"] - loss) / _row_scale(loss[:, None])
            if not (error <= EXACT_FLOOR[dtype] * 100).all():  # NaN-safe: a NaN error is a failure
                report.fail(f"loss differs from the forward function by {error.max():.3g} (relative) for {case}")
        if not report.passed:
            break
    progress.done()
    if report.passed:
        try:
            _structural_checks(report, function, signature, problem, cases[0], dtype, rng)
        except WrongOutput as problem_found:
            report.fail(f"{problem_found} (inputs: {cases[0][0]}, structural checks)")
    if report.elements == 0 and report.passed:  # never a pass that compared nothing
        raise SoftgradError("no element was compared: nothing was checked")
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
    if signature.returns == ("J",):
        difference = differences.jacobian(forward, x)
        return {"J": (difference.value, difference.noise)}

    def weighted(stacked):  # ⟨g, f(x)⟩ per perturbed row: the VJP without an n × n Jacobian
        repeat = len(stacked) // rows
        return (forward(stacked) * np.tile(g, (repeat, 1))).sum(-1)[:, None]

    difference = differences.jacobian(weighted, x)
    return {"dx": (difference.value[:, 0, :], difference.noise[:, 0, :])}


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
        _require_finite(value, noise, case)
        analytic = outputs[role]
        scale = _row_scale(value, terms)[(...,) + (None,) * (value.ndim - 1)]
        tolerance = NOISE_FACTOR * noise + FLOOR[dtype] * scale
        error = np.abs(analytic - value)
        bad = ~(error <= tolerance)  # NaN-safe: what cannot be compared is not a match
        report.elements += analytic.size
        if role in exact:
            exact_tolerance = np.broadcast_to(
                EXACT_FLOOR[dtype] * _row_scale(exact[role], terms)[(...,) + (None,) * (value.ndim - 1)], analytic.shape)
            exact_bad = ~(np.abs(analytic - exact[role]) <= exact_tolerance)
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


def _require_finite(reference: np.ndarray, tolerance: np.ndarray, case: str) -> None:
    """A reference or tolerance that is NaN or inf cannot judge anything: stop, never pass."""
    if not (np.isfinite(reference).all() and np.isfinite(tolerance).all()):
        raise SoftgradError(f"the reference (the spec's forward function) is not finite for the inputs {case}: "
                            "it overflows or is undefined there, so the gradient cannot be checked at them")


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
    analytic = outputs["dx"]
    report.elements += analytic.size
    direction = None
    for _ in range(probes):
        direction = rng.choice([-1.0, 1.0], size=analytic.shape)
        error, tolerance, numeric = _projection_mismatch(problem, arrays, analytic, direction, dtype)
        _require_finite(numeric, tolerance, case)
        if not (error <= tolerance).all():
            row = int(np.argmax(error / tolerance))
            one_row = {k: (None if v is None else v[row:row + 1]) for k, v in arrays.items()}
            column = _bisect(problem, one_row, analytic[row:row + 1], direction[row:row + 1], dtype)
            single = np.zeros((1, analytic.shape[1]))
            single[0, column] = 1.0
            _, element_tolerance, element_numeric = _projection_mismatch(problem, one_row, analytic[row:row + 1],
                                                                          single, dtype)
            exact = _exact(signature, problem, one_row).get("dx")
            report.fail(f"dx projected on a random ±1 direction differs from finite differences in row {row} "
                        f"({case}); bisection found element {column}")
            report.bad_elements += 1
            report.worst = Worst(row, column, None, float(analytic[row, column]), float(element_numeric[0]),
                                 None if exact is None else float(exact[0, column]), float(element_tolerance[0]),
                                 f"{NOISE_FACTOR:g} × difference noise + {dtype} floor {FLOOR[dtype]:g} × |dx_i|",
                                 case, False)
            return
    exact = _exact(signature, problem, arrays)
    if "dx" in exact:
        scale = _row_scale(exact["dx"], _term_scale(signature, problem, arrays))[:, None]
        error = np.abs(analytic - exact["dx"]) / (EXACT_FLOOR[dtype] * scale)
        _require_finite(exact["dx"], scale, case)
        if not (error <= 1).all():
            position = np.unravel_index(np.argmax(error), error.shape)
            report.fail(f"dx differs from the exact result at {_where(position)} ({case})")
            report.bad_elements += int((error > 1).sum())
            report.worst = Worst(int(position[0]), int(position[1]), None, float(analytic[position]),
                                 float(exact["dx"][position]), float(exact["dx"][position]),
                                 float(EXACT_FLOOR[dtype] * scale[position[0], 0]),
                                 f"{EXACT_FLOOR[dtype]:g} × row scale against the exact result", case, False)


def _projection_mismatch(problem, arrays, analytic, direction, dtype):
    """Per row: |⟨dx, u⟩ − D_u|, its tolerance, and D_u (the directional difference of the forward)."""
    x, t, g = arrays["x"], arrays["t"], arrays["g"]
    rows = len(x)

    def objective(stacked):
        repeat = len(stacked) // rows
        values = problem.forward(stacked, None if t is None else np.tile(t, (repeat, 1)))
        return values if problem.is_loss else (values * np.tile(g, (repeat, 1))).sum(-1)

    numeric = differences.directional(objective, x, direction)
    projected = (analytic * direction).sum(-1)
    scale = np.abs(analytic * direction).sum(-1)
    tolerance = NOISE_FACTOR * numeric.noise + FLOOR[dtype] * np.maximum(scale, 1e-3 * scale.max() + 1e-300)
    return np.abs(projected - numeric.value), tolerance, numeric.value


def _bisect(problem, one_row, analytic, direction, dtype) -> int:
    """Halve the support of the direction in one row, following the half that carries the mismatch.

    Both sides of the comparison are linear in the direction, so the other half's signed mismatch is
    the whole's minus this half's: one directional difference per level.
    """
    def signed(mask):
        masked = np.where(mask, direction, 0.0)
        _, tolerance, numeric = _projection_mismatch(problem, one_row, analytic, masked, dtype)
        return float((analytic * masked).sum() - numeric[0]), float(tolerance[0])

    candidates = np.arange(direction.shape[1])
    whole, _ = signed(np.isin(np.arange(direction.shape[1]), candidates))
    while len(candidates) > 1:
        first, second = np.array_split(candidates, 2)
        mask = np.zeros(direction.shape[1], dtype=bool)
        mask[first] = True
        in_first, _ = signed(mask[None, :])
        in_second = whole - in_first
        if abs(in_first) >= abs(in_second):
            candidates, whole = first, in_first
        else:
            candidates, whole = second, in_second
    return int(candidates[0])


def _structural_checks(report, function, signature, problem, case, dtype, rng):
    """Cheap properties: linear in g, vjp(0) = 0, repeatable, and Σ dx = 0 for a shift-invariant forward."""
    _, x, t = case
    arrays = {"x": x, "t": t, "g": rng.normal(size=x.shape)}
    if "y" in signature.takes:
        arrays["y"] = _as_given(problem.forward(x, t), np.dtype(dtype))
    if "J" in signature.returns:
        return
    first = call_under_test(function, signature, arrays, dtype)[-1]
    again = call_under_test(function, signature, arrays, dtype)[-1]
    tolerance = FLOOR[dtype] * (np.abs(first).max() + 1e-300)
    report.checks.append(("repeatable", bool(np.abs(first - again).max() <= tolerance), ""))
    if "g" in signature.takes:
        other = dict(arrays, g=rng.normal(size=x.shape))
        combined = dict(arrays, g=2 * arrays["g"] - 3 * other["g"])
        second = call_under_test(function, signature, other, dtype)[-1]
        mixed = call_under_test(function, signature, combined, dtype)[-1]
        linear = np.abs(mixed - (2 * first - 3 * second)).max() <= 10 * FLOOR[dtype] * (np.abs(mixed).max() + 1e-300)
        report.checks.append(("linear in g", bool(linear), ""))
        zero = call_under_test(function, signature, dict(arrays, g=np.zeros_like(x)), dtype)[-1]
        report.checks.append(("vjp(0) = 0", bool(np.abs(zero).max() == 0), ""))
    shifted = problem.forward(x + 1.25, t)
    if np.allclose(shifted, problem.forward(x, t), rtol=1e-12, atol=1e-12):
        sums = np.abs(first.sum(-1)) / (np.abs(first).sum(-1) + 1e-300)
        report.checks.append(("sums to 0 (shift-invariant)", bool(sums.max() <= 100 * FLOOR[dtype]), ""))
    for name, ok, _ in report.checks:
        if not ok:
            report.fail(f"structural check failed: {name}")
