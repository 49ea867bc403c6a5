"""The `softgrad` command line: click commands only; the work is done by the packages they call."""

from __future__ import annotations

import atexit
import functools
import json
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from softgrad.budget import CALL_SECONDS, DERIVE_SECONDS
from softgrad.errors import SoftgradError

if TYPE_CHECKING:
    from softgrad.derive.spec import Spec
    from softgrad.verify.formula import FormulaReport
    from softgrad.verify.report import Report

#: --time-limit: seconds a derivation may take before it stops with a clear error.
_TIME_LIMIT = click.option("--time-limit", type=click.FloatRange(min=0, min_open=True), default=DERIVE_SECONDS,
                           show_default=True, metavar="SECONDS", help="Seconds the derivation may take.")
_SEED = click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, metavar="N",
                     help="Seed of the random points (0 or more).")


def reports_errors(command: Callable[..., None]) -> Callable[..., None]:
    """Every failure ends in one line on stderr: exit 2 for 'could not run', never a traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> None:
        try:
            return command(*args, **kwargs)
        except SoftgradError as problem:
            click.echo(f"softgrad: error: {problem}", err=True)
            sys.exit(problem.exit_status)
        except (click.exceptions.Exit, click.ClickException):
            raise
        except KeyboardInterrupt:  # Ctrl-C: one line and the shell's status for SIGINT
            click.echo("softgrad: interrupted", err=True)
            sys.exit(130)
        except BrokenPipeError:  # the reader (e.g. `| head`) has gone: stop quietly
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(0)
        except OSError as problem:  # the system refused (a full disk, an unwritable output): not a bug
            _report_system_error(problem)
            sys.exit(2)
        except RecursionError:
            click.echo("softgrad: error: the input is nested too deeply to process", err=True)
            sys.exit(2)
        except MemoryError:
            click.echo("softgrad: error: not enough memory for this check (try a smaller --n or --batch)", err=True)
            sys.exit(2)
        except Exception as problem:  # a bug in softgrad: still one line, and a way to report it
            click.echo(f"softgrad: internal error ({type(problem).__name__}: {problem}); please report it", err=True)
            sys.exit(2)

    return wrapper


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="softgrad")
def main() -> None:
    """Derive, generate and verify the gradients of ML functions, step by step."""


@main.command("list")
@reports_errors
def list_catalog() -> None:
    """Show the built-in catalog with each entry's definition in the spec language."""
    from softgrad.derive.catalog import CATALOG

    for name, entry in CATALOG.items():
        click.echo(f"{name} — {entry.summary}")
        for line in entry.source.splitlines():
            click.echo(f"    {line}")


def _load_spec(spec: str | None, spec_file: str | None) -> Spec:
    """The Spec named by a SPEC argument (catalog name or inline text) or by -f FILE (titled by its name)."""
    from softgrad.derive import load_spec, parse_spec
    from softgrad.files import read_text

    if spec is None and spec_file is None:
        raise SoftgradError("give a SPEC (a catalog name such as softmax, or a spec such as "
                            "'y[i] = exp(x[i]) / sum(exp(x[k]), k)') or -f FILE")
    if spec is not None and spec_file is not None:
        raise SoftgradError("give a SPEC or -f FILE, not both")
    if spec_file is not None:
        return parse_spec(read_text(spec_file, "spec file"), name=Path(spec_file).stem)
    assert spec is not None
    return load_spec(spec)


@main.command()
@click.argument("spec", required=False)
@click.option("-f", "--file", "spec_file", type=click.Path(dir_okay=False), help="Read the spec from FILE.")
@click.option("--wrt", metavar="NAME[,NAME…]",
              help="The input(s) to differentiate with respect to (several only for specs with several indices; "
                   "default: the first input, or every input of a spec with several indices but targets and labels).")
@click.option("--format", "fmt", type=click.Choice(["text", "latex", "markdown", "html", "json"]),
              default="text", show_default=True, help="Output format.")
@click.option("--standalone", is_flag=True, help="With --format latex: a complete document for pdflatex.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, allow_dash=True),
              help="Write to this file (atomically) instead of standard output ('-': standard output).")
