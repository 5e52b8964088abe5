"""Serving the dashboard: uvicorn on a socket bound here, in a thread with its own loop.

Binding the socket first gives a clear error for a port in use (``notifier web`` exits 2,
``notifier schedule`` warns and keeps scheduling) and lets tests ask for port 0.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading

import uvicorn

from notifier.errors import UsageError
from notifier.web.app import create_app
from notifier.web.config import WebConfig
from notifier.web.state import Dashboard

log = logging.getLogger("notifier.web")


def bind(config: WebConfig) -> socket.socket:
    """A listening socket on the configured address; UsageError when that fails."""
    host = config.host.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, config.port))
        sock.listen(128)
    except OSError as error:
        sock.close()
        reason = error.strerror or str(error)
        if error.errno in (98, 48):  # EADDRINUSE (Linux, macOS)
            raise UsageError(
                f"The dashboard cannot listen on {config.host}:{config.port}: the port is in use "
                "(another notifier web or schedule?).",
                "pass --port with a free port (or --port 0 for any), or stop the other process",
            ) from None
        raise UsageError(
            f"The dashboard cannot listen on {config.host}:{config.port}: {reason}.",
            "pass another --host / --port",
        ) from None
    sock.set_inheritable(False)
    return sock


class _QuietServer(uvicorn.Server):
    """uvicorn's server, looking for a stop request once a second instead of ten times: an
    idle daemon should cost next to nothing (about 10 ms of CPU per 20 s, not 40)."""

    async def main_loop(self) -> None:
        """Tick every second until asked to exit (on_tick(0) also refreshes the Date header)."""
        while not await self.on_tick(0):
            await asyncio.sleep(TICK)


TICK = 1.0


class WebServer:
    """The dashboard's uvicorn server in a background thread."""

    def __init__(self, dashboard: Dashboard, config: WebConfig) -> None:
        self.dashboard = dashboard
        self.config = config
        self.socket = bind(config)  # UsageError for a port in use
        self.port = int(self.socket.getsockname()[1])
        self.app = create_app(dashboard, config, self.port)
        self._server = _QuietServer(
            uvicorn.Config(
                self.app,
                log_level="warning",
                access_log=False,
                lifespan="off",
                timeout_graceful_shutdown=3,
                server_header=False,
            )
        )
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        """The URL to open, with the token when one is needed (print it once, never log it)."""
        return self.config.url(self.port)

    @property
    def base_url(self) -> str:
        """The URL without the token."""
        return self.config.url(self.port, with_token=False)

    def start(self) -> WebServer:
        """Serve in a daemon thread; returns once the server accepts connections."""

        def serve() -> None:
            try:
                asyncio.run(self._server.serve(sockets=[self.socket]))
            except Exception as error:  # one line; the daemon keeps scheduling
                log.error("the dashboard stopped: %s", error)

        self._thread = threading.Thread(target=serve, name="notifier-web", daemon=True)
        self._thread.start()
        for _ in range(200):
            if self._server.started or not self._thread.is_alive():
                break
            self._thread.join(0.025)
        self.dashboard.started.set()
        return self

    def wait(self, timeout: float | None = None) -> None:
        """Block until the server thread ends."""
        if self._thread is not None:
            self._thread.join(timeout)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving and close the socket."""
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
        self.socket.close()
