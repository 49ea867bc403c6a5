"""The command line as a user meets it: output, exit statuses, one-line errors, atomic files."""

import json
import os
import subprocess
import sys

import pytest

CATALOG_NAMES = ["softmax", "cross-entropy", "kl-divergence"]


def run(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "softgrad", *args], capture_output=True, text=True,
                          input=stdin, timeout=120)


def test_derive_softmax_prints_the_kronecker_form():
    result = run("derive", "softmax")
    assert result.returncode == 0, result.stderr
    assert "Kronecker combination" in result.stdout and "(δ_ij - y_j)⋅yᵢ" in result.stdout
    assert result.stderr == ""


def test_list_shows_definitions():
    result = run("list")
    assert result.returncode == 0
    assert "cross-entropy-onehot" in result.stdout and "given sum(t[k], k) = 1" in result.stdout


def test_spec_from_file_and_json_output(tmp_path):
    spec = tmp_path / "tempered.sg"
    spec.write_text("# temperature softmax\ny[i] = exp(x[i]/T) / sum(exp(x[k]/T), k)\n")
    result = run("derive", "-f", str(spec), "--format", "json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["name"] == "tempered" and data["parameters"] == ["T"]


def test_output_file_is_written_whole(tmp_path):
    target = tmp_path / "softmax.tex"
    result = run("derive", "softmax", "--format", "latex", "--standalone", "-o", str(target))
    assert result.returncode == 0 and result.stdout == ""
    assert target.read_text().rstrip().endswith(r"\end{document}")
    assert [p.name for p in tmp_path.iterdir()] == ["softmax.tex"]


def test_failure_leaves_no_file_and_keeps_an_old_one(tmp_path):
    target = tmp_path / "out.md"
    result = run("derive", "y[i] = exp(x[i]", "-o", str(target))
    assert result.returncode == 2 and not target.exists()
    target.write_text("old")
    assert run("derive", "y[i] = nope(x[i])", "-o", str(target)).returncode == 2
    assert target.read_text() == "old" and len(list(tmp_path.iterdir())) == 1


@pytest.mark.parametrize(
    "spec, fragment",
    [
        ("y[i] = exp(x[i]", "col 16: expected ')'"),
        ("y[i] = softsign(x[i])", "unknown function 'softsign'"),
        ("y[i] = x[j]", "undefined index 'j'"),
        ("y[i] = sum(exp(x[i]), i)", "cannot sum over index 'i'"),
        ("y = k * sum(x[k], k)", "'k' cannot be used as an index"),
        ("", "unknown catalog entry"),
        ("y = __import__('os').system('touch PWNED')", "names may not begin with '_'"),
        ("y[i] = " + "(" * 5000 + "x[i]" + ")" * 5000, "nested more than"),
        ("no-such-entry", "unknown catalog entry 'no-such-entry'"),
        ("p[i] = z[i] - sum(z[k], k)/n; L = -sum(t[k]*log(p[k]), k)", "L has no finite real value at any point"),
        ("p[i] = z[i] - sum(z[k], k)/n; y[i] = p[i]/sum(p[l], l)", "y has no stable value at the points sampled"),
    ],
    ids=lambda value: value[:30],
)
def test_bad_specs_give_one_line_and_exit_2(spec, fragment, tmp_path):
    assert_one_line_error(["derive", spec], fragment, tmp_path)


def test_a_one_megabyte_line_gives_one_line_and_exit_2(tmp_path):
    spec = tmp_path / "huge.sg"
    spec.write_text("y[i] = " + "x[i] + " * 150_000 + "x[i]\n")
    assert_one_line_error(["derive", "-f", str(spec)], "spec is too long", tmp_path)


def assert_one_line_error(args, fragment, tmp_path):
    result = subprocess.run([sys.executable, "-m", "softgrad", *args], capture_output=True, text=True,
                            cwd=tmp_path, timeout=120)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("softgrad: error:") and fragment in lines[0]
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert not (tmp_path / "PWNED").exists()


@pytest.mark.parametrize(
    "args, fragment",
    [
        (["derive", "-f", "/no/such/spec.sg"], "no such file"),
        (["derive", "softmax", "--wrt", "q"], "--wrt 'q' is not an input"),
        (["derive", "softmax", "-f", "x.sg"], "not both"),
        (["derive", "y[i] = exp(x[i]) * sum(t[k], k)", "--wrt", "q"], "not an input"),
        (["derive", "y[i] = x[i]\nL = sum(t[k], k)"], "does not depend on"),
        (["derive", "softmax", "-o", "/no/such/dir/out.txt"], "cannot write"),
    ],
)
def test_bad_invocations_give_one_line_and_exit_2(args, fragment):
    result = run(*args)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and fragment in result.stderr


def test_spec_file_that_is_a_directory(tmp_path):
    result = run("derive", "-f", str(tmp_path))
    assert result.returncode == 2 and "is a directory" in result.stderr


def test_console_script_is_installed():
    from shutil import which

    script = which("softgrad", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    assert script is not None
    assert subprocess.run([script, "--version"], capture_output=True, text=True).stdout.startswith("softgrad")


@pytest.mark.parametrize("args, fragment", [
    (["derive"], "give a SPEC"),
    (["codegen", "softmax", "-o", "out"], "Missing option '--lang'"),
    (["derive", "softmax", "--format", "pdf"], "Invalid value for '--format'"),
    (["derive", "softmax", "--seed", "abc"], "not a valid integer"),
    (["no-such-command"], "No such command"),
])
def test_usage_errors_are_one_line_too(args, fragment):
    result = run(*args)
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("softgrad: error:") and fragment in result.stderr
    if args != ["derive"]:  # click's usage errors point to the command's help
        assert "--help" in result.stderr


def test_help_and_version_still_work():
    assert run("--help").stdout.startswith("Usage: softgrad")
    assert run("derive", "--help").returncode == 0
    assert run("--version").stdout.startswith("softgrad, version")


LEAVE_SCRIPT = """
import atexit, sys, tempfile, weakref
from pathlib import Path
atexit.register(lambda: Path("atexit-ran").write_text("yes"))
kept = tempfile.TemporaryDirectory(dir=".")  # cleaned by its finalizer, which atexit runs
Path("folder").write_text(kept.name)
sys.argv = ["softgrad", *sys.argv[1:]]
from softgrad.cli import entry
entry()
"""


@pytest.mark.parametrize("args, status", [(["derive", "softmax", "--format", "json"], 0),
                                          (["derive", "y[i] = "], 2), (["derive", "--bogus"], 2)])
def test_the_fast_exit_keeps_the_output_the_status_and_atexit(tmp_path, args, status):
    """entry() skips the interpreter's teardown: stdout must still be complete, the status the command's,
    and atexit's functions (temporary folders' finalizers too) must still run."""
    result = subprocess.run([sys.executable, "-c", LEAVE_SCRIPT, *args], cwd=tmp_path, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == status, result.stderr
    assert (tmp_path / "atexit-ran").read_text() == "yes"
    assert not os.path.exists((tmp_path / "folder").read_text())
    if status == 0:
        assert json.loads(result.stdout)["spec"]
    else:
        assert result.stderr.count("\n") == 1 and result.stderr.startswith("softgrad: error:")


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
@pytest.mark.parametrize("args", [["--version"], ["list"], ["derive", "softmax"],
                                  ["derive", "softmax", "--format", "html"]])
def test_a_full_disk_is_one_line_and_exit_2(args):
    """Output the system refuses to take (ENOSPC) is an error of the system: one line, exit 2, never a
    traceback or an 'internal error'."""
    with open("/dev/full", "w") as full:
        result = subprocess.run([sys.executable, "-m", "softgrad", *args], stdout=full, stderr=subprocess.PIPE,
                                text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr == "softgrad: error: No space left on device\n"


def test_output_left_in_the_buffer_at_exit_is_flushed_or_reported():
    """The CLI leaves without the interpreter's teardown: what is still buffered is flushed first, and a
    flush the system refuses is reported like any write (one line, exit 2; a status already set is kept)."""
    script = """
import errno, sys
from softgrad.cli import _leave
class Refusing:
    def write(self, text): return len(text)
    def flush(self): raise OSError(errno.ENOSPC, "No space left on device")
sys.stdout = Refusing()
_leave(int(sys.argv[1]))
"""
    for status, expected in ((0, 2), (1, 1)):
        result = subprocess.run([sys.executable, "-c", script, str(status)], capture_output=True, text=True,
                                timeout=120)
        assert result.returncode == expected
        assert result.stderr == ("softgrad: error: No space left on device\n" if status == 0 else "")
