"""Every tolerance softgrad judges by, in one place, each named for what it judges.

Relative tolerances scale with the size of what is compared (a step's value, a row's scale); the dtype is
that of the code being judged. Derivation steps are judged in complex doubles (or 30-digit mpmath) against
a complex-step derivative: exact to rounding, so one tight bound serves every spec.
"""

#: A derivation step: each form equals its left-hand side to this, relative to max(1, |value|) — softgrad's own
#: steps as they are checked, and the links of a derivation written by hand (verify --derivation) alike.
STEP = 1e-9

#: Generated kernels of a one-index spec against the 40-digit reference, normwise (codegen --check).
GENERATED_KERNEL = {"float64": 1e-13, "float32": 2e-5}
#: A generated module of a several-index spec against the derivation's formulas, entry by entry (codegen --check).
GENERATED_MODULE = {"float64": 1e-11, "float32": 2e-5}
#: A generated module's gradient along a random direction against central differences of its own forward()
#: (codegen --check): the step, and the tolerance relative to max(1, |the projected gradient|). Float32's
#: forward rounds at 1e-7, so its step is 1e-2 and what it can show coarse.
GENERATED_MODULE_STEP = {"float64": 1e-6, "float32": 1e-2}
GENERATED_MODULE_AGAINST_DIFFERENCES = {"float64": 1e-6, "float32": 2e-2}
#: Per-row kernels against the 40-digit directional difference of the forward (codegen --check): the kernel's
#: own tolerance, but no tighter than the float64 rounding of a projection over a row.
GENERATED_KERNEL_AGAINST_DIFFERENCES = 1e-9

#: User code (verify), one-index: the floor of the tolerance against central differences, relative to the row's
#: scale (the differences' own noise is added to it), and the floor against the exact result (no such noise).
USER_CODE_AGAINST_DIFFERENCES = {"float64": 1e-8, "float32": 1e-4}
USER_CODE_AGAINST_EXACT = {"float64": 1e-11, "float32": 2e-5}
#: User code (verify), several indices: entry by entry against the exact result (grown with the square of the
#: inputs' order: rounding in products of two inputs), and against central differences with step 1e-6.
USER_CODE_SEVERAL_INDICES = {"float64": 1e-9, "float32": 2e-4}
USER_CODE_SEVERAL_INDICES_DIFFERENCES = 1e-6
#: User code (verify), every spec: the same inputs give the same gradients to this, relative to their largest
#: entry (ten times it, against the terms combined, for gradients linear in the upstream gradient; a hundred
#: times it for rows that must add up to 0).
USER_CODE_STRUCTURE = {"float64": 1e-10, "float32": 1e-5}
