"""Warm starts (issue 12): fire time to accepted at the sink, side by side in one run.

The demo report (notebooks/daily_report.ipynb) is due at a slot; the clock starts at the
slot and stops when the SMTP sink accepts its email (the sink notes the time of its 250
reply to DATA). Compared, interleaved, each at a slot of its own so they never overlap:

- ``notifier schedule``, warm (the default NOTIFIER_WARM_LEAD, worker and kernel prepared
  before the slot), and the same with ``warm_imports: true`` on the job;
- ``notifier schedule``, cold (NOTIFIER_WARM_LEAD=0: what the daemon did before);
- what cron would do at the same instant: ``papermill`` CLI, then a small smtplib script
  that mails the same charts and attachments (benchmarks/bench_run.py's bare pair).

Goal (issue 12): the warm daemon at most 0.7x the cron pair.

    python benchmarks/bench_warm.py [--repeat 3] [--spacing 20]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from bench_run import BARE_SEND, BIN, NOTEBOOK  # noqa: E402
from bench_smtp import free_port, wait_for_port  # noqa: E402

# an aiosmtpd sink that prints "<first recipient> <unix time>" when it accepts a message
_TIMING_SINK = r"""
import sys, time
from aiosmtpd.controller import Controller

class Sink:
    async def handle_DATA(self, server, session, envelope):
        print(envelope.rcpt_tos[0], time.time(), flush=True)
        return "250 2.0.0 Ok: queued"

