"""The fast MIME writer (notifier.mail.mime) against the stdlib's (model.compose), on every
message shape notifier makes: two independent parsers (the stdlib's, and fast-mail-parser,
Rust's mailparse) must read back the same headers, tree, parameters and decoded contents
from both. Also: the fast HTML-to-text path against HTMLParser, and shared parts encoded once.
"""

from __future__ import annotations

import io
import random
from datetime import datetime, timezone
from email import policy
from email.parser import BytesParser
from pathlib import Path

import fast_mail_parser
import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from notifier.delivery.notices import (  # noqa: E402
    delivery_problems_email,
    not_started_email,
    recovery_email,
    run_failed_email,
)
from notifier.mail import mime  # noqa: E402
from notifier.mail.htmltext import _feed_fast, _TextExtractor, html_to_text  # noqa: E402
from notifier.mail.model import Email, InlineImage, compose  # noqa: E402
from notifier.mail.parts import Part  # noqa: E402
from notifier.notebook.report import ReportEmail  # noqa: E402

SENDER = "Reports <reports@example.com>"
MESSAGE_ID = "<174.1.2@example.com>"
DATE = "Mon, 06 May 2024 10:00:00 +0200"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 40
CHART = Part(PNG, "image/png", "chart.png")
CSV = Part(b"region,sales\nnorth,1\nsouth,2\n", "text/csv", "sales.csv")


def _figure_png() -> bytes:
    figure, axes = plt.subplots(figsize=(3, 2))
    axes.plot([1, 3, 2])
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    plt.close(figure)
    return buffer.getvalue()


def _report_emails() -> list[Email]:
    frame = pd.DataFrame({"region": ["north", "süd"], "sales": [1200.5, 885.0]})
    first = ReportEmail("Sales ✓", to=["Ève <eve@example.com>"])
    first.markdown("**Revenue** is up 4 % — see [the dashboard](https://example.com/d)")
    first.table(frame, caption="By region")
    figure, axes = plt.subplots(figsize=(3, 2))
    axes.plot([1, 2, 3])
    first.chart(figure, attach=True)
    plt.close(figure)
    first.attach(frame, "sales.csv")
    first.attach(frame, "sales.xlsx")
    second = ReportEmail("Plain", to="a@example.com", cc="b@example.com", bcc="c@example.com")
    second.text("one line\nand another  with   spaces")
    third = ReportEmail("Empty", to="a@example.com")
    return [first.to_email(), second.to_email(), third.to_email()]


def _notices() -> list[Email]:
    slot = datetime(2024, 5, 6, 8, 0, tzinfo=timezone.utc)
    failure = {
        "kind": "cell",
        "ename": "ValueError",
        "evalue": "bad <value> & more",
        "traceback": 'Traceback (most recent call last):\n  File "<cell>", line 1',
        "cell": 2,
        "source": "x = 1\nraise ValueError('bad')",
    }
    return [
        run_failed_email(
            name="daily-sales",
            notebook="notebooks/daily_report.ipynb",
            run_id="abc123",
            error="cell 2 failed: ValueError",
            failure=failure,
            run_folder=Path("runs/daily-sales/20240506T080000Z-abc123"),
            recipients=["ops@example.com"],
        ),
        not_started_email(
            name="daily-sales",
            notebook="notebooks/missing.ipynb",
            slot=slot,
            message="the notebook does not exist",
            fix="check the path",
            recipients=["ops@example.com", "Boss <boss@example.com>"],
        ),
        recovery_email(
            name="latency",
            reason="p95 is 120 ms, under 150",
            alert_started="2024-05-06 08:00 CEST",
            visible=["oncall@example.com"],
            hidden=["pager@example.com"],
        ),
        delivery_problems_email(
            name="daily-sales",
            run_id="abc123",
            problems=[("Report", "bob@example.com", "refused", "550 5.1.1 no such user")],
            recipients=["ops@example.com"],
        ),
    ]


