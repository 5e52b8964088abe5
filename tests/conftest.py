"""Shared fixtures and helpers: real SMTP servers on 127.0.0.1 that are always shut down,
and :func:`wait_until`, the one way tests wait for something (a deadline, never a sleep).

Test helpers live in ``tests/support`` (the SMTP server, notebooks, daemon processes,
PostgreSQL); they import as top-level modules whatever pytest's import mode. Tests marked
``slow`` (real daemons, outages, kills) are left out by ``make test-fast``; ``make test``
runs all.

Ledger tests run on SQLite and on PostgreSQL through :func:`db_url` (parameters
``sqlite`` and ``postgresql``). PostgreSQL is ``NOTIFIER_TEST_DATABASE_URL`` when set,
else a throwaway cluster made with the machine's ``initdb``/``pg_ctl``; without either the
PostgreSQL cases are skipped with one line, except under ``CI=true``, where they fail.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE / "support")]

from postgres import (  # noqa: E402
    Server,
    Unavailable,
    cluster_unavailable,
    postgres_server,
    server_unavailable,
)
from smtp_server import SMTPTestServer  # noqa: E402

BACKENDS = ("sqlite", "postgresql")


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


# --- ledger databases --------------------------------------------------------------------


def _needs(item: pytest.Item) -> str | None:
    """``cluster`` (a cluster of its own), ``server`` (any PostgreSQL) or None."""
    names = set(getattr(item, "fixturenames", ()))
    if "own_cluster" in names:
        return "cluster"
    callspec = getattr(item, "callspec", None)
    params = callspec.params.values() if callspec is not None else ()
    if names & {"postgres", "postgres_url"} or "postgresql" in params:
        return "server"
    return None


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Without PostgreSQL, leave its cases out with one line (under CI=true they fail)."""
    wanted = {item: need for item in items if (need := _needs(item))}
    if not wanted or os.environ.get("CI") == "true":
        return
    reasons = {"server": server_unavailable(), "cluster": None}
    if any(need == "cluster" for need in wanted.values()):
        reasons["cluster"] = cluster_unavailable()
    left_out = [item for item, need in wanted.items() if reasons[need]]
    if left_out:
        items[:] = [item for item in items if item not in set(left_out)]
        config.hook.pytest_deselected(items=left_out)
        why = reasons["server"] or reasons["cluster"]
        config.stash[_LEFT_OUT] = f"{len(left_out)} PostgreSQL test case(s) not run: {why}"


_LEFT_OUT = pytest.StashKey[str]()


def _xdist_controller(config: pytest.Config) -> bool:
    """True in the process that runs pytest-xdist's workers (not in a worker)."""
    return bool(getattr(config.option, "numprocesses", None)) and not hasattr(config, "workerinput")


def pytest_terminal_summary(terminalreporter: Any, config: pytest.Config) -> None:
    """The one line that says PostgreSQL cases were left out, and why."""
    note = config.stash.get(_LEFT_OUT, None)
    if note is None and _xdist_controller(config) and os.environ.get("CI") != "true":
        # under pytest-xdist the workers collect (and leave the cases out): say it here
        why = server_unavailable()
        note = f"PostgreSQL test cases not run: {why}" if why else None
    if note:
        terminalreporter.write_line(f"note: {note}", yellow=True)


@pytest.fixture(scope="session")
def postgres() -> Iterator[Server]:
    """A PostgreSQL server for the whole session (see the module docstring)."""
    try:
        context = postgres_server()
        server = context.__enter__()
    except Unavailable as why:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL is required in CI (CI=true): {why}", pytrace=False)
        pytest.skip(f"PostgreSQL cases skipped: {why}")
    try:
        yield server
    finally:
        context.__exit__(None, None, None)


@pytest.fixture
def postgres_url(postgres: Server) -> Iterator[str]:
    """A fresh, empty PostgreSQL database for one test; dropped afterwards."""
    url = postgres.create_database()
    try:
        yield url
    finally:
        postgres.drop_database(url)


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh ledger URL: an SQLite file in tmp_path, or a new PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'ledger.db'}"
    return request.getfixturevalue("postgres_url")
