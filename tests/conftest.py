"""Shared fixtures and helpers: real SMTP servers on 127.0.0.1 that are always shut down,
and :func:`wait_until`, the one way tests wait for something (a deadline, never a sleep).

Test helpers live in ``tests/support`` (the SMTP server, notebooks, daemon processes);
they import as top-level modules whatever pytest's import mode. Tests marked ``slow``
(real daemons, outages, kills) are left out by ``make test-fast``; ``make test`` runs all.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE / "support")]

from smtp_server import SMTPTestServer  # noqa: E402


def wait_until(
    condition: Callable[[], Any], timeout: float, what: str, *, interval: float = 0.1
) -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


@pytest.fixture
def smtp_server_factory() -> Iterator[Callable[..., SMTPTestServer]]:
    """``make(mode="plain", auth=None, behaviour=None)`` -> a started server, stopped after."""
    servers: list[SMTPTestServer] = []

    def make(mode: str = "plain", **kwargs: Any) -> SMTPTestServer:
        server = SMTPTestServer(mode, **kwargs).start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


@pytest.fixture
def smtp_server(smtp_server_factory: Callable[..., SMTPTestServer]) -> SMTPTestServer:
    """A plain SMTP server with no login and no misbehaviour."""
    return smtp_server_factory("plain")
