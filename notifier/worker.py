"""Runs one notebook with papermill in a child process (``python -m notifier.worker SPEC``).

The runner starts this process without SMTP credentials in its environment, in a
session of its own, and kills its whole process tree on the wall-clock timeout.
It writes ``result.json`` beside the output notebook:
``{"status": "ok" | "error", "error": {...}, "timings": {...}}``.
"""

from __future__ import annotations

import json
import os
import re
import sys
import threading
import time
import traceback
from pathlib import Path
from typing import Any

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


def strip_ansi(text: str) -> str:
    """Remove terminal colour codes from a traceback."""
    return _ANSI.sub("", text)


def _error_details(error: BaseException) -> dict[str, Any]:
    from papermill.exceptions import PapermillExecutionError

    if isinstance(error, PapermillExecutionError):
        return {
            "kind": "cell",
            "ename": error.ename,
            "evalue": strip_ansi(str(error.evalue)),
            "cell_index": error.cell_index,
            "exec_count": error.exec_count,
            "source": error.source,
            "traceback": strip_ansi("\n".join(error.traceback)),
        }
    kind = "dead_kernel" if type(error).__name__ == "DeadKernelError" else "engine"
    if type(error).__name__ in {"CellTimeoutError", "TimeoutError"}:
        kind = "cell_timeout"
    return {
        "kind": kind,
        "ename": type(error).__name__,
        "evalue": strip_ansi(str(error)),
        "traceback": strip_ansi("".join(traceback.format_exception(error))),
    }


def _skip_slow_optional_imports() -> None:
    """Keep jsonschema from importing rfc3987_syntax (~2 s building a grammar at import).

    nbformat pulls in jsonschema, which loads that optional package only to check
    'iri' string formats that notebook validation never uses.
    """
    sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[arg-type]


def execute(spec: dict[str, Any]) -> dict[str, Any]:
    """Execute the notebook described by ``spec``; return the result record."""
    started = time.perf_counter()
    _skip_slow_optional_imports()
    import papermill

    from notifier import archive, ipc_engine

    # Only after papermill (and jupyter_client) are fully imported: importing them in two
    # threads at once can hand one thread a partially initialized jupyter_client module.
    renderer_ready = threading.Thread(target=archive.preload_renderer, daemon=True)
    renderer_ready.start()  # nbconvert loads while the kernel runs, not after it
    ipc_engine.register()
    timings: dict[str, float] = {"imports": time.perf_counter() - started}
    output = Path(spec["output"])
    result: dict[str, Any] = {"status": "ok", "timings": timings}
    executing = time.perf_counter()
    try:
        papermill.execute_notebook(
            spec["notebook"],
            str(output),
            parameters=spec["parameters"],
            engine_name=ipc_engine.ENGINE_NAME,
            kernel_name=spec.get("kernel_name"),
            cwd=spec["cwd"],
            progress_bar=False,
            start_timeout=spec.get("start_timeout", 60),
            execution_timeout=spec.get("cell_timeout"),
            log_output=False,
        )
    except Exception as error:  # every failure is reported through result.json
        result = {"status": "error", "error": _error_details(error), "timings": timings}
    timings["execute"] = time.perf_counter() - executing
    timings.update(ipc_engine.TIMINGS)
    if output.is_file():
        rendering = time.perf_counter()
        renderer_ready.join(timeout=60)
        try:
            archive.render_html(output, output.with_suffix(".html"))
        except Exception as error:
            result.setdefault("warnings", []).append(f"HTML rendering failed: {error}")
        timings["render_html"] = time.perf_counter() - rendering
    return result


def _die_with_parent() -> None:
    """Linux: get SIGTERM when the runner dies (kill -9 included), so no orphan runs on.

    The runner passes its pid (``NOTIFIER_PARENT_PID``): comparing with it, rather than
    with 1, keeps this working when the runner itself is PID 1 (a container's entrypoint).
    """
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return
    expected = os.environ.get("NOTIFIER_PARENT_PID", "")
    if expected.isdigit() and os.getppid() != int(expected):
        sys.exit(1)  # the runner died before prctl took effect


def _adopt_descendants() -> None:
    """Linux: become the subreaper of everything the kernel starts, and take it down with us.

    As a child subreaper (PR_SET_CHILD_SUBREAPER) this process inherits the kernel's
    orphaned descendants (a ``nohup cmd &`` or a double-forked daemon in a session of its
    own) instead of init, so they stay in its process tree. On SIGTERM (the runner died,
    or the runner stops the run) every descendant is killed before this process exits.
    """
    import signal

    if sys.platform.startswith("linux"):
        import ctypes

        try:
            ctypes.CDLL(None, use_errno=True).prctl(36, 1)  # PR_SET_CHILD_SUBREAPER
        except (OSError, AttributeError):
            pass

    def stop(signum: int, _frame: Any) -> None:
        from notifier.processes import kill_descendants

        kill_descendants(os.getpid())
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, stop)


def main(argv: list[str]) -> int:
    """Entry point: run the spec file named in argv[1], write result.json."""
    _adopt_descendants()
    _die_with_parent()
    spec_path = Path(argv[1])
    spec = json.loads(spec_path.read_text(encoding="utf-8"))
    result = execute(spec)
    result_path = Path(spec["result"])
    tmp = result_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2), encoding="utf-8")
    tmp.replace(result_path)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
