"""verify --derivation: a written derivation judged link by link (the five published seeds, and mutants)."""

import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from softgrad.verify.derivation import check_derivation
from softgrad.verify.derivation.latex import Unreadable, parse

SEEDS = Path(__file__).parent / "corpus" / "seeds"


def seed(number: str):
    (path,) = SEEDS.glob(f"{number}_*.txt")
    return check_derivation(path.read_text(encoding="utf-8"), path.name)


def verdicts(report):
    return [(link.line, link.verdict) for link in report.links]


def test_seed_002_fails_at_its_kronecker_line_and_nowhere_else():
    """The published typo ∂ŷ_j/∂o_i = ŷ_i(δ_ij − ŷ_i) (the cases above give ŷ_j(δ_ij − ŷ_i)) is the one wrong
    link; the cases i = j and i ≠ j hold under their conditions, the cross-entropy chain holds, and its last
    step p − y holds under the assumption the text states (Σ_k y_k = 1)."""
    report = seed("002")
    assert verdicts(report) == [
        (4, "definition"), (7, "definition"), (13, "holds"), (13, "holds"), (16, "holds"), (16, "holds"),
        (20, "fails"), (23, "unchecked"), *[(27, "holds")] * 6, (27, "conditional"), (29, "assumption"),
        (32, "conditional")]
    wrong = report.failed[0]
    assert "i = 0, j = 1" in wrong.reason and report.exit_status == 1
    assert wrong.expected == "(δ_ij − \u0177_i)·\u0177_j"  # ŷ_j(δ_ij − ŷ_i): what the cases above it give
    assert "Σ" not in wrong.rhs and "given that" in report.links[-1].reason
    assert "the first wrong line is 20" in report.summary()


def test_equalities_in_sentences_are_links_and_index_conditions_are_not():
    text = ("With \\(p_i = \\frac{e^{z_i}}{\\sum_k e^{z_k}}\\) and $L = -\\sum_k t_k \\log p_k$, we get "
            "$\\frac{\\partial L}{\\partial z_j} = p_j - t_j$ if \\(i=j\\).\n")
    report = check_derivation(text)
    assert verdicts(report) == [(1, "definition"), (1, "definition"), (1, "fails")]
    assert "holds only for t summing to 1, which the text does not state" in report.links[2].reason


@pytest.mark.parametrize("number", ["000", "004"])
def test_correct_published_derivations_never_get_a_fails(number):
    """Seeds 000 and 004 are right (with sloppy notation): no link fails. Their case lines that write one
    case of the chain rule's sum as the whole derivative, and the KL definition with its q_c typo, are
    unchecked with the reason; everything readable is checked."""
    report = seed(number)
    assert not report.failed, [(link.line, link.reason) for link in report.failed]
    assert report.exit_status == 0
    decided = {  # read by hand, link by link
        "000": [(7, "definition"), (11, "unchecked"), (11, "holds"), (13, "unchecked"), (13, "holds"),
                *[(19, "holds")] * 3, (21, "holds"), (23, "holds"), (27, "unchecked"), (27, "unchecked")],
        "004": [(7, "unchecked"), (7, "unchecked"), (8, "definition"), (10, "definition"), (12, "holds"),
                (13, "unchecked"), *[(15, "holds")] * 4, *[(18, "holds")] * 3, *[(20, "holds")] * 5,
                (21, "assumption"), (22, "conditional"), (27, "unchecked"), (27, "unchecked"), (29, "unchecked"),
                *[(31, "unchecked")] * 3, (31, "holds"), (31, "holds")]}
    assert verdicts(report) == decided[number]
    reasons = " ".join(link.reason for link in report.links if link.verdict == "unchecked")
    if number == "000":
        assert "a case written as an equality" in reasons and "σ has no definition" in reasons
        assert (19, "holds") in verdicts(report) and (23, "holds") in verdicts(report)
    else:
        assert "reads c with no sum over it" in reasons
        assert (22, "conditional") in verdicts(report) and (21, "assumption") in verdicts(report)
        assert [v for line, v in verdicts(report) if line == 18] == ["holds"] * 3  # the case k ≠ i


