"""Comparing a gradient with its references: finite differences (full Jacobian or random projections)
and the exact derived result, with tolerances from the differences' own noise plus a per-dtype floor."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from softgrad import tolerances
from softgrad.errors import SoftgradError
from softgrad.verify import differences
from softgrad.verify.hints import constant_factor_hints
from softgrad.verify.localise import bisect, record_worst, where
from softgrad.verify.problem import Problem, exact_gradient
from softgrad.verify.report import Report, Worst
from softgrad.verify.signatures import Arrays, Signature

FLOOR = tolerances.USER_CODE_AGAINST_DIFFERENCES
EXACT_FLOOR = tolerances.USER_CODE_AGAINST_EXACT
NOISE_FACTOR = 4.0
#: Code in a narrow dtype may err by this many times what softgrad's own derived kernel errs in that dtype.
OWN_KERNEL_FACTOR = 4.0


def row_scale(reference: np.ndarray, terms: np.ndarray | None = None) -> np.ndarray:
    """Per row: the largest |value|, or the size of the terms it is computed from if larger (a correct
    float32 y(g − Σgy) errs by ~eps·|y||g| however small dx is), and at least 1e-3 of the batch's."""
    flat = np.abs(reference).reshape(reference.shape[0], -1).max(axis=1)
    if terms is not None:
        flat = np.maximum(flat, terms)
    batch = flat.max() if flat.size else 0.0
    return np.asarray(np.maximum(flat, max(1e-3 * batch, 1e-300)))


def _exact_how(dtype: str) -> str:
    """How the tolerance against the exact result is set, as the report says it."""
    own = "" if np.dtype(dtype) == np.float64 else (f" (or {OWN_KERNEL_FACTOR:g} × the error of softgrad's own "
                                                     f"{dtype} kernel there, if larger)")
    return f"{EXACT_FLOOR[dtype]:g} × row scale against the exact result{own}"


def attainable(signature: Signature, problem: Problem, arrays: Arrays, exact: dict[str, np.ndarray], dtype: str,
               role: str) -> np.ndarray:
    """Per row: how far softgrad's own derived kernel, run in `dtype`, is from the exact result — what rounding in
    that dtype allows this function at these inputs. 0 in float64, and where well conditioned far below the
    floor; an ill-conditioned function (exp(exp(exp(exp(x)))) near float32's largest values) needs more."""
    if np.dtype(dtype) == np.float64 or role not in exact:
        return np.zeros(len(arrays["x"]))
    narrow = {name: value.astype(dtype) if isinstance(value, np.ndarray) and value.dtype.kind == "f" else value
              for name, value in arrays.items()}
    with np.errstate(all="ignore"):
        own = exact_gradient(signature, problem, narrow).get(role)
        if own is None:
            return np.zeros(len(arrays["x"]))
        error = np.abs(np.asarray(own, dtype=np.float64) - exact[role]).reshape(len(own), -1).max(axis=1)
    return np.asarray(np.where(np.isfinite(error), error, 0.0))


def term_scale(signature: Signature, problem: Problem, arrays: Arrays) -> np.ndarray | None:
    """The magnitude of what a gradient is built from: max|g|·max|f(x)| for a VJP, Σ|t| for a loss (0 in a
    row where the float64 forward overflows: there the 40-digit result's own scale counts)."""
    x, t, g = arrays["x"], arrays["t"], arrays["g"]
    if problem.is_loss:
        return None if t is None else np.abs(t).sum(-1)
    if signature.returns == ("J",):
        return None
    scale = np.abs(g).max(-1) * np.abs(problem.forward(x, t)).max(-1)
    return np.asarray(np.where(np.isfinite(scale), scale, 0.0))


def numeric_gradient(signature: Signature, problem: Problem,
                     arrays: Arrays) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Finite-difference reference for the signature's outputs, with its noise: (values, noise)."""
    x, t, g = arrays["x"], arrays["t"], arrays["g"]
    rows = len(x)

    def forward(stacked: np.ndarray) -> np.ndarray:
        repeat = len(stacked) // rows
        return np.asarray(problem.forward(stacked, None if t is None else np.tile(t, (repeat, 1))))

    if problem.is_loss:
        difference = differences.jacobian(lambda s: forward(s)[:, None], x)
        return {"dx": (difference.value[:, 0, :], difference.noise[:, 0, :])}
    if signature.returns == ("J",):
        difference = differences.jacobian(forward, x)
        return {"J": (difference.value, difference.noise)}

    def weighted(stacked: np.ndarray) -> np.ndarray:  # ⟨g, f(x)⟩ per perturbed row: the VJP without an n × n Jacobian
        repeat = len(stacked) // rows
        return np.asarray((forward(stacked) * np.tile(g, (repeat, 1))).sum(-1)[:, None])

    difference = differences.jacobian(weighted, x)
    return {"dx": (difference.value[:, 0, :], difference.noise[:, 0, :])}