controller = Controller(Sink(), hostname="127.0.0.1", port=int(sys.argv[1]), data_size_limit=None)
controller.start()
print("ready", flush=True)
sys.stdin.read()
controller.stop()
"""

VARIANTS = ("warm", "warm-imports", "cold", "cron")


class TimingSink:
    """The sink in a subprocess; ``accepted[recipient]`` is a list of acceptance times."""

    def __init__(self) -> None:
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _TIMING_SINK, str(self.port)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        assert self.proc.stdout is not None
        self.proc.stdout.readline()
        wait_for_port(self.port)
        self.accepted: dict[str, list[float]] = {}
        self._lock = threading.Lock()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            recipient, at = line.split()
            with self._lock:
                self.accepted.setdefault(recipient, []).append(float(at))

    def first_after(self, recipient: str, slot: float) -> float | None:
        with self._lock:
            times = [t for t in self.accepted.get(recipient, []) if t >= slot]
        return min(times) if times else None

    def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.terminate()
        self.proc.wait(5)


def start_daemon(folder: Path, port: int, slots: list[datetime], warm: bool, imports: bool):
    folder.mkdir()
    jobs = "".join(
        f"  - name: report-{i}\n    notebook: {NOTEBOOK}\n"
        f'    schedule: {{at: "{slot.strftime("%Y-%m-%dT%H:%M:%S+00:00")}"}}\n'
        f"    to: {folder.name}@example.com\n" + ("    warm_imports: true\n" if imports else "")
        for i, slot in enumerate(slots)
    )
    (folder / "jobs.yaml").write_text("defaults:\n  timezone: UTC\njobs:\n" + jobs)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SMTP_", "NOTIFIER_"))}
    env.update(
        {
            "SMTP_HOST": "127.0.0.1",
            "SMTP_PORT": str(port),
            "SMTP_SECURITY": "none",
            "SMTP_FROM": "reports@example.com",
            "NOTIFIER_DB_URL": f"sqlite:///{folder / 'ledger.db'}",
            "NOTIFIER_RUNS_DIR": str(folder / "runs"),
            "NOTIFIER_OUTBOX": str(folder / "outbox"),
        }
    )
    if not warm:
        env["NOTIFIER_WARM_LEAD"] = "0"
    return subprocess.Popen(
        [BIN / "notifier", "schedule", str(folder / "jobs.yaml"), "--no-web"],
        cwd=folder,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(folder / "daemon.log", "wb"),
    )


def cron_at(slot: datetime, port: int, work: Path) -> None:
    """Sleep until ``slot``, then do what a crontab line would: a shell running the pair."""
    time.sleep(max(0.0, slot.timestamp() - time.time()))
    parts, output = work / f"parts-{slot:%H%M%S}", work / f"cron-{slot:%H%M%S}.ipynb"
    send = work / "send.py"
    command = (
        f"cd {NOTEBOOK.parent} && NOTIFIER_PARTS_DIR={parts} MPLBACKEND=Agg "
        f"{BIN / 'papermill'} {NOTEBOOK} {output} >/dev/null 2>&1 && "
        f"sed 's/bench@example.com/cron@example.com/' {send} | {sys.executable} - "
        f"{output} {parts} {port}"
    )
    subprocess.run(["/bin/sh", "-c", command], check=False)


def first_cells(folder: Path, slots: list[datetime]) -> list[float]:
    """How long after its slot each run's first code cell started (papermill's times)."""
    late = []
    for i, slot in enumerate(slots):
        for output in (folder / "runs" / f"report-{i}").glob("*/output.ipynb"):
            cells = json.loads(output.read_text(encoding="utf-8"))["cells"]
            first = next(c for c in cells if c["cell_type"] == "code")
            started = first["metadata"].get("papermill", {}).get("start_time")
            if started:
                late.append((datetime.fromisoformat(started) - slot).total_seconds())
    return late


def prepared_memory(daemon: int) -> str:
    """Memory of the daemon's prepared workers and kernels (and of its fork server)."""
    import psutil

    rss = pss = 0
    server = ""
    prepared: set[psutil.Process] = set()
    for proc in psutil.Process(daemon).children(recursive=True):
        try:
            if "notifier.notebook.forkserver" in " ".join(proc.cmdline()):
                info = proc.memory_full_info()
                server = (
                    f"; fork server {info.rss / 2**20:.0f} MB RSS, {info.pss / 2**20:.0f} MB PSS"
                )
            elif proc.environ().get("NOTIFIER_PREPARED_FOLDER"):  # a prepared kernel
                prepared |= {proc, proc.parent()}  # and its worker
        except psutil.Error:
            continue
    count = len(prepared)
    for proc in prepared:
        try:
            info = proc.memory_full_info()
            rss, pss = rss + info.rss, pss + info.pss
        except psutil.Error:
            continue
    return (
        f"{count} processes (worker + kernel) {rss / 2**20:.0f} MB RSS, "
        f"{pss / 2**20:.0f} MB PSS{server}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--spacing", type=float, default=20.0, help="seconds between slots")
    args = parser.parse_args(argv)
    first = (datetime.now(timezone.utc) + timedelta(seconds=25)).replace(microsecond=0)
    order = [v for _ in range(args.repeat) for v in VARIANTS]
    slots: dict[str, list[datetime]] = {v: [] for v in VARIANTS}
    for n, variant in enumerate(order):
        slots[variant].append(first + timedelta(seconds=n * args.spacing))
    sink = TimingSink()
    daemons = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        (work / "send.py").write_text(BARE_SEND)
        print(
            f"notebook: {NOTEBOOK.relative_to(ROOT)}; sink: aiosmtpd (notes its 250 to DATA); "
            f"{args.repeat} slots each, {args.spacing:.0f} s apart, interleaved "
            f"({', '.join(VARIANTS)})",
            flush=True,
        )
        try:
            for variant in ("warm", "warm-imports", "cold"):
                daemons.append(
                    start_daemon(
                        work / variant,
                        sink.port,
                        slots[variant],
                        warm=variant != "cold",
                        imports=variant == "warm-imports",
                    )
                )
            memory: dict[str, str] = {}
            time.sleep(3)
            for variant, daemon in zip(VARIANTS[:3], daemons, strict=True):
                if daemon.poll() is not None:
                    log = (work / variant / "daemon.log").read_text()
                    raise SystemExit(f"the {variant} daemon did not start:\n{log}")
            for n, variant in enumerate(order):
                slot = slots[variant][0] if n < len(VARIANTS) else None
                if variant == "cron":
                    cron_at(slots["cron"][n // len(VARIANTS)], sink.port, work)
                elif variant.startswith("warm") and slot is not None:
                    time.sleep(max(0.0, slot.timestamp() - 1.0 - time.time()))
                    memory[variant] = prepared_memory(daemons[VARIANTS.index(variant)].pid)
            last = max(s for v in VARIANTS for s in slots[v])
            deadline = time.time() + max(0.0, last.timestamp() - time.time()) + 120
            while time.time() < deadline and any(
                sink.first_after(f"{v}@example.com", s.timestamp()) is None
                for v in VARIANTS
                for s in slots[v]
            ):
                time.sleep(0.5)
        finally:
            for daemon in daemons:
                daemon.terminate()
            for daemon in daemons:
                try:
                    daemon.wait(60)
                except subprocess.TimeoutExpired:
                    daemon.kill()
            sink.stop()
        cells = {v: first_cells(work / v, slots[v]) for v in ("warm", "warm-imports", "cold")}
    medians = {}
    for variant in VARIANTS:
        took = []
        for slot in slots[variant]:
            at = sink.first_after(f"{variant}@example.com", slot.timestamp())
            if at is not None:
                took.append(at - slot.timestamp())
        medians[variant] = statistics.median(took) if took else float("nan")
        print(
            f"{variant:13s} fire time to accepted: median {medians[variant]:5.2f} s "
            f"(runs: {', '.join(f'{t:.2f}' for t in took) or 'none'})",
            flush=True,
        )
    for variant, late in cells.items():
        print(
            f"{variant:13s} first cell starts after the slot: "
            + (", ".join(f"{t:.2f}" for t in late) or "none")
            + " s (goal for warm: within 0.2 s)"
        )
    for variant, figures in memory.items():
        print(f"{variant}: one slot prepared, 1 s before it: {figures}")
    for variant in ("warm", "warm-imports", "cold"):
        print(
            f"{variant} daemon vs cron pair: {medians[variant] / medians['cron']:.2f}x"
            + (" (goal <= 0.7x)" if variant.startswith("warm") else "")
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
