"""User-facing errors: one line, no traceback, non-zero exit."""

import argparse
import errno
import os
import sys
from pathlib import Path
from typing import NoReturn


class UserError(Exception):
    """A problem with the user's input or environment, reported as a single line.

    The message must name the file:line or config key at fault.
    """

    exit_code = 2

    def __init__(self, message: str):
        # Users see exactly one line, so fold any newlines an underlying library put in.
        super().__init__(" ".join(str(message).split()))


def report(message: object) -> None:
    """Print the one-line `error: ...` every command-line tool uses, on stderr."""
    print(f"error: {' '.join(str(message).split())}", file=sys.stderr)


class ArgumentParser(argparse.ArgumentParser):
    """argparse that reports a bad command line as the one `error: ...` line (argparse prints the usage too)."""

    def error(self, message: str) -> NoReturn:
        report(f"{self.prog}: {message} (see --help)")
        sys.exit(UserError.exit_code)


# The machine's failures, not the code's: they become the one-line error like bad input does.
_ENVIRONMENT_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOTDIR,
                       errno.EISDIR, errno.EEXIST, errno.ENAMETOOLONG, errno.EIO, errno.EFBIG, errno.ENOMEM}


def root_cause(exc: BaseException) -> BaseException:
    """The innermost exception: through Ray's wrappers (`RayTaskError.cause`, which holds the worker's own
    exception) and Python's `raise ... from` chains."""
    seen = {id(exc)}
    while True:
        inner = getattr(exc, "cause", None)
        inner = inner if isinstance(inner, BaseException) else exc.__cause__
        if inner is None or id(inner) in seen:
            return exc
        seen.add(id(inner))
        exc = inner


def environment_error(exc: BaseException, out_dir: object) -> UserError | None:
    """The one-line UserError for a failure of the environment (disk full, read-only, a file in the way,
    permission denied, out of memory), wherever in the run or in which Ray worker it happened; None for
    anything else (a bug keeps its traceback)."""
    cause = root_cause(exc)
    if isinstance(cause, UserError):
        return cause
    if isinstance(cause, MemoryError) or type(cause).__name__ == "OutOfMemoryError":  # torch.cuda's and Ray's
        first = (str(cause).strip().splitlines() or [type(cause).__name__])[0][:200]
        return UserError(f"render: a worker ran out of memory ({first}); try fewer cluster.workers per GPU, "
                         f"a smaller render.batch_size or smaller render.height/render.width")
    if isinstance(cause, OSError) and cause.errno in _ENVIRONMENT_ERRNOS:
        what = cause.strerror or os.strerror(cause.errno)
        # Writes lose the file name (a failed write() carries none); every write of a run goes to output_dir.
        name = cause.filename if isinstance(cause.filename, str) else None
        if name is None or _inside(name, out_dir):
            return UserError(f"output_dir={out_dir}: {what}")
        return UserError(f"{name}: {what}")
    return None


def _inside(name: str, folder: object) -> bool:
    try:
        return Path(name).resolve().is_relative_to(Path(str(folder)).resolve())
    except (OSError, ValueError):
        return False
