"""A papermill engine that talks to the kernel over IPC sockets and times its start.

IPC (Unix domain sockets in a private folder) keeps kernel traffic off TCP, so
ipykernel's "running over TCP without encryption" warning never reaches users.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

from jupyter_client.manager import AsyncKernelManager
from nbclient.util import run_sync
from papermill.clientwrap import PapermillNotebookClient
from papermill.engines import NBClientEngine, papermill_engines
from traitlets import default

ENGINE_NAME = "notifier-ipc"
SOCKET_DIR_ENV = "NOTIFIER_SOCKET_DIR"
TIMINGS: dict[str, float] = {}


class IPCKernelManager(AsyncKernelManager):
    """A kernel manager whose sockets are Unix domain sockets in a private temp folder."""

    @default("transport")
    def _default_transport(self) -> str:
        return "ipc"

    @default("ip")
    def _default_ip(self) -> str:
        # a short path: a Unix socket's path is limited to about 100 bytes (the run's own
        # TMPDIR, deep in the run folder, is too long)
        base = os.environ.get(SOCKET_DIR_ENV) or tempfile.gettempdir()
        folder = Path(tempfile.mkdtemp(prefix="nfk-", dir=base))
        return str(folder / "k")

    async def start_kernel(self, **kw: Any) -> None:
        """Start the kernel and record how long the launch took."""
        started = time.perf_counter()
        await super().start_kernel(**kw)
        TIMINGS["kernel_launch"] = time.perf_counter() - started


class TimedClient(PapermillNotebookClient):
    """Records how long the kernel took to become ready."""

    async def async_start_new_kernel_client(self) -> Any:
        """Connect to the kernel and record when it answered."""
        started = time.perf_counter()
        client = await super().async_start_new_kernel_client()
        TIMINGS["kernel_ready"] = time.perf_counter() - started + TIMINGS.get("kernel_launch", 0)
        return client

    start_new_kernel_client = run_sync(async_start_new_kernel_client)


class IPCEngine(NBClientEngine):
    """papermill's nbclient engine with the IPC kernel manager."""

    @classmethod
    def execute_managed_notebook(cls, nb_man: Any, kernel_name: str, **kwargs: Any) -> Any:
        """Execute with papermill's notebook client over IPC sockets."""
        start_timeout = kwargs.pop("start_timeout", 60)
        execution_timeout = kwargs.pop("execution_timeout", None)
        for unused in ("input_path", "timeout", "startup_timeout"):
            kwargs.pop(unused, None)
        client = TimedClient(
            nb_man,
            kernel_name=kernel_name,
            kernel_manager_class=IPCKernelManager,
            timeout=execution_timeout,
            startup_timeout=start_timeout,
            **kwargs,
        )
        return client.execute()


def register() -> None:
    """Make ``engine_name='notifier-ipc'`` available to papermill."""
    papermill_engines.register(ENGINE_NAME, IPCEngine)
