"""Runs one notebook with papermill in a child process (``python -m notifier.notebook.worker SPEC``).

The runner starts this process without SMTP credentials in its environment, in a
session of its own, and kills its whole process tree on the wall-clock timeout.
It writes ``result.json`` beside the output notebook:
``{"status": "ok" | "error", "error": {...}, "timings": {...}, "warnings": [...]}``
(the error record: :mod:`notifier.notebook.cell_errors`).

Spec keys (spec.json): ``notebook``, ``output``, ``result``, ``parameters``, ``cwd``,
optional ``kernel_name`` (else the notebook's kernel, else this environment's Python),
``cell_timeout``, ``start_timeout`` and ``hide_code`` (output.html without the code).

Warm start (``python -m notifier.notebook.worker --prepare PREPARE.json``, started by
:mod:`notifier.notebook.prepared` before a slot): the same sandbox, imports and process
rules, and the kernel started in the notebook's folder; then it waits for the run's spec
as one JSON line on stdin (with ``environment``: what a cold run's kernel would have had
in its environment, set in the kernel silently before the first cell), runs it on that
kernel and shuts the kernel down. Closing stdin without a spec shuts it down unused.
Prepare keys: ``notebook``, ``cwd``, ``hidden_files``, ``kernel_name``, ``start_timeout``,
``warm_imports``, ``ready`` (a file written once the kernel answers), ``max_wait``.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from notifier.errors import RunError
from notifier.notebook.cell_errors import strip_ansi

__all__ = ["choose_kernel", "execute", "main", "prepare", "run_prepared", "strip_ansi"]


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


def _load_runner(*, warm_up: bool = False) -> threading.Thread:
    """Import papermill and the engine; nbconvert loads in a thread (joined before rendering;
    ``warm_up``: a prepared worker also renders a small notebook there, before its slot)."""
    _skip_slow_optional_imports()
    import papermill  # noqa: F401

    from notifier.notebook import archive
    from notifier.notebook import engine as ipc_engine

    # Only after papermill (and jupyter_client) are fully imported: importing them in two
    # threads at once can hand one thread a partially initialized jupyter_client module.
    renderer_ready = threading.Thread(
        target=archive.preload_renderer, kwargs={"warm_up": warm_up}, daemon=True
    )
    renderer_ready.start()  # nbconvert loads while the kernel runs, not after it
    ipc_engine.register()
    return renderer_ready


def execute(spec: dict[str, Any]) -> dict[str, Any]:
    """Execute the notebook described by ``spec``; return the result record."""
    started = time.perf_counter()
    from notifier.notebook.sandbox import hide_files

    # before the kernel (and any thread) starts: they all inherit it
    not_hidden = hide_files(spec.get("hidden_files", []))
    renderer_ready = _load_runner()
    timings: dict[str, float] = {"imports": time.perf_counter() - started}
    warnings: list[str] = [not_hidden] if not_hidden else []
    return _execute(spec, timings, warnings, renderer_ready)


def _execute(
    spec: dict[str, Any],
    timings: dict[str, float],
    warnings: list[str],
    renderer_ready: threading.Thread,
    prepared: _Prepared | None = None,
) -> dict[str, Any]:
    """Run papermill (on the prepared kernel when there is one that fits), then render."""
    import papermill

    from notifier.notebook import archive
    from notifier.notebook import engine as ipc_engine
    from notifier.notebook.progress import CellProgress

    output = Path(spec["output"])
    result: dict[str, Any] = {"status": "ok", "timings": timings}
    executing = time.perf_counter()
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
        kernel = prepared.take(spec, kernel_name, language) if prepared else None
        papermill.execute_notebook(
            spec["notebook"],
            str(output),
            parameters=spec["parameters"],
            engine_name=ipc_engine.ENGINE_NAME,
            kernel_name=kernel.name if kernel else kernel_name,
            language=language,
            cwd=spec["cwd"],
            progress_bar=False,
            start_timeout=spec.get("start_timeout", 60),
            execution_timeout=spec.get("cell_timeout"),
            log_output=False,
            on_cell_start=cell_started,
            **({"prepared": kernel} if kernel else {}),
        )
    except _StopAfterSkip as stop:  # the runner reads the skip from the parts folder
        print(f"notifier: {stop}", flush=True)  # worker.log
    except Exception as error:  # every failure is reported through result.json
        details = _error_details(error, output, spec.get("cell_timeout"))
        result = {"status": "error", "error": details, "timings": timings}
    finally:
        if prepared is not None:  # used once: never for another run
            prepared.begin_close()  # it stops while the output renders
    timings["execute"] = time.perf_counter() - executing
    timings.update(ipc_engine.TIMINGS)
    try:
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
    finally:
        if prepared is not None:
            stopping = time.perf_counter()
            prepared.close()
            timings["kernel_stop"] = time.perf_counter() - stopping
    if warnings:
        result["warnings"] = warnings
    return result


# -- warm starts: a worker prepared before its slot ---------------------------------------------


def _kernel_of_notebook(notebook: str) -> str | None:
    metadata = _notebook_metadata(Path(notebook)) or {}
    kernelspec = metadata.get("kernelspec")
    return kernelspec.get("name") if isinstance(kernelspec, dict) else None


def warm_import_code(notebook: Path) -> str | None:
    """Code that imports the modules the notebook's first code cell imports (the parameters
    cell does not count), binding no name; None when that cell imports nothing."""
    import ast

    try:
        cells = json.loads(notebook.read_text(encoding="utf-8")).get("cells", [])
    except (OSError, ValueError, AttributeError):
        return None
    code = [
        c
        for c in cells
        if isinstance(c, dict)
        and c.get("cell_type") == "code"
        and "parameters" not in ((c.get("metadata") or {}).get("tags") or [])
    ]
    if not code:
        return None
    source = code[0].get("source", "")
    source = "".join(source) if isinstance(source, list) else str(source)
    # magics and shell lines are IPython's, not Python's: leave them out
    lines = [line for line in source.splitlines() if not line.lstrip().startswith(("%", "!"))]
    try:
        tree = ast.parse("\n".join(lines))
    except SyntaxError:
        return None
    modules: list[str] = []
    for node in tree.body:
        if isinstance(node, ast.Import):
            modules += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            modules.append(node.module)
    modules = list(dict.fromkeys(modules))
    if not modules:
        return None
    return (
        "def _notifier_warm_imports():\n"
        "    import importlib\n"
        f"    for name in {modules!r}:\n"
        "        try:\n"
        "            importlib.import_module(name)\n"
        "        except Exception:\n"
        "            pass  # the notebook's own cell reports it\n"
        "_notifier_warm_imports()\n"
        "del _notifier_warm_imports\n"
    )


class _Prepared:
    """The kernel a prepared worker started before its run; used by that one run only."""

    def __init__(self, spec: dict[str, Any], timings: dict[str, float]) -> None:
        from notifier.notebook.engine import PreparedKernel

        kernel_name, self.language, _warning = choose_kernel(spec)
        name = kernel_name or _kernel_of_notebook(spec["notebook"])
        if not name:
            raise RunError("The notebook names no kernel.", "name one with kernel: in jobs.yaml")
        self.kernel: Any = PreparedKernel(
            name, cwd=spec["cwd"], startup_timeout=spec.get("start_timeout", 60)
        )
        if spec.get("warm_imports"):
            code = warm_import_code(Path(spec["notebook"]))
            if code:
                started = time.perf_counter()
                self.kernel.run_silently(code, timeout=spec.get("start_timeout", 60))
                timings["warm_imports"] = time.perf_counter() - started

    def take(
        self, spec: dict[str, Any], kernel_name: str | None, language: str | None
    ) -> Any | None:
        """The prepared kernel, set up for this run; None when it does not fit (the
        notebook's kernel changed since): then it is shut down and papermill starts one."""
        name = kernel_name or _kernel_of_notebook(spec["notebook"])
        if self.kernel is None:
            return None
        if name != self.kernel.name or language != self.language:
            print(
                f"notifier: the notebook's kernel changed since the worker was prepared "
                f"({self.kernel.name!r}, now {name!r}): starting a new one",
                flush=True,
            )
            self.close()
            return None
        # what a cold kernel has in its environment from the start: this run's id, parts
        # folder and recipients (never a secret: the runner sends the mail itself)
        environment = {str(k): str(v) for k, v in spec.get("environment", {}).items()}
        try:
            reply = self.kernel.run_silently(
                f"__import__('os').environ.update({environment!r})",
                timeout=spec.get("start_timeout", 60),
            )
        except Exception as error:  # it died while waiting (OOM, a crash): start a new one
            reply = {"status": f"no answer ({error})"}
        if reply.get("status") != "ok":
            print(f"notifier: the prepared kernel refused its run's settings: {reply}", flush=True)
            self.close()
            return None
        return self.kernel

    def begin_close(self) -> None:
        """Ask the kernel to stop; :meth:`close` waits for it."""
        if self.kernel is not None:
            try:
                self.kernel.begin_shutdown()
            except Exception as error:  # close() stops it the hard way
                print(f"notifier: asking the prepared kernel to stop failed: {error!r}", flush=True)

    def close(self) -> None:
        """Shut the kernel down (once)."""
        kernel, self.kernel = self.kernel, None
        if kernel is not None:
            try:
                kernel.shutdown()
            except Exception as error:  # the subreaper kills what is left when we exit
                print(f"notifier: shutting the prepared kernel down failed: {error!r}", flush=True)


def _wait_for_run(max_wait: float) -> str:
    """The run spec (one JSON line on stdin); "" when the runner closed stdin or never wrote."""
    import select

    readable, _, _ = select.select([sys.stdin], [], [], max_wait)
    return sys.stdin.readline() if readable else ""


@dataclass
class _Warm:
    """A prepared worker's state between its preparation and its run."""

    prepared: _Prepared
    timings: dict[str, float]
    warnings: list[str]
    renderer_ready: threading.Thread


def prepare(prepare_spec: dict[str, Any]) -> _Warm:
    """A warm start: the sandbox, the imports and the kernel (and, with ``warm_imports``,
    the first cell's imports), exactly as a cold run does them, before the slot."""
    started = time.perf_counter()
    from notifier.notebook.sandbox import hide_files

    not_hidden = hide_files(prepare_spec.get("hidden_files", []))  # before any thread
    renderer_ready = _load_runner(warm_up=True)
    timings: dict[str, float] = {"imports": time.perf_counter() - started}
    prepared = _Prepared(prepare_spec, timings)
    timings["prepared"] = time.perf_counter() - started
    ready = prepare_spec.get("ready")
    if ready:
        Path(ready).write_text(json.dumps({"kernel_pid": prepared.kernel.pid}), encoding="utf-8")
    print(f"notifier: prepared in {timings['prepared']:.2f}s; waiting for the run", flush=True)
    return _Warm(prepared, timings, [not_hidden] if not_hidden else [], renderer_ready)


def run_prepared(warm: _Warm, max_wait: float) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """Block until the runner writes the run's spec (spec.json as one line) on stdin, then
    run it on the prepared kernel: (spec, result). None when stdin closed without a run
    (the slot was cancelled) or nothing came within ``max_wait``: the kernel is shut down."""
    waiting = time.perf_counter()
    line = _wait_for_run(max_wait)
    if not line.strip():
        print("notifier: no run for this prepared worker: shutting its kernel down", flush=True)
        warm.prepared.close()
        return None
    warm.timings["waited"] = time.perf_counter() - waiting
    spec = json.loads(line)
    os.environ.update(spec.get("environment", {}))  # a kernel started instead gets them too
    from notifier.notebook import engine as ipc_engine

    ipc_engine.TIMINGS.clear()  # the kernel started before the slot: counted in "prepared"
    return spec, _execute(spec, warm.timings, warm.warnings, warm.renderer_ready, warm.prepared)


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


def _write_result(spec: dict[str, Any], result: dict[str, Any]) -> None:
    result_path = Path(spec["result"])
    tmp = result_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=2), encoding="utf-8")
    tmp.replace(result_path)


def main(argv: list[str]) -> int:
    """Entry point: run the spec file named in argv[1], write result.json.

    ``--prepare FILE``: a prepared worker (warm start, :func:`prepare_and_run`); exit
    status 0 after a run or a cancelled one, 3 when the kernel could not be prepared.
    """
    _adopt_descendants()
    _die_with_parent()
    if argv[1:2] == ["--prepare"]:
        prepare_spec = json.loads(Path(argv[2]).read_text(encoding="utf-8"))
        try:
            warm = prepare(prepare_spec)
        except Exception as error:  # the runner runs this slot cold, and reports it then
            print(f"notifier: could not prepare the run: {error!r}", flush=True)
            return 3
        done = run_prepared(warm, float(prepare_spec.get("max_wait", 3600)))
        if done is not None:
            _write_result(*done)
        return 0
    spec = json.loads(Path(argv[1]).read_text(encoding="utf-8"))
    _write_result(spec, execute(spec))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