@click.option("--order", type=click.IntRange(1, 2), default=1, show_default=True,
              help="2: a loss's Hessian (the Jacobian of its gradient) and Hessian–vector product.")
@_SEED
@_TIME_LIMIT
@reports_errors
def derive(spec: str | None, spec_file: str | None, wrt: str | None, fmt: str, standalone: bool, output: str | None,
           order: int, seed: int, time_limit: float) -> None:
    """Derive the Jacobian or gradient of SPEC step by step, every step checked.

    SPEC is a catalog name (see `softgrad list`) or a spec such as
    'y[i] = exp(x[i]) / sum(exp(x[k]), k)'.
    """
    from softgrad.derive import derive_spec
    from softgrad.files import write_atomically

    parsed = _load_spec(spec, spec_file)
    derivation = derive_spec(parsed, wrt=wrt, seed=seed, time_limit=time_limit)
    if order == 2:
        from softgrad.derive.hessian import hessian

        derivation = hessian(derivation, seed=seed)
    document = derivation.render(fmt, standalone=standalone)
    if output:
        write_atomically(output, document)
    else:
        click.echo(document, nl=False)


@main.command()
@click.argument("spec", required=False)
@click.option("-f", "--file", "spec_file", type=click.Path(dir_okay=False), help="Read the spec from FILE.")
@click.option("--lang", type=click.Choice(["numpy", "c", "torch", "jax"]), required=True,
              help="Target: NumPy or C kernels, a torch.autograd.Function with custom ops and an nn.Module, or a "
                   "jax.custom_vjp function.")
@click.option("--kernel", "kernel_names", multiple=True,
              type=click.Choice(["forward", "vjp", "vjp_from_output", "jacobian", "loss_and_grad", "hvp"]),
              help="Kernels to generate (repeatable; default: all that apply). hvp: a loss's Hessian–vector "
                   "product (implies --order 2).")
@click.option("--order", type=click.IntRange(1, 2), default=1, show_default=True,
              help="2: kernels of a loss's gradient: forward (the gradient), jacobian (the Hessian), hvp.")
@click.option("--dtype", type=click.Choice(["float64", "float32"]),
              help="Element type of the C kernels [default: float64] (NumPy kernels follow their inputs' dtype).")
@click.option("--wrt", metavar="NAME[,NAME…]",
              help="The input(s) to differentiate with respect to (several only for specs with several indices; "
                   "default: the first input, or every input of a spec with several indices but targets and labels).")
@click.option(
    "-o",
    "--output",
    "folder",
    required=True,
    type=click.Path(file_okay=False, allow_dash=True),
    metavar="DIR",
    help="Folder to write the generated files into ('-': the NumPy module to standard output).",
)
@click.option("--openmp", is_flag=True,
              help="C: split rows over OpenMP threads (compile with -fopenmp; OMP_NUM_THREADS sets how many).")
@click.option("--check", is_flag=True,
              help="Compile/import what was generated and verify it first; exit 1 (writing nothing) on a mismatch.")
@click.option("--force", is_flag=True, help="Replace files in the folder that softgrad did not generate.")
@click.option("--weights", metavar="NAME[,NAME…]",
              help="torch: inputs the nn.Module holds as nn.Parameters (e.g. W,bias); the others are its forward's.")
@click.option("--cpu", type=click.Choice(["torch", "c"]), default="torch", show_default=True,
              help="torch: what the module runs on the CPU — torch operations, or the generated C kernels (written "
                   "beside it, compiled on first use).")
