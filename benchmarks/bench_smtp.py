"""Sending N report emails to a local SMTP sink, three ways, side by side.

    python benchmarks/bench_smtp.py [--messages 1000] [--repeat 3] [--sink auto|smtp-sink|aiosmtpd]

1. notifier's SMTPTransport: one ``send()`` call with every message (one connection,
   MAIL/RCPT/DATA pipelined when the server offers PIPELINING);
2. smtplib with a new connection per message (what most scripts do);
3. smtplib reusing one connection (``send_message`` in a loop).

Each message is ~2 KB (text + HTML alternative). Two tables are printed:

* end to end: every method gets ``EmailMessage`` objects and serialises them inside the timed
  part (``send_message`` for smtplib, ``Outgoing.data`` for notifier), as in real use;
* transport only: the messages are serialised beforehand (smtplib gets the bytes through
  ``sendmail``), so only the SMTP conversation is measured.

Serialising a MIME message with the stdlib ``email`` package costs far more CPU than the SMTP
conversation on loopback, so it flattens the end-to-end ratios; the transport-only table
shows what the transport itself changes. The sink is Postfix's ``smtp-sink`` when
``/usr/sbin/smtp-sink`` exists (it discards mail, so the client is what is measured), else an
aiosmtpd sink in a subprocess. Both advertise PIPELINING, like real submission servers;
``--no-pipelining`` turns that off to see the transport without it.

Loopback has no latency, but a real mail server is a network round trip away, and round trips
are what the three methods differ in most (notifier: 2 per message; smtplib reused: 4; a new
connection each time: about 8). A third table sends through a small proxy that delays each
direction by half of ``--rtt`` milliseconds (2 ms by default, a fast LAN; 0 skips it). The best of
``--repeat`` runs is reported, with the ratios notifier / per-connection and notifier / reused.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import smtplib
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from notifier.mail.transport.base import Outgoing  # noqa: E402
from notifier.mail.transport.smtp import SMTPTransport  # noqa: E402
from notifier.settings import Settings  # noqa: E402

SMTP_SINK = "/usr/sbin/smtp-sink"
SENDER = "reports@example.com"

_DELAY_PROXY = r"""
import asyncio, sys

LISTEN, TARGET, DELAY = int(sys.argv[1]), int(sys.argv[2]), float(sys.argv[3]) / 2000

async def pump(reader, writer):
    loop = asyncio.get_running_loop()
    queue = asyncio.Queue()

    async def feed():
        while True:
            data = await reader.read(65536)
            await queue.put((loop.time() + DELAY, data))
            if not data:
                return

    async def deliver():
        while True:
            due, data = await queue.get()
            if due > loop.time():
                await asyncio.sleep(due - loop.time())
            if not data:
                writer.close()
                return
            writer.write(data)
            await writer.drain()

    try:
        await asyncio.gather(feed(), deliver())
    except (ConnectionError, OSError):
        writer.close()

async def handle(client_reader, client_writer):
    server_reader, server_writer = await asyncio.open_connection("127.0.0.1", TARGET)
    await asyncio.gather(pump(client_reader, server_writer), pump(server_reader, client_writer))

async def main():
    server = await asyncio.start_server(handle, "127.0.0.1", LISTEN, backlog=1000)
    print("ready", flush=True)
    async with server:
        await server.serve_forever()

asyncio.run(main())
"""

_AIOSMTPD_SINK = r"""
import sys, time
from aiosmtpd.controller import Controller

class Sink:
    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        if PIPELINING:
            responses.insert(-1, "250-PIPELINING")
        return responses
    async def handle_DATA(self, server, session, envelope):
        return "250 2.0.0 Ok: queued"

PIPELINING = sys.argv[2] == "1"
controller = Controller(Sink(), hostname="127.0.0.1", port=int(sys.argv[1]), data_size_limit=None)
controller.start()
print("ready", flush=True)
sys.stdin.read()  # run until the parent closes our stdin
controller.stop()
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, seconds: float = 10.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                sock.settimeout(2)
                if sock.recv(64).startswith(b"220"):
                    return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"the sink did not start on port {port}")


