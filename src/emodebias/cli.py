"""The `emodebias` command line (typer). Each command group lives in `emodebias.commands.*`."""

from __future__ import annotations

import importlib

import typer

app = typer.Typer(
    help="Measure and reduce demographic bias in multi-label speech emotion recognition.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)

# Modules that register their commands on `app` when imported; heavy imports stay inside commands.
COMMAND_MODULES = ("data", "features", "groups", "training", "bench")

for _name in COMMAND_MODULES:
    importlib.import_module(f"emodebias.commands.{_name}")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