@_TIME_LIMIT
@reports_errors
def codegen(spec: str | None, spec_file: str | None, lang: str, kernel_names: tuple[str, ...], order: int,
            dtype: str | None,
            wrt: str | None, folder: str, openmp: bool, check: bool, force: bool, weights: str | None,
            cpu: str, time_limit: float) -> None:
    """Generate NumPy, C, torch or JAX code for SPEC from its derivation.

    Writes one module (numpy, jax, torch), a header, a source and a ctypes loader (c), or with --cpu c a
    torch module and the C kernels it calls, into the folder: all of them or, if anything fails (--check
    included), none.
    """
    from softgrad.codegen.emit import emit
    from softgrad.derive import derive_spec
    from softgrad.files import write_atomically, write_files

    parsed = _load_spec(spec, spec_file)
    derivation = derive_spec(parsed, wrt=wrt, time_limit=time_limit)
    if order == 2 or "hvp" in kernel_names:
        from softgrad.derive.hessian import hessian

        derivation = hessian(derivation)
    names = list(kernel_names) or None
    chosen = tuple(name.strip() for name in weights.split(",") if name.strip()) if weights else ()
    # emit refuses options the target does not have
    files = emit(derivation, lang, names, dtype, openmp=openmp, weights=chosen, cpu=cpu)
    if folder == "-" and len(files) != 1:
        raise SoftgradError(f"-o - writes one file to standard output; --lang {lang} generates {len(files)} "
                            "(give a folder)")
    if check:
        checks: list[Any]
        if lang in ("torch", "jax"):
            from softgrad.verify.frameworks import check_framework_module

            checks = check_framework_module(derivation, files, weights=chosen)
        else:
            from softgrad.verify.generated import check_files

            checks = check_files(derivation, files, names)
        for item in checks:
            click.echo(item.line(), err=True)
        if not all(item.passed for item in checks):
            click.echo("softgrad: generated code does not match the derivation; nothing was written", err=True)
            sys.exit(1)
    if folder == "-":
        (text,) = files.values()
        write_atomically("-", text)
        return
    for path in write_files(folder, files, force=force):
        click.echo(str(path))


@main.command()
@click.argument("target", required=False)
@click.option("--against", metavar="SPEC", help="The spec (catalog name or inline) the gradient should equal.")
@click.option(
    "--fn", "forward_reference", metavar="FILE:FUNCTION", help="Without a spec: the forward function, as FILE:FUNCTION."
)
@click.option(
    "--formula", metavar="FORMULA", help="Check a formula (Jacobian entry or gradient component) against --against."
)
@click.option("--derivation", "derivation_file", metavar="FILE",
              help="Check a derivation as written (LaTeX in .tex, .md or .txt; - for standard input): every "
                   "equality link is judged, the first wrong line named.")
@click.option(
    "--signature", metavar="SIGNATURE", help="Calling convention: x,g->dx | y,g->dx | z,t->dz | z,t->loss,dz | x->J."
)
@click.option(
    "--wrt", metavar="NAME", help="The variable differentiated (an input, or for --formula also an intermediate)."
)
@click.option("--n", "size", type=click.IntRange(min=1), default=7, show_default=True, help="Entries per row.")
@click.option("--batch", type=click.IntRange(min=1), default=4, show_default=True, help="Rows per batch.")
@click.option("--dtype", type=click.Choice(["float64", "float32"]), default="float64", show_default=True,
              help="Element type the code under test is called with.")
@_SEED
@click.option("--reduction", type=click.Choice(["sum", "mean", "none"]), default="sum", show_default=True,
              help="How the code reduces a loss over the rows: sum, mean (loss and gradient divided by the rows), "
                   "none (one loss per row).")
@click.option("--targets", type=click.Choice(["labels", "onehot", "soft", "unnormalized", "binary", "unit"]),
              help="The targets the code takes (default: class labels if the signature takes them, else every "
                   "kind the spec admits).")
@click.option("--layout", type=click.Choice(["classes-last", "classes-first"]), default="classes-last",
              show_default=True, help="Where the code puts the class axis: (rows, n) or (n, rows).")
@click.option(
    "--param", "parameters", multiple=True, metavar="NAME=VALUE", help="A parameter value, NAME=VALUE (repeatable)."
)
@click.option("--mode", type=click.Choice(["auto", "full", "projections"]), default="auto", show_default=True,
              help="full: every element by finite differences; projections: random projections and bisection.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@click.option("--format", "report_format", type=click.Choice(["text", "json", "html"]), default=None,
              help="The report's format (html: with --derivation, one page with each equality in MathML).")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True), default=CALL_SECONDS, show_default=True,
              metavar="SECONDS",
              help="Seconds one call of the code under test may take (it runs in a child process).")
