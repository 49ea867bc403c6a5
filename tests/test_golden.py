"""Golden outputs: what every catalog entry, docs example and outside-corpus spec derives to, as text and
JSON, committed under tests/golden/. A change to any of them is a reviewed diff, not a surprise.

    python -m pytest tests/test_golden.py --update-golden   # rewrite the files after reviewing the change

(The generated NumPy and C of the catalog and the examples are golden too: docs/gallery/, checked by
test_docs.test_gallery_is_current.)"""

import re
from pathlib import Path

import pytest
from outside_catalog import OUTSIDE_THE_CATALOG

from softgrad.derive import derive_spec, load_spec, parse_spec
from softgrad.derive.catalog import CATALOG

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).parent / "golden"
EXAMPLES = sorted((ROOT / "docs" / "examples").glob("*.spec"))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-")[:60].rstrip("-")


CASES = (
    [pytest.param(("catalog", name), id=f"catalog-{name}") for name in CATALOG]
    + [pytest.param(("example", str(path)), id=f"example-{path.stem}") for path in EXAMPLES]
    + [pytest.param(("outside", source), id=f"outside-{_slug(source)}") for source in OUTSIDE_THE_CATALOG]
)


def _golden_name(kind: str, what: str) -> str:
    """The files' stem: the catalog name, example-<file stem>, or outside-<the spec's text as a slug>."""
    return {"catalog": what, "example": f"example-{Path(what).stem}", "outside": f"outside-{_slug(what)}"}[kind]


def _derive(kind: str, what: str):
    if kind == "example":
        path = Path(what)
        return derive_spec(parse_spec(path.read_text(encoding="utf-8"), name=path.stem))
    return derive_spec(load_spec(what))


@pytest.mark.slow
@pytest.mark.parametrize("case", CASES)
def test_derivation_matches_its_golden_text_and_json(case, request):
    name, derivation = _golden_name(*case), _derive(*case)
    update = request.config.getoption("--update-golden")
    stale = []
    for suffix, fmt in ((".txt", "text"), (".json", "json")):
        path = GOLDEN / (name + suffix)
        rendered = derivation.render(fmt)
        if update:
            path.write_text(rendered, encoding="utf-8")
        elif not path.exists() or path.read_text(encoding="utf-8") != rendered:
            stale.append(path.name)
    assert not stale, f"{stale} differ from this tree's output: review with --update-golden and git diff"


def test_every_golden_file_belongs_to_a_case():
    """A golden file whose case is gone would never be compared again: it must be deleted with its case."""
    expected = {_golden_name(*case.values[0]) for case in CASES}
    assert len(expected) == len(CASES), "two cases would share a golden file"
    orphans = [p.name for p in GOLDEN.iterdir() if p.stem not in expected and p.suffix in (".txt", ".json")]
    assert not orphans
