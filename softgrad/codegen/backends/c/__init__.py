"""The C99 backend: per-row kernels (`rows`), functions over named arrays with BLAS contractions (`arrays`), and
the branch-free math both print into their loops (`vector_math`)."""
