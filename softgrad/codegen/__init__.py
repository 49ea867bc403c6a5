"""derive → lower → emit: NumPy and C from a checked derivation.

`lower` turns a one-index derivation's results into per-row kernels (stability rewrites, reductions,
names), `schedule` orders their loops, `backends/` print them through SymPy's printers and the Jinja2
templates of `softgrad/templates/`; `emit` is the entry point, `build` compiles and imports what was
generated. Specs with several index ranges are lowered by `tensor_numpy` and `tensor_c` (a second lowering
that the one-pipeline issue is folding into the first; see docs/codegen.md)."""