@click.option("--size", "sizes", metavar="INDEX=N,…",
              help="For specs with several indices: the size of each index's range (default: small, all different).")
@click.option("--extremes", type=click.Choice(["on", "off"]), default="on", show_default=True,
              help="Also check at inputs of order 1000 (off: where the code's documented contract excludes them; "
                   "the report says so).")
@click.option("--order", type=click.IntRange(1, 2), default=1, show_default=True,
              help="2: the code is a loss's Hessian–vector product, --signature 'x,t,v->hv', or its Hessian, "
                   "--signature 'x,t->H'.")
@reports_errors
def verify(target: str | None, against: str | None, forward_reference: str | None, formula: str | None,
           derivation_file: str | None, signature: str | None, wrt: str | None, size: int, batch: int, dtype: str,
           seed: int, reduction: str,
           targets: str | None, layout: str, parameters: tuple[str, ...], mode: str, as_json: bool,
           report_format: str | None, timeout: float,
           sizes: str | None, extremes: str, order: int) -> None:
    """Check a gradient (Python FILE.py:FUNC or MODULE:FUNC, C FILE.c:FUNC or LIB.so:FUNC, --formula, or a
    written derivation with --derivation).

    Exit status: 0 it is right, 1 it is wrong, 2 it could not be checked.
    """
    import json

    if report_format == "html" and derivation_file is None:
        raise SoftgradError("--format html applies to --derivation; other reports are text or JSON")
    as_json = as_json or report_format == "json"
    if derivation_file is not None:
        from softgrad.files import read_text
        from softgrad.verify.derivation import check_derivation

        if target is not None or formula is not None:
            raise SoftgradError("--derivation checks a written derivation by itself: give no function or --formula "
                                "with it (--against SPEC binds the names the text does not define)")
        text = sys.stdin.read() if derivation_file == "-" else read_text(derivation_file, "derivation")
        checked = check_derivation(text, "standard input" if derivation_file == "-" else derivation_file, against)
        click.echo(json.dumps(checked.to_dict(), indent=2, ensure_ascii=False) if as_json
                   else checked.html() if report_format == "html" else checked.text())
        sys.exit(checked.exit_status)
    values: dict[str, Any] = {}
    for item in parameters:
        name, _, value = item.partition("=")
        if value.strip().startswith("{"):  # a settings dict the code takes (ln_param): data, read as JSON
            values[name.strip()] = _settings(name.strip(), value)
            continue
        try:
            values[name.strip()] = float(value)  # its domain is checked with the spec (reference_problem)
        except ValueError:
            raise SoftgradError(f"--param takes NAME=VALUE with a number, or NAME='{{...}}' with a JSON object, "
                                f"not {item!r}") from None
    result: Report | FormulaReport
    if formula is not None:
        from softgrad.derive import derive_spec, load_spec
        from softgrad.verify.formula import verify_formula

        if against is None or target is not None:
            raise SoftgradError("--formula needs --against SPEC and no function to load")
        if sizes is not None:
            raise SoftgradError("--size sets the ranges of code checked against a spec with several indices, not of "
                                "--formula")
        result = verify_formula(formula, derive_spec(load_spec(against)), wrt, seed)
    else:
        from softgrad.verify import check_target

        if target is None:
            raise SoftgradError("name the gradient to check, e.g. grad.py:softmax_backward (or use --formula)")
        with _ProgressBar(enabled=size * batch >= 100_000) as progress:
            result = check_target(target, against, signature, forward_reference=forward_reference, dtype=dtype,
                                  n=size, batch=batch, seed=seed, reduction=reduction, parameters=values, wrt=wrt,
                                  mode=mode, progress=progress, targets=targets, layout=layout,
                                  extremes=extremes == "on", sizes=sizes, order=order, timeout=timeout)
    click.echo(json.dumps(result.to_dict(), indent=2, ensure_ascii=False) if as_json else result.text())
    sys.exit(0 if result.passed else 1)


