"""Errors that reach the user, and the exit codes they map to.

Exit codes follow docker's convention so scripts can tell a container's own
status from pymachine's: 125 pymachine failed, 126 the command could not be
invoked, 127 the command was not found.
"""

from __future__ import annotations

EXIT_ERROR = 125
EXIT_CANNOT_INVOKE = 126
EXIT_NOT_FOUND = 127


class PymachineError(Exception):
    """A failure the user can act on: printed as one line (plus an optional hint)."""

    exit_code = EXIT_ERROR

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint


class UsageError(PymachineError):
    """Bad command line or configuration value."""


class NotFoundError(PymachineError):
    """A named object (container, image, volume) does not exist."""


class ConflictError(PymachineError):
    """The object exists already or is in a state that forbids the operation."""


class BusError(PymachineError):
    """A D-Bus call failed: `name` is the D-Bus error name (or errno's), `message` the peer's text.

    Raised by the bus layer (bus.py); here so that the CLI's handler knows it without loading
    the compiled module. Printed as "text (name)" where no layer above added context."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{message} ({name})")
        self.name = name
        self.message = message
