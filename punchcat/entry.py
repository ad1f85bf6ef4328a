"""From argv to an exit status, for ``punchcat`` and ``punchcat-lab``.

Errors become one line ``PROG: …`` on stderr, never a traceback: a
:class:`~punchcat.errors.PunchcatError` with its own status, a command line
that does not parse with 2, anything unexpected (a bug) with 1 — its
traceback shown only when ``PUNCHCAT_DEBUG`` is set or ``-vv`` was given
(:func:`show_tracebacks`).

Standard streams.  A standard stream that is closed when the program starts
(``>&-``) is opened on /dev/null first, so that no socket or pipe ever gets
file descriptor 0, 1 or 2 (an error message must never land in a
connection); :data:`CLOSED_STDIO` remembers which were closed, for the
checks that need them.  With *capture_stdout*, what the program prints on
``sys.stdout`` (``--help``, ``--version``, ``--plan``, a generated secret;
never the data, which goes to the file descriptor directly) is written out
at the end, so that a full disk, a closed pipe or a closed stdout is one
line ``cannot write output: …`` and status 1, whoever printed it.
"""

from __future__ import annotations

import io
import os
import sys
import threading
import traceback

import typer

from .errors import Interrupted, OutputFailed, PunchcatError, catch_signals
from .status import printable

DEBUG_ENV = "PUNCHCAT_DEBUG"

#: Standard file descriptors (0, 1, 2) that were closed at start.
CLOSED_STDIO: set[int] = set()
_debug = False


def show_tracebacks() -> None:
    """An internal error shows its traceback (``-vv``)."""
    global _debug
    _debug = True


def say(prog: str, message: str) -> None:
    try:
        sys.stderr.write(f"{prog}: {printable(message)}\n")
        sys.stderr.flush()
    except (OSError, ValueError, AttributeError):
        pass                              # stderr is gone: nothing better to do


def guard_stdio() -> None:
    """Open /dev/null on any of the descriptors 0, 1, 2 that is closed."""
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            null = os.open(os.devnull, os.O_RDWR)
            if null != fd:
                os.dup2(null, fd)
                os.close(null)
            CLOSED_STDIO.add(fd)


def write_stdout(text: str) -> None:
    """Write *text* to file descriptor 1, or raise :class:`OutputFailed`."""
    data = text.encode("utf-8", "surrogateescape")
    if data and 1 in CLOSED_STDIO:
        raise OutputFailed("cannot write output: standard output is closed")
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(1, view):]
        except InterruptedError:
            continue
        except OSError as exc:
            raise OutputFailed.from_os(exc) from None


class _Captured(io.StringIO):
    """sys.stdout while the program runs: text printed is kept for the end;
    the data itself goes to file descriptor 1, which fileno() names."""

    def fileno(self) -> int:
        return 1

    def isatty(self) -> bool:
        return os.isatty(1)


def run_app(app: typer.Typer, prog: str, argv: list[str] | None,
            interrupted: str | None = None, capture_stdout: bool = False) -> int:
    """Run *app*; returns the exit status.  *interrupted* is said after a
    signal (punchcat itself says nothing then, as nc)."""
    catch_signals()
    guard_stdio()
    real_stdout = sys.stdout
    captured = _Captured() if capture_stdout else None
    if captured is not None:
        sys.stdout = captured
    previous_hook = threading.excepthook
    threading.excepthook = lambda args: _thread_failed(prog, args)
    try:
        status = _run(app, prog, argv, interrupted)
    finally:
        threading.excepthook = previous_hook
        if captured is not None:
            sys.stdout = real_stdout
    if captured is not None and captured.getvalue():
        try:
            write_stdout(captured.getvalue())
        except OutputFailed as exc:
            say(prog, str(exc))
            return status or 1
    return status


def _internal_error(prog: str, where: str, exc: BaseException) -> None:
    """A bug: one line, its traceback only on request."""
    if _debug or os.environ.get(DEBUG_ENV):
        try:
            traceback.print_exception(type(exc), exc, exc.__traceback__)
        except (OSError, ValueError, AttributeError):
            pass
    say(prog, f"internal error{where}: {type(exc).__name__}: {exc} "
              f"(set {DEBUG_ENV}=1 or give -vv for details)")


def _thread_failed(prog: str, args: threading.ExceptHookArgs) -> None:
    """A bug in a background thread (tidying the routers, the router
    client): one line too, and the session goes on."""
    if args.exc_type is SystemExit or args.exc_value is None:
        return
    name = args.thread.name if args.thread is not None else "a thread"
    _internal_error(prog, f" in {name}", args.exc_value)


def _run(app: typer.Typer, prog: str, argv: list[str] | None, interrupted: str | None) -> int:
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
        _internal_error(prog, "", exc)
        return 1
    return status if isinstance(status, int) else 0