LONG_NAMES = [f"Person Number {i} <person.number.{i}@example.com>" for i in range(12)]

SHAPES: dict[str, Email] = {
    "text only": Email(subject="Hello", to=["a@example.com"], text="Hi there.\n"),
    "text, empty": Email(subject="Empty", to=["a@example.com"], text=""),
    "text, no final newline": Email(subject="x", to=["a@example.com"], text="no newline"),
    "text, tricky lines": Email(
        subject="Tricky",
        to=["a@example.com"],
        text=".leading dot\r\nFrom the start\rtrailing spaces   \n\ttab\n= sign =3D\n"
        + "x" * 2000
        + "\n\n\nend",
    ),
    "text, mostly non-ASCII": Email(
        subject="東京", to=["a@example.com"], text="東京の売上 📈 " * 40
    ),
    "text, some non-ASCII": Email(
        subject="Zürich", to=["a@example.com"], text="Grüße aus Zürich\n"
    ),
    "html only": Email(subject="Report", to=["a@example.com"], html="<p>Hello <b>you</b></p>"),
    "html document": Email(
        subject="Doc", to=["a@example.com"], html="<html><body><p>whole</p></body></html>"
    ),
    "html, mostly non-ASCII": Email(
        subject="Rapport", to=["a@example.com"], html="<p>" + "日本語のテキスト" * 50 + "</p>"
    ),
    "html with text": Email(
        subject="Both", to=["a@example.com"], text="the text\n", html="<p>the html</p>"
    ),
    "html and one image": Email(
        subject="Chart",
        to=["a@example.com"],
        html='<p><img src="cid:c1@x" alt="chart"></p>',
        images=[InlineImage("c1@x", CHART)],
    ),
    "html, two images, attachments": Email(
        subject="Full report",
        to=["Ann <ann@example.com>"],
        cc=["cc@example.com"],
        bcc=["hidden@example.com"],
        reply_to=["replies@example.com"],
        html='<p><img src="cid:a@x"><img src="cid:b@x"></p><table><tr><td>1</td></tr></table>',
        images=[
            InlineImage("a@x", CHART),
            InlineImage("b@x", Part(_figure_png(), "image/png", "b.png")),
        ],
        attachments=[
            CSV,
            Part(b"%PDF-1.4 fake", "application/pdf", "report.pdf"),
            Part(PNG, "image/png", "chart.png"),
            Part(b"", "application/octet-stream", "empty.bin"),
        ],
    ),
    "text and attachments": Email(
        subject="Files", to=["a@example.com"], text="see attached\n", attachments=[CSV]
    ),
    "subject: long ASCII": Email(
        subject="A very long subject line " * 6, to=["a@example.com"], text="x"
    ),
    "subject: long non-ASCII": Email(
        subject="Umsatzbericht für München und Köln ✓ " * 4, to=["a@example.com"], text="x"
    ),
    "subject: looks encoded": Email(subject="=?utf-8?q?x?= raw", to=["a@example.com"], text="x"),
    "subject: spaces": Email(subject="  padded   subject ", to=["a@example.com"], text="x"),
    "subject: empty": Email(subject="", to=["a@example.com"], text="x"),
    "addresses: quoted and encoded names": Email(
        subject="Names",
        to=['"Doe, Jane" <jane@example.com>', "J. R. Smith <jrs@example.com>"],
        cc=["Jöhn Dœ <john@example.com>", "plain@example.com"],
        text="x",
    ),
    "addresses: many": Email(subject="Many", to=LONG_NAMES, text="x"),
    "addresses: IDNA domain": Email(subject="IDN", to=["user@bücher.example"], text="x"),
    "sender: display name": Email(
        subject="From", to=["a@example.com"], sender="Sales Team <sales@example.com>", text="x"
    ),
    "headers: custom": Email(
        subject="Custom",
        to=["a@example.com"],
        headers={"X-Job": "daily-sales", "X-Note": "Grüße ✓"},
        text="x",
    ),
    "headers: undisclosed recipients": Email(
        subject="Nobody named",
        bcc=["undisclosed-recipients@notifier.invalid"],
        headers={"To": "undisclosed-recipients:;"},
        html="<p>x</p>",
    ),
    "file name: non-ASCII": Email(
        subject="Données",
        to=["a@example.com"],
        text="x",
        attachments=[Part(b"a,b\n", "text/csv", "données été.csv")],
    ),
    "file name: quotes and long": Email(
        subject="Odd names",
        to=["a@example.com"],
        text="x",
        attachments=[
            Part(b"1", "text/plain", 'say "hi".txt'),
            Part(b"2", "text/plain", "n" * 120 + ".txt"),
        ],
    ),
    "mime type with parameters": Email(
        subject="Params",
        to=["a@example.com"],
        text="x",
        attachments=[Part(b"a;b\n", "text/csv; charset=utf-8", "semi.csv")],
    ),
}
for index, mail in enumerate(_report_emails()):
    SHAPES[f"report API {index}"] = mail