def precise_gradient(signature: Signature, problem: Problem, arrays: Arrays) -> dict[str, np.ndarray]:
    """The signature's gradient from the derived formulas at 40 digits, by role ({} without a spec)."""
    x, t, g = arrays["x"], arrays["t"], arrays["g"]
    if problem.derivation is None:
        return {}
    if problem.is_loss:
        kernel, upstream = "loss_and_grad", None
    elif signature.returns == ("J",):
        kernel, upstream = "jacobian", None
    else:
        kernel, upstream = "vjp", g
    values = problem.high_precision(kernel, x, t, upstream)
    gradient_name, jacobian_name = problem.derivation.output_names
    if kernel == "jacobian":
        return {"J": values[jacobian_name]} if jacobian_name in values else {}
    return {"dx": values[gradient_name]} if gradient_name in values else {}


def repair_overflow(report: Report, signature: Signature, problem: Problem, case: str, arrays: Arrays,
                    numeric: dict[str, tuple[np.ndarray, np.ndarray]], exact: dict[str, np.ndarray]) -> None:
    """Where the float64 reference (finite differences of the forward, or the spec's kernels) is NaN or
    inf, put the 40-digit derived result in its place; where that is not finite either, or there is no
    spec, stop: a reference that cannot judge never passes anything."""
    for role, (value, noise) in numeric.items():
        axes = tuple(range(1, value.ndim))
        broken = ~(np.isfinite(value).all(axis=axes) & np.isfinite(noise).all(axis=axes))
        if role in exact:
            broken |= ~np.isfinite(exact[role]).all(axis=axes)
        if not broken.any():
            continue
        row = int(np.argmax(broken))
        precise = precise_gradient(signature, problem, arrays).get(role)
        if precise is None:
            raise SoftgradError(f"the forward function is not finite at the inputs {case} (row {row}): it overflows or "
                                "is undefined there, so it cannot judge the gradient (--extremes off if the code's "
                                "contract excludes such inputs)")
        if not np.isfinite(precise[broken]).all():
            raise SoftgradError(f"the spec's reference is undefined at the inputs {case} (row {row}): not finite even "
                                "at 40 digits, so the gradient cannot be judged there (--extremes off if these inputs "
                                "are outside the function's domain)")
        value[broken], noise[broken] = precise[broken], 0.0
        exact[role] = np.where(broken[(...,) + (None,) * len(axes)], precise, exact.get(role, precise))
        note = f"the float64 reference overflows at {case}: judged there by the 40-digit derived result"
        if note not in report.conventions:
            report.conventions.append(note)


