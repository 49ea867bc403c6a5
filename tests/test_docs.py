"""The docs cannot drift from the tool: runnable blocks run, the gallery is current, HTML renders."""

import os
import re
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from conftest import require_tool

import softgrad

pytestmark = pytest.mark.slow  # subprocesses, compilers and browsers: CI runs them; -m 'not slow' skips

ROOT = Path(__file__).resolve().parent.parent
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
RUNNABLE = re.compile(r"^```sh runnable\n(.*?)^```", re.S | re.M)


def runnable_blocks():
    for document in DOCUMENTS:
        for number, block in enumerate(RUNNABLE.findall(document.read_text(encoding="utf-8")), start=1):
            yield pytest.param(block, id=f"{document.relative_to(ROOT)}#{number}")


def _environment():
    """The installed softgrad first on PATH, as a user who installed it would have it."""
    return dict(os.environ, PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))


def test_every_document_has_runnable_examples():
    documents = {d.name for d in DOCUMENTS if RUNNABLE.search(d.read_text(encoding="utf-8"))}
    assert {"getting-started.md", "list.md", "derive.md", "codegen.md", "verify.md"} <= documents


@pytest.mark.parametrize("block", list(runnable_blocks()))
def test_runnable_blocks_run(block, tmp_path):
    require_tool("cc")
    result = subprocess.run(["bash", "-euo", "pipefail", "-c", block], cwd=tmp_path, capture_output=True, text=True,
                            env=_environment(), timeout=600)
    assert result.returncode == 0, f"{block}\n--- stdout\n{result.stdout[-2000:]}\n--- stderr\n{result.stderr[-2000:]}"


def test_readme_first_command_works_in_a_fresh_virtual_environment(tmp_path):
    """`pip install . && softgrad derive softmax`, verbatim from the README, in a new venv."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    command = re.search(r"```sh\n(pip install \. && softgrad derive softmax)\n```", readme).group(1)
    checkout = tmp_path / "softgrad"
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    for name in files:
        if (ROOT / name).is_file():
            (checkout / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, checkout / name)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    environment = dict(os.environ, PATH=str(venv / "bin") + os.pathsep + os.environ.get("PATH", ""),
                       VIRTUAL_ENV=str(venv), PIP_DISABLE_PIP_VERSION_CHECK="1")
    environment.pop("PYTHONPATH", None)
    result = subprocess.run(["bash", "-c", command], cwd=checkout, capture_output=True, text=True, env=environment,
                            timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Kronecker combination" in result.stdout and "✓ proved" in result.stdout


def test_gallery_is_current(tmp_path):
    """Regenerating the gallery (under another hash seed) reproduces the committed pages byte for byte."""
    result = subprocess.run([sys.executable, str(ROOT / "docs" / "make_gallery.py"), str(tmp_path)],
                            capture_output=True, text=True, env=dict(_environment(), PYTHONHASHSEED="12345"),
                            timeout=600)
    assert result.returncode == 0, result.stderr
    committed = {
        p.relative_to(ROOT / "docs" / "gallery"): p.read_bytes()
        for p in (ROOT / "docs" / "gallery").rglob("*")
        if p.is_file()
    }
    fresh = {p.relative_to(tmp_path): p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    stale = sorted(str(name) for name in set(committed) | set(fresh) if committed.get(name) != fresh.get(name))
    assert not stale, f"docs/gallery is stale (run python docs/make_gallery.py): {stale[:5]}"


CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run"]

LAYOUT_PROBE = """<script>
addEventListener('load', () => {
  const fractions = [...document.querySelectorAll('mfrac')];
  const stacked = fractions.filter(f => {
    const [top, bottom] = [...f.children].map(c => c.getBoundingClientRect());
    return top && bottom && top.height > 0 && top.bottom <= bottom.top + 1;
  }).length;
  const maths = [...document.querySelectorAll('math[display="block"]')];
  const tall = maths.filter(m => m.getBoundingClientRect().height > 20).length;
  document.body.setAttribute('data-probe',
    `fractions=${fractions.length} stacked=${stacked} maths=${maths.length} tall=${tall}`);
});
</script></body>"""


def _png_pixels(path: Path) -> tuple[int, int, bytes]:
    """Width, height and raw scanlines of a PNG (enough to tell a blank page from a drawn one)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    position, chunks, width, height = 8, [], 0, 0
    while position < len(data):
        length, kind = struct.unpack(">I4s", data[position:position + 8])
        body = data[position + 8:position + 8 + length]
        if kind == b"IHDR":
            width, height = struct.unpack(">II", body[:8])
        elif kind == b"IDAT":
            chunks.append(body)
        position += 12 + length
    return width, height, zlib.decompress(b"".join(chunks))


def test_html_renders_as_laid_out_mathml_in_headless_chromium(tmp_path):
    chromium = require_tool("chromium")
    page = tmp_path / "softmax.html"
    subprocess.run([sys.executable, "-m", "softgrad", "derive", "softmax", "--format", "html", "-o", str(page)],
                   check=True, timeout=120)
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", LAYOUT_PROBE), encoding="utf-8")
    profile = ["--user-data-dir=" + str(tmp_path / "profile")]
    dom = subprocess.run([chromium, *CHROMIUM_FLAGS, *profile, "--dump-dom", probe.as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    found = re.search(r'data-probe="fractions=(\d+) stacked=(\d+) maths=(\d+) tall=(\d+)"', dom)
    assert found, "the layout probe did not run"
    fractions, stacked, maths, tall = map(int, found.groups())
    assert fractions > 10 and stacked == fractions, "MathML fractions are not laid out (raw tags?)"
    assert maths > 10 and tall == maths, "display math has no height"
    screenshot = tmp_path / "softmax.png"
    subprocess.run([chromium, *CHROMIUM_FLAGS, *profile, f"--screenshot={screenshot}", "--window-size=1000,1400",
                    page.as_uri()], capture_output=True, timeout=120)
    width, height, pixels = _png_pixels(screenshot)
    assert (width, height) == (1000, 1400)
    ink = sum(1 for byte in pixels[:: 97] if byte < 200) / len(pixels[:: 97])
    assert ink > 0.01, "the page is blank"


def test_jupyter_display_renders(tmp_path):
    """Kernel-free: what Jupyter shows (text/markdown, text/latex) is valid — the LaTeX compiles."""
    pdflatex = require_tool("pdflatex")
    derivation = softgrad.derive("cross-entropy-onehot")
    markdown = derivation._repr_markdown_()
    assert markdown.startswith("# cross-entropy-onehot") and markdown.count("$$") >= 2 * len(derivation.steps)
    latex = derivation._repr_latex_()
    assert latex.count("&&") == len(derivation.steps)
    document = tmp_path / "display.tex"
    document.write_text("\\documentclass{article}\\usepackage{amsmath,amssymb}\\begin{document}\n" + latex
                        + "\n\\end{document}\n", encoding="utf-8")
    run = subprocess.run([pdflatex, "-interaction=nonstopmode", "-halt-on-error", document.name], cwd=tmp_path,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-1500:]
