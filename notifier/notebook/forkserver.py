"""A fork server for prepared workers: papermill and nbconvert imported once, not per run.

A prepared worker spends most of its CPU on imports (papermill, nbclient, nbconvert and
a first rendering: about 0.7 CPU-seconds, the kernel about 0.5). When many slots are due
at once on a small machine that CPU is what the runs queue behind. The daemon's warm pool
therefore starts one server (``python -m notifier.notebook.forkserver``) that imports all
of it once, single-threaded, and forks a worker for each prepared slot: a fork costs a few
milliseconds, and the worker then does exactly what a worker started with ``--prepare``
does (:func:`notifier.notebook.worker.main`): its own session, environment (no secrets:
the server itself is started with the kernel environment), Landlock sandbox, subreaper
and SIGTERM rules, its kernel. Nothing of one run is in the server: workers are forked
before their kernel and sandbox exist, and the server never runs notebook code.

Process rules: the server gets SIGTERM when the pool's thread ends (the daemon died,
kill -9 included), and then kills every worker and kernel it started; each worker gets
SIGTERM when the server ends. The server is not dumpable (PR_SET_DUMPABLE 0), so notebook
code of the same user cannot attach to it and tamper with later workers.

The daemon's side: :class:`ForkServer` (start, :meth:`ForkServer.spawn`) and
:class:`ForkedProcess`, which the runner supervises like a ``subprocess.Popen`` (wait,
poll, returncode, stdin; the server writes a worker's exit status into its folder when it
reaps it). Where the server cannot start (no ``pidfd_open``, an error) the pool starts
workers with ``--prepare`` instead.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import IO, Any

EXIT_STATUS = "exit_status"  # in a forked worker's folder, written when the server reaps it
_MESSAGE = 65536


class ForkedProcess:
    """A worker forked by the server, supervised like a ``subprocess.Popen``."""

    def __init__(self, pid: int, folder: Path, stdin: IO[bytes]) -> None:
        self.pid = pid
        self.folder = folder
        self.stdin: IO[bytes] | None = stdin
        self.returncode: int | None = None
        self.args = ["forked worker", str(folder)]
        try:
            self._pidfd: int | None = os.pidfd_open(pid)
        except ProcessLookupError:  # already gone
            self._pidfd = None
        self._lock = threading.Lock()

    def _exited(self, timeout: float | None) -> bool:
        if self._pidfd is None:
            return True
        readable, _, _ = select.select([self._pidfd], [], [], timeout)
        return bool(readable)

    def _finish(self) -> int:
        self.returncode = self._collect()
        if self._pidfd is not None:
            os.close(self._pidfd)
            self._pidfd = None
        return self.returncode

    def _collect(self) -> int:
        """The exit status the server wrote when it reaped the worker (a moment after exit)."""
        path = self.folder / EXIT_STATUS
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            try:
                return int(path.read_text())
            except (OSError, ValueError):
                time.sleep(0.005)
        return -int(signal.SIGKILL)  # the server is gone: it was killed with it

    def poll(self) -> int | None:
        """The exit status, or None while the worker runs."""
        with self._lock:
            if self.returncode is None and self._exited(0):
                self._finish()
            return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Wait for the worker to exit; ``subprocess.TimeoutExpired`` after ``timeout``."""
        with self._lock:
            if self.returncode is not None:
                return self.returncode
            if not self._exited(timeout):
                raise subprocess.TimeoutExpired(self.args, timeout or 0)
            return self._finish()