def _settings(name: str, text: str) -> dict[str, Any]:
    """--param ln_param='{"eps": 1e-5}': a JSON object of numbers, strings, booleans and lists."""
    try:
        settings = json.loads(text)
    except json.JSONDecodeError as problem:
        raise SoftgradError(f"--param {name}: not a JSON object ({problem.msg} at character {problem.pos})") from None
    if not isinstance(settings, dict):
        raise SoftgradError(f"--param {name}: a settings value is a JSON object, e.g. '{{\"eps\": 1e-5}}'")
    return settings


class _ProgressBar:
    """verify's progress callback drawn with click's progress bar on stderr: only for long checks, and
    only when stderr is a terminal (never in a pipe, a log or --json output)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled and sys.stderr.isatty()
        self.bar: Any = None

    def __call__(self, done: int, total: int, case: str) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            self.bar = click.progressbar(length=total, label="verify", file=sys.stderr, show_pos=True)
            self.bar.__enter__()
        self.bar.update(done - self.bar.pos, current_item=case)

    def __enter__(self) -> _ProgressBar:
        return self

    def __exit__(self, *exception: object) -> None:
        if self.bar is not None:
            self.bar.__exit__(None, None, None)


def _stop_on_signal(signum: int, frame: object) -> None:
    """SIGTERM or SIGHUP: unwind like Ctrl-C, so that temporary files and folders are removed."""
    raise SystemExit(128 + signum)


def entry() -> NoReturn:
    """The console script: click's own usage errors become one line too (exit 2), like every other."""
    try:
        _run_command()
    except SystemExit as stop:
        _leave(stop.code)
    _leave(0)


def _run_command() -> None:
    for number in (signal.SIGTERM, getattr(signal, "SIGHUP", None)):
        if number is not None:
            signal.signal(number, _stop_on_signal)
    try:
        code = main(standalone_mode=False, prog_name="softgrad")
    except click.UsageError as problem:
        message = " ".join(problem.format_message().split())
        command = problem.ctx.command_path if problem.ctx else "softgrad"
        click.echo(f"softgrad: error: {message} (see '{command} --help')", err=True)
        sys.exit(2)
    except click.exceptions.Abort:
        click.echo("softgrad: interrupted", err=True)
        sys.exit(130)
    except click.ClickException as problem:
        click.echo(f"softgrad: error: {' '.join(problem.format_message().split())}", err=True)
        sys.exit(problem.exit_code)
    except BrokenPipeError:  # --help or --version into a reader that has gone
        sys.exit(0)
    except OSError as problem:  # --help or --version into a full disk
        _report_system_error(problem)
        sys.exit(2)
    sys.exit(code if isinstance(code, int) else 0)


def _report_system_error(problem: OSError) -> None:
    """One line for an error of the system (ENOSPC, EACCES, …), naming the file where there is one."""
    where = f" ({problem.filename})" if problem.filename else ""
    click.echo(f"softgrad: error: {problem.strerror or problem}{where}", err=True)


def _leave(code: object) -> NoReturn:
    """Exit without the interpreter's teardown, which frees every SymPy object and cache one by one
    (0.3 s of a derivation): the output is flushed and atexit's functions (temporary folders' finalizers
    among them) run first, as they would; files we write are complete and closed before this."""
    if code is None:
        status = 0
    elif isinstance(code, int):
        status = code
    else:  # sys.exit("message"), as Python prints it
        click.echo(str(code), err=True)
        status = 1
    try:
        sys.stdout.flush()
    except (BrokenPipeError, ValueError):  # the reader has gone, or stdout is closed: nothing to add
        pass
    except OSError as problem:  # the rest of the output could not be written (a full disk)
        if status == 0:  # (else the failure was already reported)
            _report_system_error(problem)
            status = 2
    try:
        atexit._run_exitfuncs()
        sys.stderr.flush()
    finally:
        os._exit(status)


if __name__ == "__main__":
    entry()
