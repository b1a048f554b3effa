"""User-facing errors: one line, no traceback, non-zero exit."""

import argparse
import sys
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
