"""The command line's one error type and its exit codes."""

from __future__ import annotations

EXIT_OK, EXIT_USAGE, EXIT_MODEL, EXIT_INTERRUPTED = 0, 1, 2, 130


class CliError(Exception):
    """A user-facing error: one line for stderr and the exit code."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code
