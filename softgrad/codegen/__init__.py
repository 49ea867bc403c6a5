"""derive → lower → emit: NumPy and C from a checked derivation.

`lower` turns a one-index derivation's results into per-row kernels (stability rewrites, reductions,
names), `schedule` orders their loops, `backends/` print them through SymPy's printers and the Jinja2
templates of `softgrad/templates/`; `emit` is the entry point, `build` compiles and imports what was
generated. Specs with several index ranges (one-index specs too, for the torch and JAX modules and the C they
call, with the row index written out) are planned by `plan` (which statements each function runs, what the pair
forward_saving/backward keeps, blocks of rows by `blocking`) and lowered by `tensor_numpy` (NumPy, and the torch
and JAX dialects of `dialects`) and `tensor_c` (a second lowering that the one-pipeline issue is folding into the
first; see docs/codegen.md)."""