def compare_full(report: Report, signature: Signature, problem: Problem, case: str, arrays: Arrays,
                 outputs: dict[str, np.ndarray], dtype: str) -> None:
    numeric = numeric_gradient(signature, problem, arrays)
    exact = exact_gradient(signature, problem, arrays)
    repair_overflow(report, signature, problem, case, arrays, numeric, exact)
    terms = term_scale(signature, problem, arrays)
    for role, (value, noise) in numeric.items():
        require_finite(value, noise, case)
        analytic = outputs[role]
        scale = row_scale(value, terms)[(...,) + (None,) * (value.ndim - 1)]
        tolerance = NOISE_FACTOR * noise + FLOOR[dtype] * scale
        error = np.abs(analytic - value)
        bad = ~(error <= tolerance)  # NaN-safe: what cannot be compared is not a match
        report.elements += analytic.size
        if role in exact:
            exact_tolerance = np.broadcast_to(np.maximum(
                EXACT_FLOOR[dtype] * row_scale(exact[role], terms),
                OWN_KERNEL_FACTOR * attainable(signature, problem, arrays, exact, dtype, role),
            )[(...,) + (None,) * (value.ndim - 1)], analytic.shape)
            exact_bad = ~(np.abs(analytic - exact[role]) <= exact_tolerance)
            # where the exact result (checked against 40 digits) itself misses the differences, they are the
            # float64 forward's rounding, amplified (1 − p with p near 1): the exact result decides there
            unreliable = ~(np.abs(exact[role] - value) <= tolerance) & ~exact_bad & np.isfinite(exact[role])
            if (bad & unreliable).any():
                bad &= ~unreliable
                note = ("finite differences of the float64 forward miss the exact result at some elements "
                        f"({case}, and others): the exact result decides there")
                if not any(line.startswith("finite differences of the float64 forward") for line in
                           report.conventions):
                    report.conventions.append(note)
            if exact_bad.any() and not bad.any():
                # below what finite differences can see, but not the exact result
                worst = np.unravel_index(np.argmax(np.abs(analytic - exact[role]) / exact_tolerance), analytic.shape)
                report.fail(f"{role} differs from the exact result by {np.abs(analytic - exact[role])[worst]:.3g} "
                            f"at {where(worst)} (tolerance {exact_tolerance[worst]:.3g}, {case}); "
                            "too small for finite differences to see")
                record_worst(report, signature.name_of(role), worst, analytic, value, exact.get(role),
                             exact_tolerance, _exact_how(dtype), case, arrays)
                report.bad_elements += int(exact_bad.sum())
        if bad.any():
            worst = np.unravel_index(np.argmax(error / tolerance), analytic.shape)
            report.fail(f"{role} does not match finite differences at {int(bad.sum())} element(s) ({case})")
            how = (f"{NOISE_FACTOR:g} × difference noise {noise[worst]:.2g} + {dtype} floor "
                   f"{FLOOR[dtype]:g} × row scale {scale[worst[0]].item():.3g}")
            record_worst(report, signature.name_of(role), worst, analytic, value, exact.get(role), tolerance, how, case,
                         arrays, problem.kinked)
            report.bad_elements += int(bad.sum())
            report.hint(*constant_factor_hints(analytic, exact.get(role, value), tolerance, len(analytic), role))


def require_finite(reference: np.ndarray, tolerance: np.ndarray, case: str) -> None:
    """A reference or tolerance that is NaN or inf cannot judge anything: stop, never pass."""
    if not (np.isfinite(reference).all() and np.isfinite(tolerance).all()):
        raise SoftgradError(f"the reference (the spec's forward function) is not finite for the inputs {case}: "
                            "it overflows or is undefined there, so the gradient cannot be checked at them")


