"""The NumPy backend: per-row kernels as blocked ufunc programs (`rows`, `ufuncs`), and functions over named arrays
as array expressions (`arrays`), printed in NumPy's, torch's or JAX's spelling (`dialects`)."""
