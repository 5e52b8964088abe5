"""PostgreSQL for tests and benchmarks: a server to make fresh databases on.

``NOTIFIER_TEST_DATABASE_URL`` (a server URL whose user may create databases, e.g.
``postgresql+psycopg://postgres@127.0.0.1:5432/postgres``) is used when it is set;
otherwise :class:`Cluster` makes a throwaway cluster with the machine's own ``initdb``
and ``pg_ctl`` (Debian's ``postgresql`` package) in a temporary folder, on a free port,
and removes it afterwards. PostgreSQL refuses to run as root: as root the cluster runs
as the ``postgres`` user (``runuser``). Each test gets a database of its own
(:meth:`Server.create_database`), dropped afterwards, so tests stay independent.

The cluster trades durability for speed (fsync off: it survives a crash of the server,
not of the machine): it holds test data only.
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

URL_VARIABLE = "NOTIFIER_TEST_DATABASE_URL"
DRIVER = "postgresql+psycopg"
# fsync off: the cluster survives its own crash (pg_ctl stop -m immediate, as the outage
# tests do) but not the machine's. synchronous_commit stays on: a commit the ledger was
# told about must survive a crash of the server, as it would in production.
_SERVER_SETTINGS = (
    "fsync=off",
    "full_page_writes=off",
    "listen_addresses=127.0.0.1",
    "max_connections=300",
    "shared_buffers=32MB",
)


class Unavailable(RuntimeError):
    """No PostgreSQL to test with; the message says why and what to install."""


def find_bindir() -> Path | None:
    """The folder of ``initdb`` and ``pg_ctl``: $PATH, else the newest Debian install."""
    found = shutil.which("pg_ctl")
    if found and shutil.which("initdb"):
        return Path(os.path.realpath(found)).parent
    candidates = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    return Path(candidates[-1]).parent if candidates else None


def free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Cluster:
    """A throwaway PostgreSQL cluster in a temporary folder: start, stop, start again."""

    def __init__(self, bindir: Path | None = None) -> None:
        found = bindir or find_bindir()
        if found is None:
            raise Unavailable(
                "no PostgreSQL server programs (initdb, pg_ctl) on this machine: install "
                f"Debian's postgresql package, or set {URL_VARIABLE}"
            )
        self.bindir = found
        self.as_postgres = os.geteuid() == 0  # PostgreSQL refuses to run as root
        if self.as_postgres:
            try:
                self._user = pwd.getpwnam("postgres")
            except KeyError:
                raise Unavailable(
                    "running as root and there is no 'postgres' user to run the test "
                    "cluster as (PostgreSQL refuses to run as root)"
                ) from None
        self.root = Path(tempfile.mkdtemp(prefix="notifier-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.running = False
        if self.as_postgres:
            os.chown(self.root, self._user.pw_uid, self._user.pw_gid)
        self.root.chmod(0o700)
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
            "--no-instructions",
        )

    @property
    def url(self) -> str:
        """The maintenance database's URL (for creating the tests' databases)."""
        return f"{DRIVER}://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, program: str, *args: str, timeout: float = 120) -> str:
        command = [str(self.bindir / program), *args]
        if self.as_postgres:
            command = ["runuser", "-u", "postgres", "--", *command]
        done = subprocess.run(
            command,
            cwd=self.root,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        if done.returncode != 0:
            raise Unavailable(
                f"{program} failed ({done.returncode}): {(done.stderr or done.stdout).strip()[-600:]}"
            )
        return done.stdout

    def start(self) -> Cluster:
        """Start the server (again) on the same port and data; wait until it takes connections."""
        options = " ".join(
            [f"-p {self.port}", f"-k {self.root}", *(f"-c {s}" for s in _SERVER_SETTINGS)]
        )
        self._run(
            "pg_ctl",
            "-D",
            str(self.data),
            "-l",
            str(self.root / "server.log"),
            "-o",
            options,
            "-w",
            "-t",
            "60",
            "start",
        )
        self.running = True
        return self

    def stop(self, mode: str = "immediate") -> None:
        """Stop the server (``immediate``: as a crash would; clients see a lost link)."""
        if not self.running:
            return
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "-t", "60", "stop")
        self.running = False

    def remove(self) -> None:
        """Stop the server and delete the cluster's folder."""
        try:
            self.stop()
        except Unavailable:
            pass
        shutil.rmtree(self.root, ignore_errors=True)

    def log(self) -> str:
        """The server's log (for a failing test's message)."""
        path = self.root / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""


class Server:
    """A PostgreSQL server reached by ``url`` that makes a fresh database per test."""

    def __init__(self, url: str, cluster: Cluster | None = None) -> None:
        from sqlalchemy.engine import make_url

        self.cluster = cluster
        parsed = make_url(url)
        if parsed.drivername in ("postgresql", "postgres"):
            parsed = parsed.set(drivername=DRIVER)
        self._admin = parsed
        self.created: list[str] = []

    def _connect(self) -> Any:
        import psycopg

        u = self._admin
        return psycopg.connect(
            host=u.host or "127.0.0.1",
            port=u.port or 5432,
            user=u.username,
            password=u.password,
            dbname=u.database or "postgres",
            autocommit=True,
            connect_timeout=10,
        )

    def url_for(self, name: str) -> str:
        """The URL of database ``name`` on this server (password included)."""
        return self._admin.set(database=name).render_as_string(hide_password=False)

    def create_database(self, prefix: str = "t") -> str:
        """A new empty database; returns its URL."""
        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        with contextlib.closing(self._connect()) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        self.created.append(name)
        return self.url_for(name)

    def drop_database(self, url: str) -> None:
        """Drop a database made by :meth:`create_database` (closing its connections)."""
        from sqlalchemy.engine import make_url

        name = make_url(url).database
        if name not in self.created:
            return
        with contextlib.suppress(Exception), contextlib.closing(self._connect()) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            self.created.remove(name)

    def check(self) -> None:
        """Connect once (a clear Unavailable instead of a failure in every test)."""
        try:
            with contextlib.closing(self._connect()) as conn:
                conn.execute("SELECT 1")
        except Exception as exc:
            where = self._admin.render_as_string(hide_password=True)
            reason = " ".join(str(exc).split())[:300]
            raise Unavailable(f"cannot connect to {where}: {reason}") from None


def cluster_unavailable() -> str | None:
    """Why no throwaway cluster can be made here (None: it can), without making one."""
    if find_bindir() is None:
        return (
            "no PostgreSQL server programs (initdb, pg_ctl) on this machine: install Debian's "
            f"postgresql package, or set {URL_VARIABLE}"
        )
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root and there is no 'postgres' user to run a test cluster as"
    return None


def server_unavailable() -> str | None:
    """Why the tests have no PostgreSQL (None: they have one), as cheaply as it can tell."""
    url = os.environ.get(URL_VARIABLE)
    if not url:
        return cluster_unavailable()
    try:
        Server(url).check()
    except Unavailable as why:
        return str(why)
    return None


@contextlib.contextmanager
def throwaway_cluster() -> Iterator[Cluster]:
    """A started cluster, removed afterwards."""
    cluster = Cluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.remove()


@contextlib.contextmanager
def postgres_server() -> Iterator[Server]:
    """``NOTIFIER_TEST_DATABASE_URL`` when set, else a throwaway cluster (Unavailable if none)."""
    url = os.environ.get(URL_VARIABLE)
    if url:
        server = Server(url)
        server.check()
        yield server
        for name in list(server.created):
            server.drop_database(server.url_for(name))
        return
    with throwaway_cluster() as cluster:
        server = Server(cluster.url, cluster)
        server.check()
        yield server
