"""Personalised bulk mail, side by side in one run: notifier vs smtplib vs Postfix's smtp-source.

    python benchmarks/bench_bulk.py [--messages 1000] [--rtt 50] [--connections 8]
                                    [--rss-messages 10000] [--skip-postfix]

Every message is a personalised statement of ~60 KB: a per-recipient HTML table (and its
plain-text version) plus one chart shared by all (an inline PNG). Methods:

* notifier, end to end: ``plan_email`` of each email (validate, write, measure, content
  key), ``enqueue`` into a fresh SQLite ledger, ``Deliverer.deliver`` over ``--connections``
  parallel pipelined sessions, every recipient's answer recorded (the real run path after
  the notebook);
* smtplib with a new connection per message, and smtplib over one reused connection: each
  builds the same message with the stdlib (``EmailMessage``: text, HTML, the chart as a
  related part; its text part is handed over ready-made) and ``send_message``;
* Postfix's ``smtp-source`` at the same concurrency (``-s N -d``: N sessions kept open),
  messages of the same size, C, no ledger: the ceiling of what a client can do.

Sinks: Postfix's ``smtp-sink`` on loopback, the same behind a proxy adding ``--rtt`` ms round
trip (a mail server in another region), and a real Postfix (STARTTLS on 587-style
submission with SASL AUTH through Dovecot, delivering to a discard transport) started on
loopback ports when ``postfix`` and ``dovecot`` are installed (as root the benchmark installs
them with apt-get). Then the peak RSS of a process sending ``--rss-messages`` through the
ledger. Ratios are printed against the goals of issue 12.
"""

from __future__ import annotations

import argparse
import io
import os
import shutil
import smtplib
import ssl
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from email.message import EmailMessage
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_smtp import delayed, sink  # noqa: E402

from notifier.mail.htmltext import html_to_text  # noqa: E402
from notifier.mail.model import Email, InlineImage  # noqa: E402
from notifier.mail.parts import Part  # noqa: E402

SENDER = "statements@example.com"
SMTP_SOURCE = "/usr/sbin/smtp-source"


def chart_png() -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rng = np.random.default_rng(7)
    figure, axes = plt.subplots(figsize=(7, 3.5))
    for _ in range(3):
        axes.plot(rng.normal(size=120).cumsum(), linewidth=1.0)
    axes.set_title("Sales by region, last 30 days")
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=80)
    plt.close(figure)
    return buffer.getvalue()


CHART = Part(chart_png(), "image/png", "sales.png")


def statement_html(number: int) -> str:
    rows = "".join(
        f"<tr><td style='padding:2px 6px'>2026-11-{day % 28 + 1:02d}</td>"
        f"<td style='padding:2px 6px'>Order {number * 1000 + day}</td>"
        f"<td style='padding:2px 6px;text-align:right'>{(number * 37 + day * 13) % 997}.{day % 100:02d}</td></tr>"
        for day in range(60)
    )
    return (
        f"<p>Dear customer {number},</p><p>your statement for November:</p>"
        f"<table style='border-collapse:collapse'><tr><th>Date</th><th>Order</th><th>EUR</th></tr>"
        f"{rows}</table><p><img src='cid:chart@statements' alt='sales'></p><p>Thank you.</p>"
    )


def emails(count: int):
    for number in range(count):
        yield Email(
            subject=f"Your statement, November (#{number})",
            to=[f"Customer {number} <customer{number}@example.com>"],
            html=statement_html(number),
            images=[InlineImage("chart@statements", CHART)],
            key=f"customer-{number}",
        )


# ------------------------------------------------------------------------------ notifier


