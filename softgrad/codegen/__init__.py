"""derive → lower → emit: NumPy, C, torch and JAX from a checked derivation.

- `lower/` decides what to compute, before any language: `rows` turns a one-row derivation's results into per-row
  kernels (`kernel`: stability rewrites, reductions, names) and `schedule` orders their loops; `plan` says which
  statements each function over named arrays runs and what the pair forward_saving/backward keeps, `blocking`
  where a function runs a block of rows at a time.
- `backends/` print it, one folder per language (`c/`, `numpy/`, each with `rows` for per-row kernels and `arrays`
  for functions over named arrays) through SymPy's printers (`printers`) and the Jinja2 templates of
  `softgrad/templates/`; `frameworks` prints the torch and JAX modules with the array printer in their dialects.
- `emit` is the entry point (it asks a backend; it has no branch on the language), `build` compiles and imports
  what was generated.

The two lowerings (per-row kernels and array functions) are still two: see issue #27's notes and
docs/codegen.md."""
