"""derive → lower: what generated code computes, before any language — per-row kernels (`kernel`, `rows`,
`schedule`) and the plan of functions over named arrays (`plan`, `blocking`)."""