def run_notifier(port: int, count: int, connections: int, security: str = "none", **extra):
    """Plan, enqueue and deliver ``count`` emails; returns seconds."""
    from notifier.delivery.planning import plan_email
    from notifier.delivery.worker import Deliverer, default_transports
    from notifier.ledger import Ledger
    from notifier.settings import Settings

    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings(
            host="127.0.0.1",
            port=port,
            security=security,
            sender=SENDER,
            timeout=60,
            smtp_connections=connections,
            outbox_dir=Path(tmp) / "outbox",
            **extra,
        )
        ledger = Ledger(f"sqlite:///{tmp}/ledger.db")
        try:
            run = ledger.claim("bench", datetime.now(timezone.utc))
            assert run is not None and ledger.mark_running(run.run_id, run.attempt)
            expires = datetime.now(timezone.utc) + timedelta(hours=1)
            started = time.perf_counter()
            planned = (
                plan_email(
                    mail,
                    purpose="report",
                    default_sender=SENDER,
                    max_size=None,
                    expires_at=expires,
                )
                for mail in emails(count)
            )
            ledger.queue.enqueue(run.run_id, run.attempt, ledger.owner, planned, deliver={})
            outcomes = Deliverer(ledger, settings, default_transports(settings)).deliver()
            elapsed = time.perf_counter() - started
        finally:
            ledger.close()
    bad = [o for o in outcomes if o.status.value != "delivered"]
    if bad or len(outcomes) != count:
        raise RuntimeError(f"{len(bad)} not delivered, e.g. {bad[0].reply if bad else '?'}")
    return elapsed


# ------------------------------------------------------------------------------ smtplib


