"""Exceptions a user can cause, each carrying the cause and the fix.

The CLI prints ``str(error)`` and exits non-zero; it never shows a traceback for
these. Messages must never contain secrets.
"""

from __future__ import annotations


class NotifierError(Exception):
    """Base class: ``message`` says what is wrong, ``fix`` says what to do."""

    exit_code = 1

    def __init__(self, message: str, fix: str | None = None) -> None:
        self.message = message
        self.fix = fix
        super().__init__(message)

    def __str__(self) -> str:
        return f"{self.message}\n  fix: {self.fix}" if self.fix else self.message


class ConfigError(NotifierError):
    """A setting in the environment or .env is missing, malformed or contradictory."""

    exit_code = 2


class MessageError(NotifierError):
    """An email cannot be built: bad address, header injection, too large, bad attachment."""

    exit_code = 2


class DeliveryError(NotifierError):
    """The mail server could not be reached or refused the session."""


class JobsFileError(NotifierError):
    """jobs.yaml is invalid; ``problems`` lists every error found, each on one line."""

    exit_code = 2

    def __init__(self, path: str, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        count = len(problems)
        head = f"{path}: {count} error{'s' if count != 1 else ''}"
        super().__init__(head + "\n" + "\n".join(f"  {p}" for p in problems))


class RunError(NotifierError):
    """A notebook run could not start: missing notebook, undeclared parameter, runs folder."""

    exit_code = 2


class UsageError(NotifierError):
    """A command-line argument is wrong (a repeated -p, a non-positive --timeout...)."""

    exit_code = 2