class ForkServer:
    """The daemon's handle on the fork server (one per warm pool)."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env
        self._lock = threading.Lock()
        self._sock: socket.socket | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> None:
        """Start the server and wait until it has imported everything; OSError when it cannot.

        Call it from a thread that outlives the server (PR_SET_PDEATHSIG is per thread).
        """
        if not hasattr(os, "pidfd_open"):
            raise OSError("os.pidfd_open is not available (Linux 5.3 and Python 3.9 needed)")
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "notifier.notebook.forkserver", str(theirs.fileno())],
                env=self.env,
                stdin=subprocess.DEVNULL,
                pass_fds=[theirs.fileno()],
                start_new_session=True,
            )
        finally:
            theirs.close()
        ours.settimeout(timeout)
        try:
            hello = json.loads(ours.recv(_MESSAGE) or b"{}")
        except (OSError, ValueError) as error:
            self.stop()
            raise OSError(f"the fork server did not start: {error}") from None
        if hello.get("ready") is not True:
            self.stop()
            raise OSError(f"the fork server did not start: {hello}")
        self._sock = ours

    @property
    def alive(self) -> bool:
        """True while the server runs."""
        return self.proc is not None and self.proc.poll() is None and self._sock is not None

    def spawn(self, prepare: Path, env: dict[str, str], log: Path) -> ForkedProcess:
        """Fork a worker for the prepare spec ``prepare``, with ``env`` and its output in
        ``log``; OSError when the server cannot."""
        if not self.alive or self._sock is None or self.proc is None:
            raise OSError("the fork server is not running")
        env = {**env, "NOTIFIER_PARENT_PID": str(self.proc.pid)}  # its parent is the server
        read_end, write_end = os.pipe()
        try:
            with open(log, "ab") as log_file:
                request = json.dumps({"prepare": str(prepare), "env": env}).encode()
                with self._lock:
                    self._sock.settimeout(30)
                    socket.send_fds(self._sock, [request], [read_end, log_file.fileno()])
                    reply = json.loads(self._sock.recv(_MESSAGE) or b"{}")
        except (OSError, ValueError) as error:
            os.close(write_end)
            raise OSError(f"the fork server failed: {error}") from None
        finally:
            os.close(read_end)
        if "pid" not in reply:
            os.close(write_end)
            raise OSError(f"the fork server failed: {reply.get('error', reply)}")
        return ForkedProcess(int(reply["pid"]), prepare.parent, os.fdopen(write_end, "wb"))

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server (and so every worker it forked that still runs)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# -- the server ----------------------------------------------------------------------------


def _prctl(option: int, value: int) -> None:
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _serve(sock: socket.socket) -> None:
    from notifier.notebook.processes import kill_descendants

    folders: dict[int, Path] = {}

    def reap(*_: Any) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            folder = folders.pop(pid, None)
            if folder is not None:
                code = os.waitstatus_to_exitcode(status)
                try:
                    tmp = folder / f".{EXIT_STATUS}.tmp"
                    tmp.write_text(str(code))
                    os.replace(tmp, folder / EXIT_STATUS)
                except OSError:
                    pass  # the runner removed the folder: nobody waits for it

    def stop(signum: int, _frame: Any) -> None:
        try:
            kill_descendants(os.getpid())  # every worker and kernel forked from here
        finally:
            os._exit(128 + signum)

    signal.signal(signal.SIGCHLD, reap)
    signal.signal(signal.SIGTERM, stop)
    while True:
        try:
            message, fds, _flags, _addr = socket.recv_fds(sock, _MESSAGE, 2)
        except OSError:
            break
        if not message:  # the daemon closed its end
            break
        # no reaping between the fork and noting whose folder the child has
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
        try:
            request = json.loads(message)
            pid = _fork_worker(request, fds, sock)
            folders[pid] = Path(request["prepare"]).parent
        except Exception as error:  # noqa: BLE001 - tell the daemon, keep serving
            sock.send(json.dumps({"error": repr(error)}).encode())
            continue
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
            for fd in fds:
                os.close(fd)
        sock.send(json.dumps({"pid": pid}).encode())
    stop(signal.SIGTERM, None)


def _fork_worker(request: dict[str, Any], fds: list[int], sock: socket.socket) -> int:
    stdin_fd, log_fd = fds
    pid = os.fork()
    if pid:
        return pid
    # the child: from here on a worker started with --prepare, in a session of its own
    code = 1
    try:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGCHLD})
        _prctl(4, 1)  # dumpable again, as a worker started with --prepare is
        sock.close()
        os.setsid()
        os.dup2(stdin_fd, 0)
        os.dup2(log_fd, 1)
        os.dup2(log_fd, 2)
        os.closerange(3, os.sysconf("SC_OPEN_MAX") if hasattr(os, "sysconf") else 1024)
        sys.stdin = open(0, encoding="utf-8", closefd=False)  # noqa: SIM115
        sys.stdout = open(1, "w", encoding="utf-8", closefd=False, buffering=1)  # noqa: SIM115
        sys.stderr = open(2, "w", encoding="utf-8", closefd=False, buffering=1)  # noqa: SIM115
        os.environ.clear()
        os.environ.update(request["env"])
        import tempfile

        tempfile.tempdir = None  # TMPDIR is this worker's
        from notifier.notebook import worker

        code = worker.main(["worker", "--prepare", request["prepare"]])
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    except BaseException as error:  # noqa: BLE001 - a forked child never returns to the server
        try:
            print(f"notifier: the forked worker failed: {error!r}", flush=True)
        finally:
            code = 1
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)


def main(argv: list[str]) -> int:
    """Entry point: import everything a worker needs, then fork workers on request."""
    from notifier.notebook import worker

    worker._die_with_parent()  # the daemon (its pool's thread) died: so do we
    _prctl(4, 0)  # PR_SET_DUMPABLE 0: no ptrace, no /proc/<pid>/mem by notebook code
    sock = socket.socket(fileno=int(argv[1]))
    try:
        worker._skip_slow_optional_imports()
        import papermill  # noqa: F401

        from notifier.notebook import archive, cell_errors, engine, progress, sandbox  # noqa: F401

        archive.preload_renderer(warm_up=True)  # in this thread: no thread may run at fork
        engine.register()
        if threading.active_count() != 1:
            raise RuntimeError("a thread runs in the fork server: forking would be unsafe")
    except Exception as error:  # noqa: BLE001 - the daemon prepares without the server
        sock.send(json.dumps({"ready": False, "error": repr(error)}).encode())
        return 1
    sock.send(json.dumps({"ready": True, "pid": os.getpid()}).encode())
    _serve(sock)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
