"""The `softgrad` command line: click commands only; the work is done by the packages they call."""

from __future__ import annotations

import functools
import os
import sys
from pathlib import Path

import click

from softgrad.errors import SoftgradError


def reports_errors(command):
    """Every failure ends in one line on stderr: exit 2 for 'could not run', never a traceback."""

    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except SoftgradError as problem:
            click.echo(f"softgrad: error: {problem}", err=True)
            sys.exit(problem.exit_status)
        except (click.exceptions.Exit, click.ClickException, KeyboardInterrupt):
            raise
        except BrokenPipeError:  # the reader (e.g. `| head`) has gone: stop quietly
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(0)
        except RecursionError:
            click.echo("softgrad: error: the input is nested too deeply to process", err=True)
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


def _spec_text(spec: str | None, spec_file: str | None) -> tuple[str, str | None]:
    from softgrad.files import read_text

    if (spec is None) == (spec_file is None):
        raise SoftgradError("give either a SPEC (a catalog name or an inline spec) or -f FILE, not both")
    if spec_file is not None:
        return read_text(spec_file, "spec file"), Path(spec_file).stem
    return spec, None


@main.command()
@click.argument("spec", required=False)
@click.option("-f", "--file", "spec_file", help="Read the spec from FILE.")
@click.option("--wrt", help="The input to differentiate with respect to (default: the first input).")
@click.option("--format", "fmt", type=click.Choice(["text", "latex", "markdown", "html", "json"]),
              default="text", show_default=True, help="Output format.")
@click.option("--standalone", is_flag=True, help="With --format latex: a complete document for pdflatex.")
@click.option("-o", "--output", help="Write to this file (atomically) instead of standard output.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random points steps are checked at.")
@reports_errors
def derive(spec, spec_file, wrt, fmt, standalone, output, seed) -> None:
    """Derive the Jacobian or gradient of SPEC step by step, every step checked.

    SPEC is a catalog name (see `softgrad list`) or a spec such as
    'y[i] = exp(x[i]) / sum(exp(x[k]), k)'.
    """
    from softgrad.derive import derive_spec, load_spec, parse_spec
    from softgrad.files import write_atomically

    text, name = _spec_text(spec, spec_file)
    parsed = load_spec(text) if spec_file is None else parse_spec(text, name=name)
    document = derive_spec(parsed, wrt=wrt, seed=seed).render(fmt, standalone=standalone)
    if output:
        write_atomically(output, document)
    else:
        click.echo(document, nl=False)


@main.command()
@click.argument("spec", required=False)
@click.option("-f", "--file", "spec_file", help="Read the spec from FILE.")
@click.option("--lang", type=click.Choice(["numpy", "c"]), required=True, help="Target language.")
@click.option("--kernel", "kernel_names", multiple=True,
              type=click.Choice(["forward", "vjp", "vjp_from_output", "jacobian", "loss_and_grad"]),
              help="Kernels to generate (repeatable; default: all that apply).")
@click.option("--dtype", type=click.Choice(["float64", "float32"]), default="float64", show_default=True,
              help="Element type of the C kernels (NumPy kernels follow their inputs' dtype).")
@click.option("--wrt", help="The input to differentiate with respect to (default: the first input).")
@click.option("-o", "--output", "folder", required=True, help="Folder to write the generated files into.")
@click.option("--check", is_flag=True, help="Compile/import what was generated and verify it; exit 1 on a mismatch.")
@reports_errors
def codegen(spec, spec_file, lang, kernel_names, dtype, wrt, folder, check) -> None:
    """Generate NumPy or C kernels for SPEC from its derivation.

    Writes one module (numpy) or a header, a source and a ctypes loader (c) into the folder.
    """
    from softgrad.codegen.emit import emit, kernels_for
    from softgrad.derive import derive_spec, load_spec, parse_spec
    from softgrad.files import write_atomically

    text, name = _spec_text(spec, spec_file)
    parsed = load_spec(text) if spec_file is None else parse_spec(text, name=name)
    derivation = derive_spec(parsed, wrt=wrt)
    names = list(kernel_names) or None
    files = emit(derivation, lang, names, dtype)
    if check:
        from softgrad.verify.generated import check_generated

        checks = check_generated(derivation, lang, files, kernels_for(derivation, names), dtype)
        for item in checks:
            click.echo(item.line(), err=True)
    target = Path(folder)
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as problem:
        raise SoftgradError(f"cannot create folder {folder!r}: {problem.strerror}") from None
    for file_name, content in files.items():
        write_atomically(target / file_name, content)
        click.echo(str(target / file_name))
    if check and not all(item.passed for item in checks):
        click.echo("softgrad: generated code does not match the derivation", err=True)
        sys.exit(1)


if __name__ == "__main__":
    main()