@pytest.mark.parametrize("number", ["001", "003"])
def test_pages_with_no_latex_are_unchecked_with_exit_status_2(number):
    report = seed(number)
    assert report.links == [] and report.exit_status == 2 and "no equality" in report.summary()


CORRECT = r"""
Softmax and cross-entropy with logits $z$ and targets $t$:
\[ p_i = \frac{e^{z_i}}{\sum_k e^{z_k}} \]
\[ L = -\frac{1}{N}\sum_k t_k \log p_k \]
if $i = j$:
\[ \frac{\partial p_i}{\partial z_j} = p_i (1 - p_i) \]
if $i \neq j$:
\[ \frac{\partial p_i}{\partial z_j} = -p_i p_j \]
\[ \frac{\partial p_i}{\partial z_j} = p_i(\delta_{ij} - p_j) \]
\[ \frac{\partial L}{\partial z_j} = -\frac{1}{N}\sum_k t_k \frac{1}{p_k} \frac{\partial p_k}{\partial z_j}
   = \frac{1}{N}\left(p_j \sum_k t_k - t_j\right) \]
\[ \sum_k \left(\frac{\partial p_k}{\partial z_j}\right)^2 = \sum_k p_k^2 (\delta_{kj} - p_j)^2 \]
"""

MUTANTS = {
    "a sign": (r"= p_i (1 - p_i) \]", r"= p_i (p_i - 1) \]"),
    "an index swap": (r"= p_i(\delta_{ij} - p_j) \]", r"= p_i(\delta_{ij} - p_i) \]"),
    "a dropped sum": (r"\left(p_j \sum_k t_k - t_j\right)", r"\left(p_j t_j - t_j\right)"),
    "a missing square": (r"p_k^2 (\delta_{kj} - p_j)^2", r"p_k^2 (\delta_{kj} - p_j)"),
    "a dropped 1/N": (r"= \frac{1}{N}\left(p_j", r"= \left(p_j"),
}


def test_a_correct_derivation_holds_everywhere():
    report = check_derivation(CORRECT)
    assert not report.failed and report.exit_status == 0
    assert [v for _, v in verdicts(report)].count("holds") == 6, report.text()


@pytest.mark.parametrize("mistake", sorted(MUTANTS))
def test_one_mistake_is_one_failing_link_at_its_line(mistake):
    right, wrong = MUTANTS[mistake]
    assert right in CORRECT
    text = CORRECT.replace(right, wrong)
    report = check_derivation(text)
    assert len(report.failed) == 1, report.text()
    line = next(number for number, written in enumerate(text.splitlines(), 1) if wrong.split("=")[-1].strip()[:12]
                in written)
    assert report.failed[0].line == line


def test_the_reader_takes_page_notation_and_refuses_what_it_cannot_read():
    assert str(parse(r"\hat y_i(\delta_{ij}-\hat y_i)")) == "(KroneckerDelta(i, j) - y\u0302[i])*y\u0302[i]"
    assert "KroneckerDelta(i, k)" in str(parse(r"\sum_{k\neq i} y_k"))
    assert str(parse(r"\sum{}_{j=1}^{K} e^{x_j}")) == "Sum(exp(x[j]), (j, 0, N_classes - 1))"
    assert str(parse(r"\text{Diag}(y) - yy^T")) == "-y*Transposed(y) + Diagonal(y)"  # order kept: y yᵀ ≠ yᵀ y
    for text, reason in [(r"\text{softmax}(z)", "text"), (r"\|x\|^2", "notation"), (r"\frac{", "notation")]:
        with pytest.raises(Unreadable, match=reason):
            parse(text)


