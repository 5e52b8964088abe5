"""`notifier run` of the daily report against the bare pair, side by side in one run.

Bare pair: the `papermill` CLI on the same notebook, then a small smtplib script that
mails the same charts and attachments (read from the files the notebook wrote).
Both deliver to the same local SMTP sink. Median of N runs each, interleaved.
Also prints where one notifier run spends its time (cold start: worker imports,
kernel start, the notebook's import cell).

    python benchmarks/bench_run.py [--repeat 5]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from bench_smtp import sink  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
NOTEBOOK = ROOT / "notebooks" / "daily_report.ipynb"
BIN = Path(sys.executable).parent

BARE_SEND = r"""
import json, smtplib, sys
from email.message import EmailMessage
from pathlib import Path

output, parts, port = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
nb = json.loads(output.read_text())
bundle = [o["data"]["application/vnd.notifier.email+json"] for c in nb["cells"]
          for o in c.get("outputs", []) if "application/vnd.notifier.email+json" in o.get("data", {})][-1]
msg = EmailMessage()
msg["Subject"], msg["From"], msg["To"] = bundle["subject"], "reports@example.com", "bench@example.com"
msg.set_content("See the HTML version.")
msg.add_alternative(bundle["html"], subtype="html")
html = msg.get_payload()[1]
for image in bundle["images"]:
    html.add_related((parts / image["file"]).read_bytes(), "image", "png", cid=f"<{image['cid']}>")
for item in bundle["attachments"]:
    main, sub = item["mime_type"].split("/")
    msg.add_attachment((parts / item["file"]).read_bytes(), maintype=main, subtype=sub,
                       filename=item["filename"])
with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
    smtp.send_message(msg)
"""


def run_notifier(port: int, work: Path) -> tuple[float, dict]:
    env = {
        **os.environ,
        "SMTP_HOST": "127.0.0.1",
        "SMTP_PORT": str(port),
        "SMTP_SECURITY": "none",
        "SMTP_FROM": "reports@example.com",
        "NOTIFIER_RUNS_DIR": str(work / "runs"),
    }
    started = time.perf_counter()
    subprocess.run(
        [BIN / "notifier", "run", str(NOTEBOOK), "--to", "bench@example.com"],
        env=env,
        cwd=work,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    elapsed = time.perf_counter() - started
    run_dir = max((work / "runs").glob("*/*"), key=lambda p: p.stat().st_mtime)
    timings = json.loads((run_dir / "result.json").read_text())["timings"]
    nb = json.loads((run_dir / "output.ipynb").read_text())
    timings["import_cell"] = next(
        c["metadata"]["papermill"]["duration"]
        for c in nb["cells"]
        if c["cell_type"] == "code" and "import" in "".join(c["source"])
    )
    return elapsed, timings


def run_bare(port: int, work: Path) -> float:
    parts = work / "parts"
    shutil.rmtree(parts, ignore_errors=True)
    env = {**os.environ, "NOTIFIER_PARTS_DIR": str(parts), "MPLBACKEND": "Agg"}
    output = work / "bare-output.ipynb"
    started = time.perf_counter()
    subprocess.run(
        [BIN / "papermill", str(NOTEBOOK), str(output), "--cwd", str(NOTEBOOK.parent)],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    subprocess.run(
        [sys.executable, "-c", BARE_SEND, str(output), str(parts), str(port)], check=True
    )
    return time.perf_counter() - started


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    ours, bare, timings = [], [], []
    with sink("auto", pipelining=True) as (description, port), tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        print(
            f"sink: {description}; notebook: {NOTEBOOK.relative_to(ROOT)}; {args.repeat} runs each"
        )
        run_bare(port, work)  # warm the OS file cache once for both
        for _ in range(args.repeat):
            elapsed, timing = run_notifier(port, work)
            ours.append(elapsed)
            timings.append(timing)
            bare.append(run_bare(port, work))
    ours_median, bare_median = statistics.median(ours), statistics.median(bare)
    print(
        f"notifier run                     median {ours_median:6.2f} s  (runs: {', '.join(f'{t:.2f}' for t in ours)})"
    )
    print(
        f"papermill CLI + smtplib script   median {bare_median:6.2f} s  (runs: {', '.join(f'{t:.2f}' for t in bare)})"
    )
    print(
        f"overhead of notifier: {100 * (ours_median / bare_median - 1):+.1f} % (ratio {ours_median / bare_median:.3f}; goal <= +10 %)"
    )
    keys = ("imports", "kernel_ready", "import_cell", "execute", "render_html")
    medians = {k: statistics.median(t.get(k, 0.0) for t in timings) for k in keys}
    cold = medians["imports"] + medians["kernel_ready"] + medians["import_cell"]
    print("where one notifier run goes (medians):")
    print(f"  worker imports (papermill, nbconvert) {medians['imports']:.2f} s")
    print(f"  kernel start until ready              {medians['kernel_ready']:.2f} s")
    print(f"  notebook import cell (pandas, mpl)    {medians['import_cell']:.2f} s")
    print(f"  whole notebook execution              {medians['execute']:.2f} s")
    print(f"  HTML archive rendering                {medians['render_html']:.2f} s")
    print(
        f"  cold-start share (imports + kernel + import cell): {cold:.2f} s = {100 * cold / ours_median:.0f} % of the run"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