def compare_projections(report: Report, signature: Signature, problem: Problem, case: str, arrays: Arrays,
                        outputs: dict[str, np.ndarray], dtype: str, rng: np.random.Generator, probes: int = 3) -> None:
    """⟨dx, u⟩ against the directional difference of the forward along u; bisection on a mismatch.
    Rows where the float64 forward overflows are compared entry by entry with the 40-digit result."""
    analytic = outputs["dx"]
    x, t = arrays["x"], arrays["t"]
    finite_rows = np.isfinite(np.asarray(problem.forward(x, t)).reshape(len(x), -1)).all(axis=1)
    if not finite_rows.all():
        broken = {k: (None if v is None else v[~finite_rows]) for k, v in arrays.items()}
        value = analytic[~finite_rows]
        stand_in = {"dx": (value * np.nan, value * np.nan)}
        repair_overflow(report, signature, problem, case, broken, stand_in, {})
        reference = stand_in["dx"][0]
        tolerance = EXACT_FLOOR[dtype] * row_scale(reference)[:, None]
        bad = ~(np.abs(value - reference) <= tolerance)
        report.elements += value.size
        if bad.any():
            report.fail(f"dx differs from the 40-digit derived result at {int(bad.sum())} element(s) ({case})")
            report.bad_elements += int(bad.sum())
        if not finite_rows.any():
            return
        arrays = {k: (None if v is None else v[finite_rows]) for k, v in arrays.items()}
        analytic = analytic[finite_rows]
    report.elements += analytic.size
    direction = None
    for _ in range(probes):
        direction = rng.choice([-1.0, 1.0], size=analytic.shape)
        error, tolerance, numeric = projection_mismatch(problem, arrays, analytic, direction, dtype)
        require_finite(numeric, tolerance, case)
        if not (error <= tolerance).all():
            row = int(np.argmax(error / tolerance))
            one_row = {k: (None if v is None else v[row:row + 1]) for k, v in arrays.items()}
            column = bisect(_signed_mismatch(problem, one_row, analytic[row:row + 1], direction[row:row + 1], dtype),
                            analytic.shape[1])
            single = np.zeros((1, analytic.shape[1]))
            single[0, column] = 1.0
            _, element_tolerance, element_numeric = projection_mismatch(problem, one_row, analytic[row:row + 1],
                                                                          single, dtype)
            exact_row = exact_gradient(signature, problem, one_row).get("dx")
            report.fail(f"dx projected on a random ±1 direction differs from finite differences in row {row} "
                        f"({case}); bisection found element {column}")
            report.bad_elements += 1
            whole = exact_gradient(signature, problem, arrays).get("dx")
            if whole is not None:  # the exact result of the whole batch shows whether it is a constant factor
                report.hint(*constant_factor_hints(analytic, whole, EXACT_FLOOR[dtype] * np.abs(whole), len(analytic)))
            report.worst = Worst(
                signature.name_of("dx"),
                (row, column),
                float(analytic[row, column]),
                float(element_numeric[0]),
                None if exact_row is None else float(exact_row[0, column]),
                float(element_tolerance[0]),
                f"{NOISE_FACTOR:g} × difference noise + {dtype} floor {FLOOR[dtype]:g} × |dx_i|",
                case,
                False,
            )
            return
    exact = exact_gradient(signature, problem, arrays)
    if "dx" in exact:
        repair_overflow(report, signature, problem, case, arrays, {"dx": (exact["dx"].copy(), 0 * analytic)}, exact)
        scale = np.maximum(row_scale(exact["dx"], term_scale(signature, problem, arrays)),
                           OWN_KERNEL_FACTOR * attainable(signature, problem, arrays, exact, dtype, "dx")
                           / EXACT_FLOOR[dtype])[:, None]
        error = np.abs(analytic - exact["dx"]) / (EXACT_FLOOR[dtype] * scale)
        require_finite(exact["dx"], scale, case)
        if not (error <= 1).all():
            position = np.unravel_index(np.argmax(error), error.shape)
            report.fail(f"dx differs from the exact result at {where(position)} ({case})")
            report.bad_elements += int((error > 1).sum())
            report.hint(*constant_factor_hints(analytic, exact["dx"], EXACT_FLOOR[dtype] * scale, len(analytic)))
            report.worst = Worst(signature.name_of("dx"), (int(position[0]), int(position[1])),
                                 float(analytic[position]), None, float(exact["dx"][position]),
                                 float(EXACT_FLOOR[dtype] * scale[position[0], 0]),
                                 _exact_how(dtype), case, False)


def projection_mismatch(problem: Problem, arrays: Arrays, analytic: np.ndarray, direction: np.ndarray,
                        dtype: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per row: |⟨dx, u⟩ − D_u|, its tolerance, and D_u (the directional difference of the forward)."""
    x, t, g = arrays["x"], arrays["t"], arrays["g"]
    rows = len(x)

    def objective(stacked: np.ndarray) -> np.ndarray:
        repeat = len(stacked) // rows
        values = problem.forward(stacked, None if t is None else np.tile(t, (repeat, 1)))
        return np.asarray(values if problem.is_loss else (values * np.tile(g, (repeat, 1))).sum(-1))

    numeric = differences.directional(objective, x, direction)
    projected = (analytic * direction).sum(-1)
    scale = np.abs(analytic * direction).sum(-1)
    tolerance = NOISE_FACTOR * numeric.noise + FLOOR[dtype] * np.maximum(scale, 1e-3 * scale.max() + 1e-300)
    return np.abs(projected - numeric.value), tolerance, numeric.value


def _signed_mismatch(problem: Problem, one_row: Arrays, analytic: np.ndarray, direction: np.ndarray,
                     dtype: str) -> Callable[[np.ndarray], float]:
    """For bisect: the signed projected mismatch of one row with the direction restricted to a mask."""
    def signed(mask: np.ndarray) -> float:
        masked = np.where(mask[None, :], direction, 0.0)
        _, _, numeric = projection_mismatch(problem, one_row, analytic, masked, dtype)
        return float((analytic * masked).sum() - numeric[0])

    return signed