for index, mail in enumerate(_notices()):
    SHAPES[f"notice {index}"] = mail

# Shapes the fast writer hands to the stdlib (everything else must take the fast path).
FALLS_BACK = {"file name: non-ASCII", "file name: quotes and long", "mime type with parameters"}


def stdlib_view(data: bytes) -> dict:
    message = BytesParser(policy=policy.default).parsebytes(data)

    def node(part) -> dict:  # noqa: ANN001
        found = {
            "type": part.get_content_type(),
            "params": sorted((k, v) for k, v in part.get_params() or [] if k != "boundary"),
            "disposition": part.get_content_disposition(),
            "filename": part.get_filename(),
            "cid": part.get("Content-ID"),
            "defects": [type(d).__name__ for d in part.defects],
        }
        if part.is_multipart():
            found["children"] = [node(child) for child in part.iter_parts()]
        else:
            found["content"] = part.get_content()
        return found

    names = [n for n in message.keys() if n not in ("Content-Type", "MIME-Version")]
    headers = sorted((name, str(message[name])) for name in names)
    return {"headers": headers, "tree": node(message)}


def second_view(data: bytes) -> dict:
    tree = fast_mail_parser.parse_email_tree(data)
    flat = fast_mail_parser.parse_email(data)

    def node(part) -> dict:  # noqa: ANN001
        return {
            "type": part.content_type,
            "disposition": part.disposition,
            "filename": part.filename,
            "cid": part.content_id,
            "content": part.content,
            "children": [node(child) for child in part.children or []],
        }

    headers = {
        name: values
        for name, values in tree.headers.items()
        if name not in ("Content-Type", "MIME-Version")
    }
    return {
        "headers": sorted(headers.items()),
        "subject": flat.subject,
        "to": [(a.display_name, a.address) for a in flat.to] if flat.to else [],
        "cc": [(a.display_name, a.address) for a in flat.cc] if flat.cc else [],
        "tree": node(tree),
    }


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_both_writers_read_back_the_same_with_two_parsers(shape: str) -> None:
    mail = SHAPES[shape]
    reference = compose(mail, default_sender=SENDER, message_id=MESSAGE_ID, date=DATE)
    fast = mime.write(mail, default_sender=SENDER, message_id=MESSAGE_ID, date=DATE)
    assert (fast.sender, fast.recipients) == (reference.sender, reference.recipients)
    assert (fast.message_id, fast.subject) == (reference.message_id, reference.subject)
    assert stdlib_view(fast.data) == stdlib_view(reference.data)
    assert second_view(fast.data) == second_view(reference.data)
    if shape not in FALLS_BACK:
        assert "data" not in fast.__dict__ or fast._raw is not None  # the fast path wrote it
        assert fast._raw is not None
    for line in fast.data.split(b"\r\n"):  # SMTP: CRLF only, no line over 998 bytes
        assert b"\n" not in line and b"\r" not in line and len(line) <= 998
    assert b"Bcc" not in fast.data.split(b"\r\n\r\n", 1)[0]


