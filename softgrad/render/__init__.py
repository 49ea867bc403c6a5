"""derive → render: a Derivation as text, LaTeX, Markdown, HTML (MathML) or JSON, through Jinja2 templates."""

from softgrad.render.render import FORMATS, render

__all__ = ["FORMATS", "render"]
