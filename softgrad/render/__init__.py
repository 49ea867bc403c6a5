"""derive → render: a Derivation as text, LaTeX, Markdown, HTML (MathML) or JSON, through Jinja2 templates.

Importing it registers its printers with the derivation layer (Derivation.render, a reason's text), which
does not import this layer above it."""

from softgrad.derive import prose, steps
from softgrad.render.printers import inline_text
from softgrad.render.render import FORMATS, latex_display, render

prose.use_printers(inline=inline_text)
steps.use_renderers(document=render, latex_display=latex_display)

__all__ = ["FORMATS", "render"]
