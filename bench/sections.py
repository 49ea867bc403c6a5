"""bench/results.md holds one section per benchmark script; each script rewrites only its own."""

from __future__ import annotations

import re
from pathlib import Path


def replace_section(path: Path, name: str, text: str) -> None:
    """Put `text` between this section's markers in `path`, keeping every other section. Text outside any
    markers (a file written before sections existed) belongs to the "kernels" section. Names are words,
    spaces and hyphens ("long rows", "tensor-c")."""
    old = path.read_text(encoding="utf-8") if path.exists() else ""
    blocks = dict(re.findall(r"<!-- begin ([\w -]+) -->\n(.*?)<!-- end \1 -->\n", old, flags=re.S))
    if "kernels" not in blocks:
        legacy = re.sub(r"<!-- begin ([\w -]+) -->\n.*?<!-- end \1 -->\n", "", old, flags=re.S).strip()
        if legacy:
            blocks = {"kernels": legacy + "\n", **blocks}
    blocks[name] = text.rstrip() + "\n"
    order = ["kernels", *sorted(n for n in blocks if n != "kernels")]
    path.write_text("\n".join(f"<!-- begin {n} -->\n{blocks[n]}<!-- end {n} -->\n" for n in order if n in blocks),
                    encoding="utf-8")
