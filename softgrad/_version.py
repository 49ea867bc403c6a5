"""softgrad's version, in a module of its own: generated files, documents and reports name it without
importing the package (and through it every stage)."""

__version__ = "0.1.0"
