"""From argv to an exit status, for ``punchcat`` and ``punchcat-lab``.

Errors become one line ``PROG: …`` on stderr, never a traceback: a
:class:`~punchcat.errors.PunchcatError` with its own status, a command line
that does not parse with 2, anything unexpected (a bug) with 1 — its
traceback shown only when ``PUNCHCAT_DEBUG`` is set.
"""

from __future__ import annotations

import os
import sys
import traceback

import typer

from .errors import Interrupted, PunchcatError, catch_signals

DEBUG_ENV = "PUNCHCAT_DEBUG"


def say(prog: str, message: str) -> None:
    try:
        sys.stderr.write(f"{prog}: {message}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass                              # stderr is gone: nothing better to do


def run_app(app: typer.Typer, prog: str, argv: list[str] | None,
            interrupted: str | None = None) -> int:
    """Run *app*; returns the exit status.  *interrupted* is said after a
    signal (punchcat itself says nothing then, as nc)."""
    catch_signals()
    try:
        status = app(args=argv, prog_name=prog, standalone_mode=False)
    except Interrupted as exc:
        if interrupted:
            say(prog, interrupted)
        return exc.exit_code
    except PunchcatError as exc:
        say(prog, str(exc))
        return exc.exit_code
    except typer.Exit as exc:
        return exc.exit_code
    except typer.Abort:
        return 130
    except typer.TyperException as exc:     # the command line did not parse
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        say(prog, f"{message} (see {prog} --help)")
        return getattr(exc, "exit_code", 2)
    except Exception as exc:                # a bug: one line, the details on request
        if os.environ.get(DEBUG_ENV):
            traceback.print_exc()
        say(prog, f"internal error: {type(exc).__name__}: {exc} "
                  f"(set {DEBUG_ENV}=1 for details)")
        return 1
    return status if isinstance(status, int) else 0
