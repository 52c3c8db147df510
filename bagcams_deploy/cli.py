"""The ``bagcams-deploy`` command line: a thin layer over the library.

Every command parses its options, calls the library and renders the result. A :class:`BagcamsError`
(anything the user can fix) is caught here, once, and printed as one line on stderr with exit 1.
"""

from __future__ import annotations

import importlib
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager

import typer

from . import __version__
from .errors import BagcamsError

app = typer.Typer(
    name="bagcams-deploy",
    help="Deploy BagCAMs and the CAM family of WSOL models: export, verify, benchmark, localize, evaluate.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"bagcams-deploy {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(
        False, "--version", callback=_print_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    pass


# Command modules under bagcams_deploy/commands, each with register(app).
COMMAND_MODULES = ("core", "export_verify", "bench", "evaluate", "engine", "backends", "demo")

for _name in COMMAND_MODULES:
    try:
        _module = importlib.import_module(f"{__package__}.commands.{_name}")
    except ModuleNotFoundError as _exc:
        if _exc.name != f"{__package__}.commands.{_name}":
            raise
        continue
    _module.register(app)


class Terminated(BaseException):
    """SIGTERM (``kill``, ``timeout``, a batch system's time limit, ``docker stop``) as an interruption:
    the run ends as on Ctrl-C, its ``finally`` blocks writing the run record (``boxes.json`` with
    ``"complete": false``), so that the rerun takes its files back instead of refusing them. Not a
    ``KeyboardInterrupt``, which Typer turns into exit 130: this one exits 143, as SIGTERM does."""


class Interrupted(BaseException):
    """Ctrl-C (SIGINT) while a command runs. Typer turns a ``KeyboardInterrupt`` into a silent exit 130
    before :func:`main` sees it; this one reaches :func:`main`, which says ``interrupted`` as it says
    ``terminated`` for SIGTERM. The run's ``finally`` blocks run as for a ``KeyboardInterrupt``."""


def _raise_terminated(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one must not cut the record short
    raise Terminated


def _raise_interrupted(signum: int, frame: object) -> None:
    # A second Ctrl-C is Python's own KeyboardInterrupt again: a user pressing it twice wants out now
    # (the run record is written atomically, so cutting it short leaves the previous one).
    signal.signal(signal.SIGINT, signal.default_int_handler)
    raise Interrupted


@contextmanager
def _signals_interrupt() -> Iterator[None]:
    """SIGTERM raises :class:`Terminated` and SIGINT :class:`Interrupted` while the command runs
    (Python's default for SIGTERM ends the process at once, leaving a half-written output folder
    without its record)."""
    try:
        previous = {s: signal.signal(s, h) for s, h in ((signal.SIGTERM, _raise_terminated),
                                                         (signal.SIGINT, _raise_interrupted))}  # fmt: skip
    except ValueError:  # not the main thread (an embedding program): its own handling stands
        yield
        return
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler if handler is not None else signal.SIG_DFL)


def main() -> None:
    """Console-script entry point: one-line errors, never a traceback for user mistakes.

    Typer runs in standalone mode, so usage errors and ``--help`` are its own (exit 2 and 0); our
    error type propagates out of it and is printed here as one line with exit 1. Ctrl-C exits 130 and
    SIGTERM 143, each after the run has written its record.
    """
    try:
        with _signals_interrupt():
            app()
    except BagcamsError as exc:
        typer.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except OSError as exc:  # the file system said no (a path that is a file, no space, no permission)
        where = f": {exc.filename}" if getattr(exc, "filename", None) else ""
        typer.echo(f"error: {exc.strerror or exc}{where}", err=True)
        sys.exit(1)
    except MemoryError:
        typer.echo(
            "error: out of memory: try a smaller --batch-size or --input-size, or a larger --cam-interval", err=True
        )
        sys.exit(1)
    except Terminated:
        typer.echo("terminated", err=True)
        sys.exit(128 + signal.SIGTERM)
    except (Interrupted, KeyboardInterrupt):
        typer.echo("interrupted", err=True)
        sys.exit(130)


if __name__ == "__main__":
    main()