def test_a_shared_part_is_encoded_once() -> None:
    mime.PART_CACHE.clear()
    chart = Part(_figure_png(), "image/png", "chart.png")
    for number in range(50):
        mail = Email(
            subject=f"Report {number}",
            to=[f"manager{number}@example.com"],
            html=f'<p>Region {number}</p><img src="cid:c@x">',
            images=[InlineImage("c@x", Part(bytes(chart.data), "image/png", "chart.png"))],
        )
        mime.write(mail, default_sender=SENDER, message_id=f"<{number}@x>", date=DATE)
    assert (mime.PART_CACHE.misses, mime.PART_CACHE.hits) == (1, 49)


def test_the_part_cache_stays_within_its_budget() -> None:
    cache = mime._PartCache(budget=100_000)
    for number in range(50):
        cache.encoded(bytes([number]) * 10_000)
    assert cache.size <= 100_000 and len(cache._items) < 50


# ------------------------------------------------------------------- HTML to text

HTML_CORPUS = [
    "<p>Hello <b>world</b></p>",
    "<table><tr><th>a</th><td style='padding:2px'>1 &amp; 2</td></tr></table>",
    "<ul><li>one<li>two</ul><hr/><br/><br>",
    '<p><img src="cid:x" alt="a &gt; b"/> <a href="https://e.com/?a=1&amp;b=2">link</a></p>',
    "<pre>  code\n\n  more <span>x</span></pre><p>after</p>",
    "<pre>unclosed\n  block",
    "<head><title>T</title></head><body>x</body>",
    "<style>p{}</style><p>styled</p>",
    "<!-- comment --><p>c</p>",
    "a < b and c > d",
    "<p class=x id=y data-z>unquoted</p>",
    '<img src="cid:x" alt="a > b">',
    "<P>UPPER <BR> case</P>",
    "text &nbsp; &copy; &#39; &#x27; &unknown; & alone",
    "<a href='cid:c'>cid link</a><a href='#top'>anchor</a><a>no href</a>",
    "<p>\x00null</p>",
    "",
]
_TAGS = ["p", "div", "br", "tr", "td", "th", "table", "ul", "li", "pre", "b", "span", "h2"]
_TEXTS = ["hello", "  two  spaces ", "\n", "\t", "&amp;", "&lt;x&gt;", "é", "\xa0", "\u2003", "ü"]


def _random_html(rng: random.Random) -> str:
    pieces = []
    for _ in range(rng.randint(1, 40)):
        roll = rng.random()
        tag = rng.choice(_TAGS)
        if roll < 0.3:
            pieces.append(f"<{tag}>")
        elif roll < 0.5:
            pieces.append(f"</{tag}>")
        elif roll < 0.55:
            pieces.append(f"<{tag}/>")
        elif roll < 0.6:
            pieces.append(f'<img alt="{rng.choice(_TEXTS)}" src=x>')
        elif roll < 0.65:
            pieces.append(f"<a href='{rng.choice(['https://e.com', 'cid:c', '#x'])}'>")
        elif roll < 0.67:
            pieces.append(rng.choice(["<", ">", "<!-- c -->", "<p", "<a href='x>", "</ b>"]))
        else:
            pieces.append(rng.choice(_TEXTS))
    return "".join(pieces)


def test_the_fast_html_to_text_path_matches_htmlparser() -> None:
    rng = random.Random(12)
    corpus = HTML_CORPUS + [_random_html(rng) for _ in range(3000)]
    corpus += [m.html for m in SHAPES.values() if m.html]
    fast = 0
    for markup in corpus:
        assert html_to_text(markup) == html_to_text(markup, fast=False), markup
        fast += _feed_fast(_TextExtractor(), markup)
    assert fast > len(corpus) / 2  # most documents take the fast path
