"""Every error a user can cause, in one place: each carries the cause and the fix.

The CLI prints ``str(error)`` and exits with ``exit_code`` (2: bad input; 1: something
failed); it never shows a traceback for these. Messages never contain secrets.

Each also inherits the matching standard exception (as aiosmtplib's errors do), so code
that catches ``ValueError`` for bad input or ``ConnectionError`` for delivery problems
catches ours too: a bad setting, address, jobs file or argument is a ``ValueError``; a
mail server that cannot be used is a ``ConnectionError``; a ledger that cannot be used
is an ``OSError`` (a missing ledger a ``FileNotFoundError``).
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


class ConfigError(NotifierError, ValueError):
    """A setting in the environment or .env is missing, malformed or contradictory."""

    exit_code = 2


class MessageError(NotifierError, ValueError):
    """An email cannot be built: bad address, header injection, too large, bad attachment."""

    exit_code = 2


class DeliveryError(NotifierError, ConnectionError):
    """The mail server could not be reached or refused the session."""


class JobsFileError(NotifierError, ValueError):
    """jobs.yaml is invalid; ``problems`` lists every error found, each on one line."""

    exit_code = 2

    def __init__(self, path: str, problems: list[str]) -> None:
        self.path = path
        self.problems = problems
        count = len(problems)
        head = f"{path}: {count} error{'s' if count != 1 else ''}"
        super().__init__(head + "\n" + "\n".join(f"  {p}" for p in problems))


class RunError(NotifierError, ValueError):
    """A notebook run could not start: missing notebook, undeclared parameter, runs folder."""

    exit_code = 2


class UsageError(NotifierError, ValueError):
    """A command-line argument is wrong (a repeated -p, a non-positive --timeout...)."""

    exit_code = 2


class LedgerError(NotifierError, OSError):
    """The ledger database cannot be used (locked file, server unreachable)."""

    def __init__(self, message: str, fix: str | None = None) -> None:
        NotifierError.__init__(self, message, fix)


class LedgerConfigError(LedgerError):
    """``NOTIFIER_DB_URL`` is not a usable URL or its driver is not installed (bad input)."""

    exit_code = 2


class NoLedgerYet(LedgerError, FileNotFoundError):
    """A read-only command found no ledger: nothing has run in this project yet."""
