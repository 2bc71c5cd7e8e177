"""The `emodebias` command line (typer). Each command group lives in `emodebias.cli.*`.

User mistakes (`emodebias.errors.UserError`, missing or unwritable files, bad options) end as one
plain line on stderr and exit code 2; `--debug` or `EMODEBIAS_DEBUG=1` shows the traceback.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from pathlib import Path

import click
import typer
from typer.core import TyperGroup

from emodebias import __version__, progress
from emodebias.errors import UserError

EXIT_USER_ERROR = 2
_USER_OS_ERRORS = (FileNotFoundError, FileExistsError, IsADirectoryError, NotADirectoryError,
                   PermissionError)
# Bad or missing options; typer vendors click, so its usage errors are not click's classes.
_USAGE_ERRORS = (click.UsageError, typer.BadParameter.__base__)


def writable_dir(path: Path, option: str = "--out") -> Path:
    """`path` as a folder a command may write into (created later if missing): an existing file,
    or a folder (or nearest existing parent) without write permission, is a one-line UserError
    before any work starts."""
    if path.exists() and not path.is_dir():
        raise UserError(f"{option} {path} is an existing file; give a folder (created if missing)")
    parent = path
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not os.access(parent, os.W_OK | os.X_OK):
        raise UserError(f"{option} {path}: {parent} is not writable; choose another folder")
    return path


def debug_enabled() -> bool:
    return os.environ.get("EMODEBIAS_DEBUG", "").strip() not in ("", "0")


def _one_line(exc: BaseException) -> str:
    """The exception's message on one line (OS errors name their file)."""
    if isinstance(exc, OSError) and exc.filename is not None and not isinstance(exc, UserError):
        text = f"{exc.strerror or type(exc).__name__}: {exc.filename}"
    elif isinstance(exc, _USAGE_ERRORS):
        text = exc.format_message()
        if exc.ctx is not None and not isinstance(exc, (click.BadParameter, typer.BadParameter)):
            text += f" (see '{exc.ctx.command_path} --help')"
    else:
        text = str(exc.args[0]) if len(exc.args) == 1 else str(exc)
    return " ".join(text.split()) or type(exc).__name__


class ErrorReportingGroup(TyperGroup):
    """Turns user errors raised inside any command into one stderr line and exit code 2."""

    def invoke(self, ctx: click.Context):  # noqa: ANN201 (click's signature)
        try:
            return super().invoke(ctx)
        except (UserError, *_USAGE_ERRORS, *_USER_OS_ERRORS) as exc:
            if debug_enabled():
                raise
            click.echo(f"error: {_one_line(exc)}", err=True)
            ctx.exit(EXIT_USER_ERROR)


app = typer.Typer(
    cls=ErrorReportingGroup,
    help="Measure and reduce demographic bias in multi-label speech emotion recognition.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
    rich_markup_mode=None,
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"emodebias {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Only warnings and errors."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Also debug messages."),
    debug: bool = typer.Option(False, "--debug", help="Full tracebacks for every error."),
) -> None:
    """Measure and reduce demographic bias in multi-label speech emotion recognition."""
    if debug:
        os.environ["EMODEBIAS_DEBUG"] = "1"
    level = logging.WARNING if quiet else logging.DEBUG if verbose else logging.INFO
    progress.set_enabled(not quiet)
    logging.basicConfig(level=level, format="%(message)s", stream=sys.stderr, force=True)
    for noisy in ("transformers", "urllib3", "filelock", "numba", "matplotlib"):
        logging.getLogger(noisy).setLevel(max(level, logging.WARNING))
    if not debug_enabled():
        import warnings

        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", category=UserWarning,
                                module=r"(torch|sklearn|transformers)")


# Modules that register their commands on `app` when imported; heavy imports stay inside commands.
COMMAND_MODULES = ("data", "features", "groups", "training", "bench", "evaluate", "audit")

for _name in COMMAND_MODULES:
    importlib.import_module(f"emodebias.cli.{_name}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
