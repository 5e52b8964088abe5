"""Runs one notebook with papermill in a child process (``python -m notifier.notebook.worker SPEC``).

The runner starts this process without SMTP credentials in its environment, in a
session of its own, and kills its whole process tree on the wall-clock timeout.
It writes ``result.json`` beside the output notebook:
``{"status": "ok" | "error", "error": {...}, "timings": {...}, "warnings": [...]}``
(the error record: :mod:`notifier.notebook.cell_errors`).

Spec keys (spec.json): ``notebook``, ``output``, ``result``, ``parameters``, ``cwd``,
optional ``kernel_name`` (else the notebook's kernel, else this environment's Python),
``cell_timeout``, ``start_timeout`` and ``hide_code`` (output.html without the code).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from notifier.errors import RunError
from notifier.notebook.cell_errors import strip_ansi

__all__ = ["choose_kernel", "execute", "main", "strip_ansi"]


def _error_details(
    error: BaseException, output: Path | None = None, cell_timeout: float | None = None
) -> dict[str, Any]:
    """The result.json record of a failed execution (see :mod:`notifier.notebook.cell_errors`)."""
    from notifier.notebook.cell_errors import error_details

    return error_details(error, output, cell_timeout)


def _notebook_metadata(path: Path) -> dict[str, Any] | None:
    try:
        metadata = json.loads(path.read_text(encoding="utf-8")).get("metadata")
    except (OSError, ValueError, AttributeError):
        return None  # papermill reports an unreadable notebook itself
    return metadata if isinstance(metadata, dict) else {}


def choose_kernel(spec: dict[str, Any]) -> tuple[str | None, str | None, str | None]:
    """(kernel name, language, warning) for papermill: the spec's, the notebook's, or Python.

    A notebook saved without a kernelspec (VS Code's new notebooks) names no kernel:
    it runs with this environment's Python kernel, and the warning says so. A notebook
    in another language that names no kernel is a RunError; a kernel that is not
    installed raises jupyter_client's NoSuchKernel.
    """
    metadata = _notebook_metadata(Path(spec["notebook"]))
    if metadata is None:
        return spec.get("kernel_name"), None, None
    kernelspec = metadata.get("kernelspec")
    kernelspec = kernelspec if isinstance(kernelspec, dict) else {}
    language_info = metadata.get("language_info")
    language_info = language_info if isinstance(language_info, dict) else {}
    language = kernelspec.get("language") or language_info.get("name")
    if spec.get("kernel_name"):  # the job's choice
        if language:
            return spec["kernel_name"], None, None
        from jupyter_client.kernelspec import KernelSpecManager

        chosen = KernelSpecManager().get_kernel_spec(spec["kernel_name"])
        return spec["kernel_name"], chosen.language or "python", None
    if kernelspec.get("name"):
        return None, None, None
    name = Path(spec["notebook"]).name
    if language and str(language).lower() != "python":
        raise RunError(
            f"{name} names no kernel, and it is written in {language}, not Python.",
            "name its kernel with kernel: in jobs.yaml (or --kernel), or select a kernel "
            "in your editor and save the notebook",
        )
    from jupyter_client.kernelspec import NATIVE_KERNEL_NAME

    warning = (
        f"{name} names no kernel (its metadata has no kernelspec, as when VS Code saves a "
        f"new notebook): ran it with {NATIVE_KERNEL_NAME!r}, this environment's Python; "
        "set kernel: in jobs.yaml (or --kernel) to choose another"
    )
    return NATIVE_KERNEL_NAME, None if language else "python", warning


class _StopAfterSkip(Exception):  # noqa: N818 - a stop, not a failure
    """The notebook called ``report.skip()`` and went on (``%%capture`` or a caught skip)."""


def _stop_after_skip() -> Any:
    """An ``on_cell_start`` check: once ``report.skip()`` was recorded, no cell runs.

    ``Skipped`` stops the notebook unless the notebook keeps it from papermill: a
    ``%%capture`` cell swallows every exception, and ``except BaseException:`` catches it.
    """
    from notifier.notebook.bundle import PARTS_DIR_ENV, SKIP_RECORD

    parts_dir = os.environ.get(PARTS_DIR_ENV)

    def check(**_: Any) -> None:
        if parts_dir and (Path(parts_dir) / SKIP_RECORD).exists():
            raise _StopAfterSkip("report.skip() was called: the following cells do not run")

    return check


def _skip_slow_optional_imports() -> None:
    """Keep jsonschema from importing rfc3987_syntax (~2 s building a grammar at import).

    nbformat pulls in jsonschema, which loads that optional package only to check
    'iri' string formats that notebook validation never uses.
    """
    sys.modules.setdefault("rfc3987_syntax", None)  # type: ignore[arg-type]


def execute(spec: dict[str, Any]) -> dict[str, Any]:
    """Execute the notebook described by ``spec``; return the result record."""
    started = time.perf_counter()
    from notifier.notebook.sandbox import hide_files

    # before the kernel (and any thread) starts: they all inherit it
    not_hidden = hide_files(spec.get("hidden_files", []))
    _skip_slow_optional_imports()
    import papermill

    from notifier.notebook import archive
    from notifier.notebook import engine as ipc_engine

    # Only after papermill (and jupyter_client) are fully imported: importing them in two
    # threads at once can hand one thread a partially initialized jupyter_client module.
    renderer_ready = threading.Thread(target=archive.preload_renderer, daemon=True)
    renderer_ready.start()  # nbconvert loads while the kernel runs, not after it
    ipc_engine.register()
    timings: dict[str, float] = {"imports": time.perf_counter() - started}
    output = Path(spec["output"])
    result: dict[str, Any] = {"status": "ok", "timings": timings}
    warnings: list[str] = [not_hidden] if not_hidden else []
    executing = time.perf_counter()
    from notifier.notebook.progress import CellProgress

    progress = CellProgress(output.parent, Path(spec["notebook"]))  # progress.json, live
    skipped = _stop_after_skip()

    def cell_started(**cell: Any) -> None:
        skipped(**cell)
        progress.cell_started(**cell)

    try:
        kernel_name, language, warning = choose_kernel(spec)
        if warning:
            warnings.append(warning)
            print(f"notifier: {warning}", flush=True)  # worker.log
        papermill.execute_notebook(
            spec["notebook"],
            str(output),
            parameters=spec["parameters"],
            engine_name=ipc_engine.ENGINE_NAME,
            kernel_name=kernel_name,
            language=language,
            cwd=spec["cwd"],
            progress_bar=False,
            start_timeout=spec.get("start_timeout", 60),
            execution_timeout=spec.get("cell_timeout"),
            log_output=False,
            on_cell_start=cell_started,
        )
    except _StopAfterSkip as stop:  # the runner reads the skip from the parts folder
        print(f"notifier: {stop}", flush=True)  # worker.log
    except Exception as error:  # every failure is reported through result.json
        details = _error_details(error, output, spec.get("cell_timeout"))
        result = {"status": "error", "error": details, "timings": timings}
    timings["execute"] = time.perf_counter() - executing
    timings.update(ipc_engine.TIMINGS)
    if output.is_file():
        rendering = time.perf_counter()
        renderer_ready.join(timeout=60)
        try:
            archive.render_html(
                output, output.with_suffix(".html"), hide_code=bool(spec.get("hide_code"))
            )
        except Exception as error:
            warnings.append(f"HTML rendering failed: {error}")
        timings["render_html"] = time.perf_counter() - rendering
    if warnings:
        result["warnings"] = warnings
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

    from notifier.notebook.processes import kill_descendants  # never import inside a signal handler

    def stop(signum: int, _frame: Any) -> None:
        try:
            kill_descendants(os.getpid())
        except BaseException as error:  # noqa: BLE001 - whatever happens, exit below
            print(f"notifier: stopping the notebook's processes failed: {error!r}", flush=True)
        finally:
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
