"""The one error path of the ``uqpot`` command line.

Every command runs inside :class:`UqpotGroup`, which turns what went wrong into what a user can act on:

- a user error (:class:`~uqpot.core.errors.UqpotError`: bad data, config, model file, option; a file that cannot
  be written: full disk, read-only folder) is one line ``error: <file>: <frame/field/key>: message`` on
  stderr and exit status 2 (several lines only when a data file has several problems, one per problem);
- an internal error (a bug) says that it is one, in one line, and where its traceback was written; exit 1.

Commands validate their inputs before writing, so a user error leaves nothing that could be taken for a
result.
"""

from __future__ import annotations

import errno
import os
import sys
import tempfile
import time
import traceback
from pathlib import Path

import click

from ..core.errors import DataErrors, UqpotError

EXIT_USER_ERROR = 2
EXIT_INTERNAL_ERROR = 1

#: OSError numbers that are the environment's fault (disk, permissions, paths), reported as user errors
USER_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOENT, errno.EEXIST,
               errno.ENOTDIR, errno.EISDIR, errno.EFBIG, errno.ENAMETOOLONG, errno.ENOTEMPTY, errno.EMFILE}


def fail(exc: UqpotError) -> None:
    """Prints a user error (one line per problem) and exits with status 2."""
    if isinstance(exc, DataErrors) and len(exc.problems) > 1:
        for p in exc.problems[:20]:
            click.echo(f"error: {p}", err=True)
        if len(exc.problems) > 20:
            click.echo(f"error: ... and {len(exc.problems) - 20} more problem(s)", err=True)
    else:
        click.echo(f"error: {exc}", err=True)
    sys.exit(EXIT_USER_ERROR)


def os_error_message(exc: OSError) -> str:
    where = exc.filename or "(unnamed file)"
    what = exc.strerror or str(exc)
    hint = ""
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        hint = "; free some space and rerun the same command (a training resumes from its last checkpoint)"
    elif exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        hint = "; choose a folder you can write to (e.g. with --out)"
    return f"{where}: {what}{hint}"


def internal_error(exc: BaseException) -> None:
    """Writes the traceback to a log file and says where it is, in one line; exits with status 1."""
    log = Path(tempfile.gettempdir()) / f"uqpot-internal-error-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    try:
        log.write_text(f"uqpot {' '.join(sys.argv[1:])}\n\n{text}")
        where = f"the traceback is in {log}"
    except OSError:
        where = "the traceback could not be written to a file; it follows"
        click.echo(text, err=True)
    msg = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
    click.echo(f"internal error ({type(exc).__name__}{': ' + msg if msg else ''}): this is a bug in uqpot, not a "
               f"problem with your input; {where}; please report it with that file", err=True)
    sys.exit(EXIT_INTERNAL_ERROR)


class UqpotGroup(click.Group):
    """A click group whose commands share one error path (see the module docstring)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, SystemExit, KeyboardInterrupt):
            raise
        except click.ClickException as exc:  # a bad option value, a missing argument: one line
            ctx_ = getattr(exc, "ctx", None)
            hint = f" (see '{ctx_.command_path} --help')" if isinstance(exc, click.UsageError) and ctx_ else ""
            click.echo(f"error: {exc.format_message()}{hint}", err=True)
            sys.exit(EXIT_USER_ERROR)
        except UqpotError as exc:
            fail(exc)
        except OSError as exc:
            if exc.errno in USER_ERRNOS:
                click.echo(f"error: {os_error_message(exc)}", err=True)
                sys.exit(EXIT_USER_ERROR)
            internal_error(exc)
        except Exception as exc:  # noqa: BLE001 - the one place where a bug becomes a message
            internal_error(exc)