def stdlib_message(mail: Email, text: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = SENDER
    message["To"] = mail.to[0]
    message["Subject"] = mail.subject
    message.set_content(text)
    message.add_alternative(mail.html, subtype="html")
    message.get_payload()[1].add_related(
        CHART.data, "image", "png", cid="<chart@statements>", filename="sales.png"
    )
    return message


def smtplib_inputs(count: int) -> list[tuple[Email, str]]:
    return [(mail, html_to_text(mail.html or "")) for mail in emails(count)]


def smtp_login(
    smtp: smtplib.SMTP, tls: ssl.SSLContext | None, login: tuple[str, str] | None
) -> None:
    if tls is not None:
        smtp.starttls(context=tls)
    if login:
        smtp.login(*login)


def run_per_connection(port: int, inputs, tls: ssl.SSLContext | None = None, login=None) -> float:
    started = time.perf_counter()
    for mail, text in inputs:
        with smtplib.SMTP("127.0.0.1", port, timeout=60) as smtp:
            smtp_login(smtp, tls, login)
            smtp.send_message(stdlib_message(mail, text))
    return time.perf_counter() - started


def run_reused(port: int, inputs, tls: ssl.SSLContext | None = None, login=None) -> float:
    started = time.perf_counter()
    with smtplib.SMTP("127.0.0.1", port, timeout=60) as smtp:
        smtp_login(smtp, tls, login)
        for mail, text in inputs:
            smtp.send_message(stdlib_message(mail, text))
    return time.perf_counter() - started


def run_smtp_source(port: int, count: int, sessions: int, size: int) -> float | None:
    if not os.path.exists(SMTP_SOURCE):
        return None
    started = time.perf_counter()
    subprocess.run(
        [
            SMTP_SOURCE,
            "-d",
            "-s",
            str(sessions),
            "-m",
            str(count),
            "-l",
            str(size),
            "-f",
            SENDER,
            "-t",
            "customer@example.com",
            f"127.0.0.1:{port}",
        ],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        timeout=900,
    )
    return time.perf_counter() - started


def message_size() -> int:
    from notifier.mail.mime import write

    mail = next(emails(1))
    return write(mail, default_sender=SENDER, message_id="<x@y>", date="Mon, 1 Jan 2024").size


# ------------------------------------------------------------------------ real Postfix

POSTFIX_MAIN = """\
compatibility_level = 3.6
queue_directory = {root}/spool
data_directory = {root}/data
mail_owner = postfix
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
myhostname = bench.localdomain
mydestination =
relayhost =
default_transport = discard:bench
relay_transport = discard:bench
maillog_file = {root}/postfix.log
maillog_file_prefixes = {root}
smtpd_tls_cert_file = {root}/cert.pem
smtpd_tls_key_file = {root}/key.pem
smtpd_tls_security_level = may
smtpd_sasl_type = dovecot
smtpd_sasl_path = private/auth
smtpd_sasl_auth_enable = yes
smtpd_tls_auth_only = yes
smtpd_relay_restrictions = permit_sasl_authenticated, reject
smtpd_client_connection_count_limit = 100
smtpd_client_message_rate_limit = 0
smtpd_client_connection_rate_limit = 0
default_process_limit = 200
"""
POSTFIX_MASTER = """\
{port} inet n - n - - smtpd
pickup unix n - n 60 1 pickup
cleanup unix n - n - 0 cleanup
qmgr unix n - n 300 1 qmgr
tlsmgr unix - - n 1000? 1 tlsmgr
rewrite unix - - n - - trivial-rewrite
bounce unix - - n - 0 bounce
defer unix - - n - 0 bounce
trace unix - - n - 0 bounce
verify unix - - n - 1 verify
flush unix n - n 1000? 0 flush
proxymap unix - - n - - proxymap
smtp unix - - n - - smtp
showq unix n - n - - showq
error unix - - n - - error
discard unix - - n - - discard
local unix - n n - - local
anvil unix - - n - 1 anvil
scache unix - - n - 1 scache
postlog unix-dgram n - n - 1 postlogd
"""
DOVECOT_CONF = """\
base_dir = {root}/dovecot-run
log_path = {root}/dovecot.log
protocols =
ssl = no
auth_mechanisms = plain login
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {root}/users
}}
userdb {{
  driver = static
  args = uid=nobody gid=nogroup home={root}
}}
service auth {{
  unix_listener {root}/spool/private/auth {{
    mode = 0666
  }}
}}
"""


def ensure_postfix() -> str | None:
    """None when postfix + dovecot are usable, else why not (installing them as root)."""
    needed = [
        p
        for p, b in (("postfix", "/usr/sbin/postfix"), ("dovecot-core", "/usr/sbin/dovecot"))
        if not os.path.exists(b)
    ]
    if needed and os.geteuid() == 0 and shutil.which("apt-get"):
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run(
            ["debconf-set-selections"],
            input=b"postfix postfix/main_mailer_type select No configuration\n",
            check=False,
        )
        for command in (
            ["apt-get", "update", "-qq"],
            ["apt-get", "install", "-y", "-qq", "--no-install-recommends", *needed],
        ):
            subprocess.run(command, env=env, check=False, capture_output=True)
        needed = [
            p
            for p, b in (("postfix", "/usr/sbin/postfix"), ("dovecot-core", "/usr/sbin/dovecot"))
            if not os.path.exists(b)
        ]
    if needed:
        return f"{' and '.join(needed)} not installed (needs root and apt-get)"
    if os.geteuid() != 0:
        return "starting a private Postfix needs root"
    return None


class RealPostfix:
    """A private Postfix instance with STARTTLS and Dovecot SASL on a loopback port."""

    def __init__(self, root: Path, port: int) -> None:
        self.root, self.port = root, port
        self.login = ("bench@example.com", "bench-password-123")
        # a self-signed certificate for 127.0.0.1, trusted by both sides: TLS stays verified
        self.ca_file = root / "cert.pem"
        self.tls: ssl.SSLContext | None = None

    def __enter__(self) -> RealPostfix:
        root = self.root
        root.chmod(0o755)  # a TemporaryDirectory is 0700: Postfix's own user must enter it
        for sub in ("spool", "data", "dovecot-run", "config"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
             "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(root / "key.pem"), "-out", str(root / "cert.pem")],
            check=True, capture_output=True,
        )  # fmt: skip
        self.tls = ssl.create_default_context(cafile=str(self.ca_file))
        (root / "config" / "main.cf").write_text(POSTFIX_MAIN.format(root=root))
        (root / "config" / "master.cf").write_text(POSTFIX_MASTER.format(port=self.port))
        (root / "users").write_text(f"{self.login[0]}:{{PLAIN}}{self.login[1]}\n")
        (root / "dovecot.conf").write_text(DOVECOT_CONF.format(root=root))
        shutil.chown(root / "data", "postfix")
        try:
            self._start()
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                try:
                    with smtplib.SMTP("127.0.0.1", self.port, timeout=5) as smtp:
                        smtp_login(smtp, self.tls, self.login)
                    return self
                except (OSError, smtplib.SMTPException):
                    time.sleep(0.3)
        except BaseException:
            self.__exit__()
            raise
        self.__exit__()
        raise RuntimeError(f"Postfix did not come up; see {root}/postfix.log")

    def _command(self, *command: str, check: bool = False) -> None:
        # daemons keep inherited pipes open: never capture their output, log it to a file
        with open(self.root / "commands.log", "ab") as log:
            subprocess.run(command, stdout=log, stderr=log, timeout=60, check=check)

    def _start(self) -> None:
        config = str(self.root / "config")
        self._command("postfix", "-c", config, "set-permissions")
        self._command("postfix", "-c", config, "check")
        self._command("postfix", "-c", config, "start", check=True)
        (self.root / "spool" / "private").mkdir(exist_ok=True)
        self._command("dovecot", "-c", str(self.root / "dovecot.conf"), check=True)

    def __exit__(self, *exc: object) -> None:
        self._command("postfix", "-c", str(self.root / "config"), "stop")
        self._command("doveadm", "-c", str(self.root / "dovecot.conf"), "stop")
        pid = self.root / "dovecot-run" / "master.pid"
        if pid.is_file():
            subprocess.run(["kill", pid.read_text().strip()], capture_output=True)


# ----------------------------------------------------------------------------------- RSS

RSS_CHILD = """
import resource, sys, time
sys.path.insert(0, {bench!r}); sys.path.insert(0, {root!r})
import bench_bulk
seconds = bench_bulk.run_notifier({port}, {count}, {connections})
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(f"{{peak:.0f}} {{seconds:.2f}}")
"""


def peak_rss(port: int, count: int, connections: int) -> tuple[float, float]:
    code = RSS_CHILD.format(
        bench=str(Path(__file__).parent),
        root=str(Path(__file__).resolve().parent.parent),
        port=port,
        count=count,
        connections=connections,
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    peak, seconds = done.stdout.split()
    return float(peak), float(seconds)


# ---------------------------------------------------------------------------------- main


def rate(count: int, seconds: float | None) -> float | None:
    return None if seconds is None else count / seconds


def show(
    title: str, rows: dict[str, tuple[int, float | None]], goals: list[tuple[str, str, str, float]]
) -> None:
    print(f"\n{title}")
    rates = {name: rate(n, s) for name, (n, s) in rows.items()}
    for name, (n, seconds) in rows.items():
        value = rates[name]
        text = "n/a" if value is None else f"{value:8.1f} msg/s  ({n} messages, {seconds:.2f} s)"
        print(f"  {name:<44} {text}")
    for ours, theirs, label, goal in goals:
        a, b = rates.get(ours), rates.get(theirs)
        if a is None or b is None:
            print(f"  {label}: n/a")
            continue
        ratio = a / b
        verdict = "met" if ratio >= goal else f"MISSED ({ratio / goal:.0%} of the goal)"
        print(f"  {label}: {ratio:6.2f}x (goal >= {goal:g}x) {verdict}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument(
        "--slow-messages", type=int, default=150, help="per-connection smtplib at 50 ms (150)"
    )
    parser.add_argument("--rtt", type=float, default=50.0)
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--rss-messages", type=int, default=10000)
    parser.add_argument("--skip-postfix", action="store_true")
    args = parser.parse_args(argv)
    n, slow, conns = args.messages, args.slow_messages, args.connections
    size = message_size()
    print(f"{n} personalised messages of {size:,} bytes (one shared chart of {len(CHART.data):,} bytes); "
          f"notifier and smtp-source with {conns} connections")  # fmt: skip
    with sink("smtp-sink", True) as (description, port):
        print(f"sink: {description}")
        run_notifier(port, 50, conns)  # warm up imports and the sink
        inputs = smtplib_inputs(n)
        rows = {
            "notifier (plan + queue + deliver)": (n, run_notifier(port, n, conns)),
            "smtplib, new connection per message": (n, run_per_connection(port, inputs)),
            "smtplib, one reused connection": (n, run_reused(port, inputs)),
            f"smtp-source -s {conns} -d (C, no ledger)": (n, run_smtp_source(port, n, conns, size)),
        }
        show("loopback, end to end:", rows, [
            ("notifier (plan + queue + deliver)", "smtplib, new connection per message", "notifier / per-connection smtplib", 2),
            ("notifier (plan + queue + deliver)", "smtplib, one reused connection", "notifier / reused smtplib", 1),
            ("notifier (plan + queue + deliver)", f"smtp-source -s {conns} -d (C, no ledger)", "notifier / smtp-source", 0.5),
        ])  # fmt: skip
        if args.rtt > 0:
            with delayed(port, args.rtt) as slow_port:
                few = inputs[:slow]
                rows = {
                    "notifier (plan + queue + deliver)": (n, run_notifier(slow_port, n, conns)),
                    "smtplib, new connection per message": (
                        slow,
                        run_per_connection(slow_port, few),
                    ),
                    "smtplib, one reused connection": (slow, run_reused(slow_port, few)),
                    f"smtp-source -s {conns} -d (C, no ledger)": (
                        n,
                        run_smtp_source(slow_port, n, conns, size),
                    ),
                }
                show(f"through a link with {args.rtt:g} ms round trip:", rows, [
                    ("notifier (plan + queue + deliver)", "smtplib, new connection per message", "notifier / per-connection smtplib", 10),
                    ("notifier (plan + queue + deliver)", "smtplib, one reused connection", "notifier / reused smtplib", 5),
                    ("notifier (plan + queue + deliver)", f"smtp-source -s {conns} -d (C, no ledger)", "notifier / smtp-source", 0.5),
                ])  # fmt: skip
        if args.rss_messages:
            peak, seconds = peak_rss(port, args.rss_messages, conns)
            verdict = "met" if peak < 400 else "MISSED"
            print(f"\n{args.rss_messages:,} messages through the ledger: peak RSS {peak:.0f} MB "
                  f"(goal < 400 MB: {verdict}), {args.rss_messages / seconds:.0f} msg/s")  # fmt: skip
    if args.skip_postfix:
        print("\nreal Postfix: skipped (--skip-postfix)")
        return 0
    why = ensure_postfix()
    if why:
        print(f"\nreal Postfix with STARTTLS and AUTH: SKIPPED: {why}")
        return 0
    from bench_smtp import free_port

    try:
        real_postfix(n, slow, conns, free_port())
    except (OSError, RuntimeError, subprocess.SubprocessError) as error:
        print(f"\nreal Postfix with STARTTLS and AUTH: SKIPPED: it could not be started ({error})")
    return 0


def real_postfix(n: int, slow: int, conns: int, port: int) -> None:
    with tempfile.TemporaryDirectory() as tmp, RealPostfix(Path(tmp), port) as postfix:
        tls_inputs = smtplib_inputs(n)
        extra = {"user": postfix.login[0], "password": postfix.login[1], "ca_file": postfix.ca_file}
        from notifier.settings import Secret

        extra["password"] = Secret(extra["password"])
        rows = {
            "notifier (plan + queue + deliver)": (
                n,
                run_notifier(postfix.port, n, conns, "starttls", **extra),
            ),
            "smtplib, new connection per message": (
                slow,
                run_per_connection(postfix.port, tls_inputs[:slow], postfix.tls, postfix.login),
            ),
            "smtplib, one reused connection": (
                n,
                run_reused(postfix.port, tls_inputs, postfix.tls, postfix.login),
            ),
        }
        show("real Postfix (STARTTLS + SASL AUTH via Dovecot, discard transport) on loopback:", rows, [
            ("notifier (plan + queue + deliver)", "smtplib, one reused connection", "notifier / reused smtplib", 3),
            ("notifier (plan + queue + deliver)", "smtplib, new connection per message", "notifier / per-connection smtplib", 1),
        ])  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