@contextlib.contextmanager
def sink(kind: str, pipelining: bool) -> Iterator[tuple[str, int]]:
    """Start a sink on a free loopback port; yield (description, port); stop it after."""
    port = free_port()
    fallback = kind == "auto" and not os.path.exists(SMTP_SINK)
    if kind == "auto":
        kind = "aiosmtpd" if fallback else "smtp-sink"
    if kind == "smtp-sink":
        command = [SMTP_SINK]
        if os.geteuid() == 0:
            command += ["-u", "nobody"]  # smtp-sink refuses to run as root otherwise
        if not pipelining:
            command.append("-p")
        command += [f"127.0.0.1:{port}", "1000"]
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        description = f"Postfix smtp-sink ({SMTP_SINK})"
    else:
        process = subprocess.Popen(
            [sys.executable, "-c", _AIOSMTPD_SINK, str(port), "1" if pipelining else "0"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        assert process.stdout is not None
        process.stdout.readline()
        description = "aiosmtpd sink in a subprocess" + (
            f" ({SMTP_SINK} not found)" if fallback else ""
        )
    try:
        wait_for_port(port)
        yield f"{description}{'' if pipelining else ', PIPELINING off'}", port
    finally:
        if process.stdin:
            process.stdin.close()
        process.terminate()
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def delayed(port: int, rtt_ms: float) -> Iterator[int]:
    """A proxy in front of ``port`` that delays each direction by half of ``rtt_ms``."""
    listen = free_port()
    process = subprocess.Popen(
        [sys.executable, "-c", _DELAY_PROXY, str(listen), str(port), str(rtt_ms)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert process.stdout is not None
        process.stdout.readline()
        wait_for_port(listen)
        yield listen
    finally:
        process.terminate()
        process.wait(5)


def build_messages(count: int) -> list[EmailMessage]:
    """~2 KB each: a small text report and its HTML version with a table."""
    rows = "".join(
        f"<tr><td>region {r}</td><td>{1000 + r * 37}</td><td>{r * 1.5:.1f}%</td></tr>"
        for r in range(12)
    )
    messages = []
    for i in range(count):
        message = EmailMessage()
        message["From"] = f"Daily reports <{SENDER}>"
        message["To"] = f"user{i % 50}@example.com"
        message["Subject"] = f"Daily sales report #{i}"
        message["Message-ID"] = make_msgid(domain="bench.example.com")
        text = "\n".join(
            f"Region {r}: {1000 + r * 37} orders, {r * 1.5:.1f}% up on last week."
            for r in range(12)
        )
        message.set_content(
            f"Good morning,\n\nHere are today's figures.\n\n{text}\n\n-- notifier\n"
        )
        message.add_alternative(
            "<html><body><p>Good morning,</p><p>Here are today's figures.</p>"
            f"<table><tr><th>Region</th><th>Orders</th><th>Change</th></tr>{rows}</table>"
            "<p>-- notifier</p></body></html>",
            subtype="html",
        )
        messages.append(message)
    return messages


def run_notifier(port: int, messages: list[Outgoing]) -> None:
    settings = Settings(host="127.0.0.1", port=port, security="none", sender=SENDER, timeout=30)
    results = SMTPTransport(settings).send(messages)
    bad = [r for r in results if not r.ok]
    if bad:
        raise RuntimeError(f"{len(bad)} message(s) failed, first: {bad[0].error}")


def run_per_connection(port: int, messages: list[Outgoing]) -> None:
    for out in messages:
        with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
            _smtplib_send(smtp, out)


def run_reused(port: int, messages: list[Outgoing]) -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as smtp:
        for out in messages:
            _smtplib_send(smtp, out)


def _smtplib_send(smtp: smtplib.SMTP, out: Outgoing) -> None:
    if "data" in out.__dict__:  # transport only: the bytes were made beforehand
        smtp.sendmail(out.sender, list(out.recipients), out.data)
    else:  # end to end: what scripts do, serialising inside the call
        smtp.send_message(out.message, out.sender, list(out.recipients))


def prepare(count: int, serialise: bool) -> list[Outgoing]:
    """Fresh messages for one run; with ``serialise`` their bytes are computed up front."""
    messages = [Outgoing(m, SENDER, (str(m["To"]),)) for m in build_messages(count)]
    if serialise:
        for out in messages:
            out.data  # noqa: B018 - fills the cached property
    return messages


Runner = Callable[[int, list[Outgoing]], None]
METHODS: dict[str, Runner] = {
    "notifier SMTPTransport (one send call)": run_notifier,
    "smtplib, new connection per message": run_per_connection,
    "smtplib, one reused connection": run_reused,
}


def measure(run: Runner, port: int, count: int, repeat: int, serialise: bool) -> float:
    """Best messages/second over ``repeat`` runs (fresh message objects each time)."""
    best = 0.0
    for _ in range(repeat):
        messages = prepare(count, serialise)
        started = time.perf_counter()
        run(port, messages)
        best = max(best, count / (time.perf_counter() - started))
    return best


def report(title: str, rates: dict[str, float]) -> None:
    print(title)
    width = max(map(len, rates))
    for name, rate in rates.items():
        print(f"  {name:<{width}}  {rate:8.0f} messages/s")
    ours, per_connection, reused = rates.values()
    print(f"  notifier vs per-connection smtplib: {ours / per_connection:5.2f}x")
    print(f"  notifier vs reused smtplib:         {ours / reused:5.2f}x")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=1000, help="messages per run (1000)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per method; best counts (3)")
    parser.add_argument("--sink", choices=["auto", "smtp-sink", "aiosmtpd"], default="auto")
    parser.add_argument("--no-pipelining", action="store_true", help="sink without PIPELINING")
    parser.add_argument(
        "--only", choices=["end-to-end", "transport-only"], help="run one table, not both"
    )
    parser.add_argument(
        "--rtt",
        type=float,
        default=2.0,
        metavar="MS",
        help="also measure through a proxy adding this round-trip time (2 ms; 0 = skip)",
    )
    parser.add_argument(
        "--rtt-messages", type=int, default=200, help="messages per run behind the proxy (200)"
    )
    args = parser.parse_args(argv)
    if args.sink == "smtp-sink" and not shutil.which(SMTP_SINK):
        parser.error(f"{SMTP_SINK} not found (install the postfix package)")

    sample = build_messages(1)[0].as_bytes()
    tables = {"end to end": False, "transport only": True}
    if args.only:
        tables = {args.only.replace("-", " "): args.only == "transport-only"}
    results: dict[str, dict[str, float]] = {}
    with sink(args.sink, not args.no_pipelining) as (description, port):
        print(f"sink: {description} on 127.0.0.1:{port}")
        print(
            f"{args.messages} messages of {len(sample):,} bytes (text + html), "
            f"best of {args.repeat} runs"
        )
        for run in METHODS.values():  # warm up the sink and the imports
            run(port, prepare(20, False))
        for title, serialise in tables.items():
            results[title] = {
                name: measure(run, port, args.messages, args.repeat, serialise)
                for name, run in METHODS.items()
            }
        if args.rtt > 0:
            with delayed(port, args.rtt) as slow_port:
                title = (
                    f"end to end, {args.rtt_messages} messages through a link with "
                    f"{args.rtt:g} ms round trip (best of {args.repeat})"
                )
                results[title] = {
                    name: measure(run, slow_port, args.rtt_messages, args.repeat, False)
                    for name, run in METHODS.items()
                }
    for title, rates in results.items():
        report(f"{title}:", rates)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
