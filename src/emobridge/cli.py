"""The ``emobridge`` command line. Thin: each sub-command parses and calls the library.

Sub-command groups live in :mod:`emobridge.commands`, one module each.
"""

from __future__ import annotations

import importlib
import sys

import typer

from emobridge import __version__
from emobridge.errors import EmobridgeError

app = typer.Typer(
    name="emobridge",
    help="Cross-lingual speech emotion recognition toolkit.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

#: (module in emobridge.commands, group name or None for top-level commands)
_COMMAND_MODULES: list[tuple[str, str | None]] = [
    ("corpora", "corpora"),
    ("train", None),
    ("features", "features"),
    ("run", None),
]


def _register() -> None:
    for module_name, group in _COMMAND_MODULES:
        module = importlib.import_module(f"emobridge.commands.{module_name}")
        if group is None:
            module.register(app)
        else:
            app.add_typer(module.app, name=group)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"emobridge {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    """Cross-lingual speech emotion recognition toolkit."""


_register()


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI; library errors print one clear line and exit 1."""
    try:
        app(args=argv, standalone_mode=False)
    except EmobridgeError as exc:
        typer.secho(f"error: {exc}", err=True, fg=typer.colors.RED)
        return 1
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        typer.echo("aborted", err=True)
        return 130
    except SystemExit as exc:
        return int(exc.code or 0)
    except Exception as exc:  # click usage errors
        import click

        if isinstance(exc, click.ClickException):
            exc.show()
            return exc.exit_code
        raise
    return 0


if __name__ == "__main__":
    sys.exit(main())
