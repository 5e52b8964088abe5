"""Shared fixtures: real SMTP servers on 127.0.0.1 that are always shut down."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

# Test helpers (smtp_server.py) import as top-level modules whatever pytest's import mode.
sys.path.insert(0, str(Path(__file__).resolve().parent))

from smtp_server import SMTPTestServer  # noqa: E402


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