def test_cli_exit_status_json_and_standard_input(tmp_path):
    """The real command once (exit status, JSON on stdout); the other cases in-process (the same click command)."""
    from click.testing import CliRunner

    from softgrad.cli import main

    def run(*arguments, stdin=None):
        result = CliRunner().invoke(main, ["verify", *arguments], input=stdin)
        return SimpleNamespace(returncode=result.exit_code, stdout=result.stdout, stderr=result.stderr)

    (path,) = SEEDS.glob("002_*.txt")
    failing = subprocess.run([sys.executable, "-m", "softgrad", "verify", "--derivation", str(path), "--json"],
                             capture_output=True, text=True)
    assert failing.returncode == 1
    document = json.loads(failing.stdout)
    assert document["schema"] == "softgrad.derivation-report/1"
    assert {"line", "lhs", "rhs", "verdict", "reason"} <= set(document["links"][0])
    assert run("--derivation", "-", stdin=CORRECT).returncode == 0
    page = run("--derivation", str(path), "--format", "html")
    assert page.returncode == 1 and page.stdout.count("<math") >= 10 and "fails" in page.stdout
    nothing = run("--derivation", "-", stdin="no math here")
    assert nothing.returncode == 2 and "UNCHECKED" in nothing.stdout
    missing = run("--derivation", str(tmp_path / "none.md"))
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "no such file" in missing.stderr


def test_page_text_is_data_in_every_format(tmp_path):
    """Names, prose and unreadable LaTeX reach the HTML page escaped; a long or hostile side is refused in
    words, never run."""
    hostile = (r"\[ y_i = \frac{e^{x_i}}{\sum_k e^{x_k}} \]" "\n"
               r"\[ \frac{\partial y_i}{\partial x_j} = <script>alert(1)</script> \]" "\n"
               r"\[ __import__('os') = 1 \]" "\n" "\\[ a = " + "b + " * 1000 + "c \\]\n")
    report = check_derivation(hostile, "<b>page</b>")
    page = report.html()
    assert "<script>" not in page and "&lt;script&gt;" in page and "&lt;b&gt;page" in page
    assert [link.verdict for link in report.links][1:] == ["unchecked"] * 3
    assert "longer than" in report.links[-1].reason
    assert json.loads(json.dumps(report.to_dict()))["links"][1]["verdict"] == "unchecked"


def test_a_spec_binds_what_the_text_does_not_define(tmp_path):
    """Without a definition of y the Jacobian lines are unchecked (never 'fails'); --against softmax binds
    y = softmax(x), and the line with the typo fails."""
    text = ("\\[\\frac{\\partial y_i}{\\partial x_j} = y_i(\\delta_{ij} - y_j)\\]\n"
            "\\[\\frac{\\partial y_i}{\\partial x_j} = y_j(\\delta_{ij} - y_i)\\]\n"
            "\\[\\frac{\\partial y_i}{\\partial x_j} = y_i(\\delta_{ij} - y_i)\\]\n")
    alone = check_derivation(text)
    assert [link.verdict for link in alone.links] == ["unchecked"] * 3 and alone.exit_status == 2
    assert "--against" in alone.links[0].reason
    bound = check_derivation(text, against="softmax")
    assert [link.verdict for link in bound.links] == ["holds", "holds", "fails"]
    assert bound.links[2].line == 3 and bound.links[2].expected == "(δ_ij − y_j)·y_i"


def test_matrix_notation_is_read_entry_by_entry():
    """diag(y) − y yᵀ is the Jacobian ∂y/∂x of a softmax; diag(y) − yᵀ y is not (the order of a product of
    vectors matters); a bold x is the vector x; a name no display defines is unchecked."""
    text = (r"\[ y_i = \frac{e^{x_i}}{\sum_k e^{x_k}} \]" "\n"
            r"\[ \frac{\partial y}{\partial x} = \text{Diag}(y) - yy^T \]" "\n"
            r"\[ \frac{\partial \mathbf{y}}{\partial \mathbf{x}} = "
            r"\mathrm{diag}(\mathbf{y}) - \mathbf{y}^\top\mathbf{y} \]" "\n"
            r"\[ \frac{\partial l}{\partial x} = y \odot (g - y^T g) \]" "\n")
    report = check_derivation(text)
    assert [link.verdict for link in report.links] == ["definition", "holds", "fails", "unchecked"]
    assert "proved" in report.links[1].reason and "g has no definition" in report.links[3].reason
