"""A papermill engine that talks to the kernel over IPC sockets and times its start.

IPC (Unix domain sockets in a private folder) keeps kernel traffic off TCP, so
ipykernel's "running over TCP without encryption" warning never reaches users.

For warm starts a :class:`PreparedKernel` is started before its run (by a prepared
worker, see :mod:`notifier.notebook.prepared`); the engine then executes the notebook
on it (``prepared=``) instead of starting one, and the worker shuts it down after the
run: one prepared kernel serves exactly one run.
"""

from __future__ import annotations

import asyncio
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

    async def _async_cleanup_kernel(self) -> None:
        """Shut the kernel down as :class:`PreparedKernel` does (no 2.5 s stall when
        ipykernel lingers after answering), then let nbclient clean up."""
        if self.km is not None and self.kc is not None and self.owns_km:
            try:
                if await self.km.is_alive():
                    self.km.shutting_down = True
                    await _finish_shutdown(self.km, self.kc, self.kc.shutdown())
            except Exception as error:  # noqa: BLE001 - nbclient's cleanup below kills it
                self.log.debug("kernel shutdown: %s", error)
        await super()._async_cleanup_kernel()

    _cleanup_kernel = run_sync(_async_cleanup_kernel)  # what papermill's setup_kernel calls


# nbclient's default for the kernels it starts: no history file shared between kernels
_KERNEL_ARGUMENTS = ["--HistoryManager.hist_file=:memory:"]


class PreparedKernel:
    """A kernel started ahead of its run, with a ready client (a warm start).

    Started in the notebook's folder with the worker's environment, exactly as papermill
    starts one; :meth:`run_silently` runs code that leaves no trace in the notebook
    (silent, no history, no execution count).
    """

    def __init__(self, kernel_name: str, *, cwd: str, startup_timeout: float) -> None:
        self.name = kernel_name
        self.km = IPCKernelManager(kernel_name=kernel_name)
        self.kc: Any = None
        self._shutdown_requested = False
        self._shutdown_msg: str | None = None
        run_sync(self._start)(cwd, startup_timeout)

    async def _start(self, cwd: str, startup_timeout: float) -> None:
        started = time.perf_counter()
        await self.km.start_kernel(cwd=cwd, extra_arguments=list(_KERNEL_ARGUMENTS))
        try:
            self.kc = self.km.client()
            self.kc.start_channels()
            await self.kc.wait_for_ready(timeout=startup_timeout)
        except BaseException:
            await self._shutdown()
            raise
        self.kc.allow_stdin = False
        TIMINGS["kernel_ready"] = time.perf_counter() - started

    @property
    def pid(self) -> int | None:
        """The kernel's process id (None once it is gone)."""
        provisioner = getattr(self.km, "provisioner", None)
        process = getattr(provisioner, "process", None)
        return getattr(process, "pid", None)

    def run_silently(self, code: str, timeout: float) -> dict[str, Any]:
        """Execute ``code`` without output in the notebook; returns the reply's content."""
        return run_sync(self._run_silently)(code, timeout)

    async def _run_silently(self, code: str, timeout: float) -> dict[str, Any]:
        reply = await self.kc.execute_interactive(
            code,
            silent=True,
            store_history=False,
            allow_stdin=False,
            timeout=timeout,
            output_hook=lambda _msg: None,
        )
        return dict(reply.get("content", {}))

    def begin_shutdown(self) -> None:
        """Ask the kernel to stop without waiting for it (the worker renders the output
        meanwhile); :meth:`shutdown` then waits, and kills it if need be."""
        run_sync(self._begin_shutdown)()

    async def _begin_shutdown(self) -> None:
        if self._shutdown_requested or not self.km.has_kernel:
            return
        self._shutdown_requested = True
        self.km.shutting_down = True
        if self.kc is not None:
            # on the client's control channel, connected since the start (jupyter_client's
            # request_shutdown connects a new socket for it)
            self._shutdown_msg = self.kc.shutdown()
        else:
            await self.km.request_shutdown()

    def shutdown(self) -> None:
        """Stop the kernel: a shutdown request; once the kernel has answered it (it has then
        run its exit handlers) it gets a moment to exit, and is killed if it does not."""
        run_sync(self._shutdown)()

    async def _shutdown(self) -> None:
        try:
            if self.km.has_kernel:
                await self._begin_shutdown()
                await _finish_shutdown(self.km, self.kc, self._shutdown_msg)
        finally:
            if self.kc is not None:
                self.kc.stop_channels()
                self.kc = None
            await self.km.cleanup_resources()


async def _finish_shutdown(km: Any, kc: Any, request: str | None) -> None:
    """Wait for a kernel asked to shut down (``request``: the shutdown_request's id, sent on
    ``kc``'s control channel). Once it answered (it has run its exit handlers then) it gets
    half a second to exit, and is killed if it does not: "upon receipt of the reply, client
    code can safely assume that the kernel has shut down and it's safe to forcefully
    terminate it" (the messaging protocol); ipykernel 7 sometimes lingers after it, which
    jupyter_client's own shutdown waits out for 2.5 s. Without an answer: jupyter_client's
    wait (SIGTERM, then SIGKILL)."""
    try:
        if await _answered(kc, request):
            for _ in range(25):
                if not await km.is_alive():
                    return
                await asyncio.sleep(0.02)
            await km.shutdown_kernel(now=True)
        else:
            await km.finish_shutdown()
    except RuntimeError as error:  # already dead
        if "No kernel is running" not in str(error):
            raise


async def _answered(kc: Any, request: str | None, timeout: float = 2.5) -> bool:
    """Did the kernel answer the shutdown request ``request`` (within ``timeout``)?"""
    if kc is None or request is None:
        return False
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            reply = await kc.control_channel.get_msg(timeout=left)
        except Exception:  # noqa: BLE001 - queue.Empty: no answer in time
            return False
        if reply.get("parent_header", {}).get("msg_id") == request:
            return True
    return False


class IPCEngine(NBClientEngine):
    """papermill's nbclient engine with the IPC kernel manager."""

    @classmethod
    def execute_managed_notebook(cls, nb_man: Any, kernel_name: str, **kwargs: Any) -> Any:
        """Execute with papermill's notebook client over IPC sockets; on the kernel of
        ``prepared=`` (a :class:`PreparedKernel`, left running) when one is given."""
        prepared: PreparedKernel | None = kwargs.pop("prepared", None)
        start_timeout = kwargs.pop("start_timeout", 60)
        execution_timeout = kwargs.pop("execution_timeout", None)
        for unused in ("input_path", "timeout", "startup_timeout"):
            kwargs.pop(unused, None)
        client = TimedClient(
            nb_man,
            km=prepared.km if prepared else None,
            kernel_name=prepared.name if prepared else kernel_name,
            kernel_manager_class=IPCKernelManager,
            timeout=execution_timeout,
            startup_timeout=start_timeout,
            **kwargs,
        )
        if prepared is not None:
            client.kc = prepared.kc  # ready: nbclient neither starts nor stops this kernel
        return client.execute()


def register() -> None:
    """Make ``engine_name='notifier-ipc'`` available to papermill."""
    papermill_engines.register(ENGINE_NAME, IPCEngine)
