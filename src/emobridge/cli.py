"""The ``emobridge`` command line. Thin: each sub-command parses and calls the library.

Sub-command groups live in :mod:`emobridge.commands`, one module each.
"""

from __future__ import annotations

import importlib
import sys
import warnings
from collections.abc import Callable
from typing import TextIO

import typer

from emobridge import __version__
from emobridge.errors import (
    EmobridgeError,
    EmobridgeWarning,
    InterruptedRun,
    describe_os_error,
)

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
    ("predict", None),
    ("adapt", None),
    ("serve", None),
    ("model", "model"),
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


def _click_exceptions() -> tuple[type[BaseException], ...]:
    """The ``ClickException`` classes the installed typer raises.

    typer >= 0.20 vendors click as ``typer._click`` (its exceptions are not click's);
    older typer raises click's own. Catch whichever exist.
    """
    found: list[type[BaseException]] = []
    for module in ("typer._click.exceptions", "click.exceptions"):
        try:
            found.append(importlib.import_module(module).ClickException)
        except ImportError:
            continue
    return tuple(found)


_CLICK_EXCEPTIONS = _click_exceptions()
#: Exit status of an interrupted command (128 + SIGINT), as shells report it.
EXIT_INTERRUPTED = 130
EXIT_USAGE = 2


def _error(message: str) -> None:
    typer.secho(message, err=True, fg=typer.colors.RED)


def _usage_error(exc: BaseException) -> int:
    """One line for a command-line mistake (typer prints usage, a hint box and the error)."""
    if type(exc).__name__ == "NoArgsIsHelpError":  # `emobridge features` alone: the help
        exc.show()  # type: ignore[attr-defined]
        return int(getattr(exc, "exit_code", EXIT_USAGE))
    ctx = getattr(exc, "ctx", None)
    hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
    message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
    _error(f"error: {message}{hint}")
    return int(getattr(exc, "exit_code", EXIT_USAGE))


def _interrupted(detail: str = "") -> int:
    _error(f"interrupted{': ' + detail if detail else ''}")
    return EXIT_INTERRUPTED


def _warning_printer(fallback: Callable[..., None]) -> Callable[..., None]:
    """A ``warnings.showwarning`` printing an EmobridgeWarning as one ``warning:`` line and
    anything else as ``fallback`` does."""

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
             file: TextIO | None = None, line: str | None = None) -> None:
        if issubclass(category, EmobridgeWarning):
            typer.secho(f"warning: {message}", err=True, fg=typer.colors.YELLOW)
        else:
            fallback(message, category, filename, lineno, file, line)

    return show


def main(argv: list[str] | None = None) -> int:
    """Entry point: run the CLI and return its exit status.

    Library errors print ``error: <message>`` and return 1, as do operating-system faults (a
    read-only folder, a full disk: the path and the reason); command-line mistakes print
    one line and return 2; Ctrl-C prints ``interrupted`` and returns 130. Nothing the user
    can cause ends in a traceback; a traceback means a bug.
    """
    with warnings.catch_warnings():
        warnings.showwarning = _warning_printer(warnings.showwarning)
        warnings.simplefilter("default", EmobridgeWarning)  # each distinct one, once
        try:
            # In non-standalone mode typer returns the status of ``typer.Exit`` instead of
            # exiting, and turns Ctrl-C inside a command into ``Exit(130)``.
            status = app(args=argv, prog_name="emobridge", standalone_mode=False)
        except KeyboardInterrupt:  # outside typer's own handler (option parsing, callbacks)
            return _interrupted()
        except InterruptedRun as exc:
            return _interrupted(str(exc))
        except EmobridgeError as exc:
            _error(f"error: {exc}")
            return 1
        except OSError as exc:
            _error(f"error: {describe_os_error(exc)}")
            return 1
        except _CLICK_EXCEPTIONS as exc:
            return _usage_error(exc)
        except typer.Abort:
            return _interrupted()
        except typer.Exit as exc:
            return int(exc.exit_code)
        except SystemExit as exc:  # sys.exit() inside a command
            if exc.code is None or isinstance(exc.code, int):
                return exc.code or 0
            _error(f"error: {exc.code}")
            return 1
    if isinstance(status, int) and not isinstance(status, bool):
        return _interrupted() if status == EXIT_INTERRUPTED else status
    return 0


if __name__ == "__main__":
    sys.exit(main())
