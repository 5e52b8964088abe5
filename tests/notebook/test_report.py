"""The notebook API (notifier.notebook.report) without a kernel: the MIME it builds, the preview, send_test.

Every message is composed with the real ``message.compose`` and parsed back with the
stdlib parser, so these tests check what a mail client would receive.
"""

from __future__ import annotations

import base64
import email
import email.policy
import hashlib
import html
import io
import re
import typing
from email.message import EmailMessage
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from notifier import report  # noqa: E402
from notifier.errors import MessageError  # noqa: E402
from notifier.mail.model import compose, referenced_cids  # noqa: E402
from notifier.mail.preview import human_size, render_preview  # noqa: E402
from notifier.mail.transport.base import Outgoing  # noqa: E402
from notifier.notebook import bundle as protocol  # noqa: E402

SENDER = "Reports <reports@example.com>"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
UNICODE_SUBJECT = "Rapport für Zürich — 東京 ✓ 📈"


def parse(out: Outgoing) -> EmailMessage:
    """The message as a receiving client sees it."""
    return email.message_from_bytes(out.data, policy=email.policy.default)


def tree(part: EmailMessage) -> object:
    """The MIME structure as nested (content type, children) tuples / content types."""
    if part.is_multipart():
        return (part.get_content_type(), [tree(p) for p in part.iter_parts()])
    return part.get_content_type()


@pytest.fixture
def figure():
    fig, ax = plt.subplots(figsize=(3, 2))
    ax.plot([1, 2, 3], [3, 1, 2])
    yield fig
    plt.close(fig)


@pytest.fixture
def frame() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "region": ["EU", "US", "Zürich"],
            "revenue": [1234.5, 99.0, 1000000.25],
            "orders": [12, 3, 4500],
        }
    )


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A project folder with an empty .env and no SMTP settings in the environment."""
    (tmp_path / ".env").write_text("", encoding="utf-8")
    for name in (
        "SMTP_HOST",
        "SMTP_PORT",
        "SMTP_USER",
        "SMTP_PASSWORD",
        "SMTP_PASS",
        "SMTP_PROVIDER",
        "SMTP_FROM",
        "SMTP_SECURITY",
        "SMTP_SECURE",
        "NOTIFIER_OUTBOX",
        "NOTIFIER_RUNS_DIR",
        "NOTIFIER_MAX_MESSAGE_SIZE",
        protocol.RUN_ID_ENV,
        protocol.PARTS_DIR_ENV,
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def full_report(figure, frame) -> report.ReportEmail:
    mail = report.email(
        "Daily sales",
        to=["Ann <ann@example.com>"],
        cc="carl@example.com",
        bcc=["hidden@example.com"],
    )
    mail.heading("Summary")
    mail.markdown("**Revenue** is up 4 %")
    mail.table(frame, caption="By region")
    mail.chart(figure, alt="Revenue trend")
    mail.attach(frame, "sales.csv")
    return mail


# -- structure ---------------------------------------------------------------------------------


def test_mime_tree_is_mixed_alternative_related(figure, frame):
    mail = full_report(figure, frame)
    msg = parse(compose(mail.to_email(), default_sender=SENDER))

    assert tree(msg) == (
        "multipart/mixed",
        [
            (
                "multipart/alternative",
                ["text/plain", ("multipart/related", ["text/html", "image/png"])],
            ),
            "text/csv",
        ],
    )
    related = msg.get_payload()[0].get_payload()[1]
    html_part, image = related.get_payload()
    cid = image["Content-ID"]
    assert cid.startswith("<") and cid.endswith(">")
    assert image.get_content_disposition() == "inline"
    assert image.get_content().startswith(PNG_SIGNATURE)
    assert image.get_content() == mail._images[0].part.data
    # every cid the html refers to is a part of the message, and the other way round
    body = html_part.get_content()
    assert referenced_cids(body) == {cid.strip("<>")}
    assert 'alt="Revenue trend"' in body
    # the plain-text alternative carries the same content, readable
    text = msg.get_body(preferencelist=("plain",)).get_content()
    assert "Summary" in text
    assert "Revenue is up 4 %" in text
    assert "Zürich\t1,000,000.25\t4,500" in text
    assert "[Revenue trend]" in text


def test_headers_and_envelope(figure, frame):
    out = compose(full_report(figure, frame).to_email(), default_sender=SENDER)
    msg = parse(out)
    assert msg["Subject"] == "Daily sales"
    assert msg["From"] == SENDER
    assert msg["To"] == "Ann <ann@example.com>"
    assert msg["Cc"] == "carl@example.com"
    assert msg["Bcc"] is None
    assert b"hidden@example.com" not in out.data
    assert out.recipients == ("ann@example.com", "carl@example.com", "hidden@example.com")
    assert out.sender == "reports@example.com"
    assert msg["Message-ID"].endswith("@example.com>")
    assert msg["Date"] is not None


def test_text_only_email_has_no_html_part():
    mail = report.email("Plain", to="a@example.com")
    msg = parse(compose(mail.to_email(), default_sender=SENDER))
    assert tree(msg) == "text/plain"
    assert msg.get_content().strip() == ""


def test_text_and_heading_are_escaped():
    mail = report.email("Escaping", to="a@example.com")
    mail.heading("<script>alert(1)</script>", level=9)
    mail.text("a < b & c\nnext line")
    assert mail.body_html == (
        "<h4>&lt;script&gt;alert(1)&lt;/script&gt;</h4>\n<p>a &lt; b &amp; c<br>next line</p>"
    )


# -- tables ------------------------------------------------------------------------------------


def test_table_has_inline_styles_and_no_style_block(frame):
    mail = report.email("Table", to="a@example.com")
    frame = frame.assign(note=["<b>bold</b>", "x & y", None])
    mail.table(frame, caption="By region")
    markup = mail.body_html
    assert "<style" not in markup.lower()
    assert markup.startswith('<table style="border-collapse:collapse;')
    assert markup.count("<td ") == 12
    assert markup.count('<td style="') == 12
    assert markup.count("<th ") == markup.count('<th style="') == 4
    assert ">1,234.50</td>" in markup
    assert ">4,500</td>" in markup
    assert "&lt;b&gt;bold&lt;/b&gt;" in markup and "<b>bold</b>" not in markup
    assert ">By region</caption>" in markup
    # and after composing: still no <style>, the styles survive in the sent html
    msg = parse(compose(mail.to_email(), default_sender=SENDER))
    sent = msg.get_body(preferencelist=("html",)).get_content()
    assert "<style" not in sent.lower()
    assert 'text-align:right">1,234.50</td>' in sent


def test_table_cuts_rows_and_says_so():
    mail = report.email("Long", to="a@example.com")
    mail.table(pd.DataFrame({"n": range(205)}), max_rows=200)
    assert mail.body_html.count('<tr style="background') == 200
    assert "… 5 more rows not shown" in mail.body_html


# -- charts and attachments ----------------------------------------------------------------------


def test_chart_attach_true_adds_the_same_png_as_attachment(figure):
    mail = report.email("Chart", to="a@example.com")
    mail.chart(figure, attach=True, filename="trend")
    msg = parse(compose(mail.to_email(), default_sender=SENDER))
    inline = [p for p in msg.walk() if p.get("Content-ID")]
    files = list(msg.iter_attachments())
    assert len(inline) == 1
    assert [
        (f.get_filename(), f.get_content_type(), f.get_content_disposition()) for f in files
    ] == [("trend.png", "image/png", "attachment")]
    assert files[0].get_content() == inline[0].get_content()
    assert files[0].get_content().startswith(PNG_SIGNATURE)


def test_chart_without_attach_adds_no_attachment(figure):
    mail = report.email("Chart", to="a@example.com")
    mail.chart(figure)
    msg = parse(compose(mail.to_email(), default_sender=SENDER))
    assert list(msg.iter_attachments()) == []


def test_dataframe_attachments_decode_back_to_the_same_data(frame):
    indexed = frame.set_index("region")
    mail = report.email("Data", to="a@example.com")
    mail.attach(frame, "plain.csv")
    mail.attach(indexed, "indexed.csv")
    mail.attach(frame, "plain.xlsx")
    mail.attach(indexed, "indexed.xlsx")
    mail.attach(frame, "rows.json")
    msg = parse(compose(mail.to_email(), default_sender=SENDER))
    files = {p.get_filename(): p for p in msg.iter_attachments()}
    assert list(files) == ["plain.csv", "indexed.csv", "plain.xlsx", "indexed.xlsx", "rows.json"]

    assert files["plain.csv"].get_content_type() == "text/csv"
    raw_csv = files["plain.csv"].get_payload(decode=True)
    assert (
        raw_csv
        == b"region,revenue,orders\nEU,1234.5,12\nUS,99.0,3\nZ\xc3\xbcrich,1000000.25,4500\n"
    )
    pd.testing.assert_frame_equal(pd.read_csv(io.BytesIO(raw_csv)), frame)
    pd.testing.assert_frame_equal(
        pd.read_csv(io.BytesIO(files["indexed.csv"].get_payload(decode=True)), index_col=0),
        indexed,
    )

    xlsx = files["plain.xlsx"]
    assert xlsx.get_content_type() == (
        "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
    )
    read = pd.read_excel(io.BytesIO(xlsx.get_payload(decode=True)), engine="openpyxl")
    pd.testing.assert_frame_equal(read, frame)
    read_indexed = pd.read_excel(
        io.BytesIO(files["indexed.xlsx"].get_payload(decode=True)), engine="openpyxl", index_col=0
    )
    pd.testing.assert_frame_equal(read_indexed, indexed)

    assert files["rows.json"].get_content_type() == "application/json"
    pd.testing.assert_frame_equal(
        pd.read_json(io.BytesIO(files["rows.json"].get_payload(decode=True)), orient="records"),
        frame,
    )


def test_attach_bytes_and_files(tmp_path: Path):
    path = tmp_path / "notes.txt"
    path.write_bytes(b"line 1\nline 2\n")
    blob = bytes(range(256)) * 4
    mail = report.email("Files", to="a@example.com")
    mail.attach(path)
    mail.attach(blob, "blob.bin")
    mail.attach(blob, "custom", mime_type="application/x-custom")
    msg = parse(compose(mail.to_email(), default_sender=SENDER))
    got = [
        (p.get_filename(), p.get_content_type(), p.get_payload(decode=True))
        for p in msg.iter_attachments()
    ]
    assert got == [
        ("notes.txt", "text/plain", b"line 1\nline 2\n"),
        ("blob.bin", "application/octet-stream", blob),
        ("custom", "application/x-custom", blob),
    ]


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda m: m.attach(b"data"), "needs a file name"),
        (lambda m: m.attach("/nonexistent/file.csv"), "does not exist"),
        (lambda m: m.attach(pd.DataFrame({"a": [1]}), "frame.parquet"), ".csv, .xlsx or .json"),
        (lambda m: m.attach(b"x", "x.bin", mime_type="binary"), "is not a MIME type"),
        (lambda m: m.chart(b"not an image"), "not PNG, JPEG"),
        (lambda m: m.attach(object()), "Cannot attach a object"),
    ],
)
def test_bad_content_raises_message_error(call, message):
    mail = report.email("Bad", to="a@example.com")
    with pytest.raises(MessageError, match=message):
        call(mail)


# -- unicode -----------------------------------------------------------------------------------


def test_unicode_survives_a_round_trip(figure, frame):
    mail = report.email(
        UNICODE_SUBJECT,
        to=["Zoë Müller <zoe@example.com>", '"Müller, Zoë" <zoe2@example.com>'],
        cc=["Δημήτρης <dimitris@bücher.example>"],
        sender="Отчёты <reports@example.com>",
    )
    mail.text("Grüße aus Zürich — 売上 📊")
    mail.chart(figure, filename="Umsatz-Übersicht.png", attach=True)
    mail.attach(frame, "données-été.csv")
    mail.attach(frame, "報告.xlsx")
    out = compose(mail.to_email(), default_sender=SENDER)
    assert out.data.isascii()  # everything is encoded for the wire
    msg = parse(out)

    assert msg["Subject"] == UNICODE_SUBJECT
    to = msg["To"].addresses
    assert [(a.display_name, a.addr_spec) for a in to] == [
        ("Zoë Müller", "zoe@example.com"),
        ("Müller, Zoë", "zoe2@example.com"),
    ]
    cc = msg["Cc"].addresses
    assert [(a.display_name, a.addr_spec) for a in cc] == [
        ("Δημήτρης", "dimitris@xn--bcher-kva.example")
    ]
    assert msg["From"].addresses[0].display_name == "Отчёты"
    assert out.recipients == (
        "zoe@example.com",
        "zoe2@example.com",
        "dimitris@xn--bcher-kva.example",
    )
    assert "Grüße aus Zürich — 売上 📊" in msg.get_body(("html",)).get_content()
    assert "Grüße aus Zürich — 売上 📊" in msg.get_body(("plain",)).get_content()
    names = [p.get_filename() for p in msg.iter_attachments()]
    assert names == ["Umsatz-Übersicht.png", "données-été.csv", "報告.xlsx"]
    csv = [p for p in msg.iter_attachments() if p.get_filename() == "données-été.csv"][0]
    assert csv.get_payload(decode=True).decode("utf-8").splitlines()[3] == "Zürich,1000000.25,4500"


# -- what is refused before sending --------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"subject": "Hello\r\nBcc: evil@example.com"},
        {"subject": "Hello\nX-Injected: 1"},
        {"to": ["a@example.com\r\nBcc: evil@example.com"]},
        {"cc": ["c@example.com\nBcc: evil@example.com"]},
        {"bcc": ["b@example.com\rX: y"]},
        {"reply_to": "r@example.com\nBcc: evil@example.com"},
        {"sender": "Me <me@example.com>\r\nBcc: evil@example.com"},
    ],
)
def test_header_injection_is_refused(kwargs):
    fields = {"subject": "ok", "to": ["a@example.com"]} | kwargs
    subject = fields.pop("subject")
    mail = report.email(subject, **fields)
    with pytest.raises(MessageError, match="line break"):
        compose(mail.to_email(), default_sender=SENDER)


@pytest.mark.parametrize(
    "call",
    [
        lambda m: m.attach(b"x", "report\r\nBcc: evil@example.com\r\n.txt"),
        lambda m: m.chart(PNG_SIGNATURE + b"\0" * 16, filename="chart\n.png"),
    ],
    ids=["attachment", "inline-image"],
)
def test_line_break_in_a_file_name_is_a_message_error(call):
    mail = report.email("Files", to="a@example.com")
    call(mail)
    with pytest.raises(MessageError, match="line break"):
        compose(mail.to_email(), default_sender=SENDER)


@pytest.mark.parametrize(
    "address",
    [
        "not-an-address",
        "a@b@example.com",
        "@example.com",
        "a..b@example.com",
        "a@exa_mple.com",
        "a@-example.com",
        "zoë@example.com",
        "bob@",
        "<>",
    ],
)
def test_invalid_address_is_refused(address):
    mail = report.email("Hi", to=["good@example.com", address])
    with pytest.raises(MessageError, match="not a valid email address"):
        compose(mail.to_email(), default_sender=SENDER)


def test_invalid_address_inside_a_comma_separated_string_is_refused():
    mail = report.email("Hi", to="good@example.com, bob@")
    with pytest.raises(MessageError, match="not a valid email address"):
        compose(mail.to_email(), default_sender=SENDER)


def test_comma_and_semicolon_separated_addresses_are_split():
    mail = report.email("Hi", to="a@example.com, b@example.com;c@example.com,")
    out = compose(mail.to_email(), default_sender=SENDER)
    assert out.recipients == ("a@example.com", "b@example.com", "c@example.com")


def test_no_recipients_is_refused():
    with pytest.raises(MessageError, match="no recipients"):
        compose(report.email("Nobody").to_email(), default_sender=SENDER)


def test_size_limit():
    mail = report.email("Big", to="a@example.com")
    mail.attach(bytes(60_000), "zeros.bin")
    out = compose(mail.to_email(), default_sender=SENDER, max_size=100_000)
    assert 80_000 < out.size <= 100_000  # base64 grows the 60 kB by a third
    with pytest.raises(MessageError, match=r"0\.1 MB limit") as raised:
        compose(mail.to_email(), default_sender=SENDER, max_size=50_000)
    assert "'Big' is 0.1 MB encoded" in str(raised.value)
    assert "NOTIFIER_MAX_MESSAGE_SIZE" in str(raised.value)


# -- the Jupyter preview -----------------------------------------------------------------------


def test_preview_bundle_shows_the_email(project, figure, frame):
    mail = report.email(
        UNICODE_SUBJECT, to=["Zoë <zoe@example.com>"], cc="cc@example.com", bcc="bcc@example.com"
    )
    mail.text("Hello")
    mail.chart(figure)
    mail.attach(frame, "données.csv")
    blob = bytes(3 * 1024 * 1024 // 2)
    mail.attach(blob, "big.bin")
    bundle = mail._repr_mimebundle_()

    assert set(bundle) == {"text/plain", "text/html", protocol.EMAIL_MIME}
    assert bundle["text/plain"] == (
        f"<ReportEmail {UNICODE_SUBJECT!r} to Zoë <zoe@example.com>, cc@example.com: "
        "2 blocks, 1 images, 2 attachments>"
    )
    page = bundle["text/html"]
    assert html.escape(UNICODE_SUBJECT) in page
    assert "Zoë &lt;zoe@example.com&gt;" in page
    assert "cc@example.com" in page
    assert "bcc@example.com  (envelope only, not in headers)" in page
    png = mail._images[0].part.data
    assert f"data:image/png;base64,{base64.b64encode(png).decode()}" in page
    assert "cid:" not in page
    csv = frame.to_csv(index=False).encode()
    assert (
        f'<a href="data:text/csv;base64,{base64.b64encode(csv).decode()}" download="données.csv"'
    ) in page
    assert f"données.csv</a> <span style='color:#777'>(text/csv, {human_size(len(csv))})" in page
    assert (
        "big.bin <span style='color:#777'>(application/octet-stream, 1.5 MB), too large to open "
        "from this preview; it is in the email</span>"
    ) in page
    assert "Hello" in page


def test_preview_without_recipients_says_the_job_decides(project):
    mail = report.email("For the job")
    mail.text("x")
    bundle = mail._repr_mimebundle_()
    assert "(the job&#x27;s recipients, from jobs.yaml or --to)" in bundle["text/html"]
    assert "recipients@job.invalid" not in bundle["text/html"]
    assert "to (the job's recipients)" in bundle["text/plain"]


def test_preview_of_an_invalid_email_shows_why_and_keeps_the_bundle(project):
    mail = report.email("Oops", to="not-an-address")
    mail.text("content")
    bundle = mail._repr_mimebundle_()
    assert "This email cannot be sent as it is" in bundle["text/html"]
    assert "not-an-address" in bundle["text/html"]
    assert bundle[protocol.EMAIL_MIME]["to"] == ["not-an-address"]


# -- the bundle the runner reads -----------------------------------------------------------------


def test_bundle_stores_binary_parts_in_the_parts_dir(tmp_path, monkeypatch, figure):
    parts = tmp_path / "parts"
    monkeypatch.setenv(protocol.PARTS_DIR_ENV, str(parts))
    mail = report.email("Parts", to="a@example.com")
    mail.chart(figure)
    mail.attach(b"a,b\n1,2\n", "data.csv")
    bundle = mail.to_bundle()

    png = mail._images[0].part.data
    image = bundle["images"][0]
    assert image["cid"] == mail._images[0].cid
    assert image["file"] == hashlib.sha256(png).hexdigest() + ".png"
    assert "data" not in image
    assert (parts / image["file"]).read_bytes() == png
    attachment = bundle["attachments"][0]
    assert attachment == {
        "filename": "data.csv",
        "mime_type": "text/csv",
        "size": 8,
        "sha256": hashlib.sha256(b"a,b\n1,2\n").hexdigest(),
        "file": hashlib.sha256(b"a,b\n1,2\n").hexdigest() + ".csv",
    }
    assert protocol.decode_part(attachment, parts) == b"a,b\n1,2\n"
    # a part changed after the run is refused
    (parts / attachment["file"]).write_bytes(b"a,b\n9,9\n")
    with pytest.raises(ValueError, match="sha256 mismatch"):
        protocol.decode_part(attachment, parts)


def test_changes_bump_the_revision():
    mail = report.email("First", to="a@example.com")
    first = mail.to_bundle()["revision"]
    mail.subject = "Second"
    mail.to = ["b@example.com"]
    bundle = mail.to_bundle()
    assert bundle["revision"] == first + 2
    assert (bundle["subject"], bundle["to"]) == ("Second", ["b@example.com"])


def test_skip_raises_skipped_with_the_reason():
    with pytest.raises(report.Skipped) as raised:
        report.skip("no new rows since yesterday")
    assert str(raised.value) == "no new rows since yesterday"
    # like KeyboardInterrupt: a notebook's own `except Exception:` does not swallow it
    assert not isinstance(raised.value, Exception)


# -- send_test ---------------------------------------------------------------------------------


def test_send_test_without_smtp_writes_only_the_test_copy_to_the_outbox(
    project, figure, frame, capsys
):
    notebooks = project / "notebooks"
    notebooks.mkdir()
    os_chdir = pytest.MonkeyPatch()
    try:
        os_chdir.chdir(notebooks)  # a notebook in a subfolder finds the project root
        mail = full_report(figure, frame)
        results = mail.send_test("me@example.com")
    finally:
        os_chdir.undo()

    assert len(results) == 1
    assert results[0].ok
    assert results[0].transport == "outbox"
    assert [r.address for r in results[0].recipients] == ["me@example.com"]
    emls = sorted((project / "outbox").glob("*.eml"))
    assert len(emls) == 1
    assert not (notebooks / "outbox").exists()
    sent = email.message_from_bytes(emls[0].read_bytes(), policy=email.policy.default)
    assert sent["Subject"] == "[TEST] Daily sales"
    assert sent["To"] == "me@example.com"
    assert sent["Cc"] is None and sent["Bcc"] is None
    raw = emls[0].read_bytes()
    for other in (b"ann@example.com", b"carl@example.com", b"hidden@example.com"):
        assert other not in raw
    assert len(list(sent.iter_attachments())) == 1
    assert (project / "outbox" / "index.html").is_file()
    # the email in the notebook is unchanged: the real one still goes to the real people
    assert (mail.subject, mail.to, mail.cc, mail.bcc) == (
        "Daily sales",
        ["Ann <ann@example.com>"],
        ["carl@example.com"],
        ["hidden@example.com"],
    )
    printed = capsys.readouterr().out
    assert "accepted: me@example.com" in printed
    assert "no SMTP_HOST set" in printed


def test_send_test_refuses_a_bad_email_before_writing_anything(project):
    mail = report.email("Bad\nsubject", to="a@example.com")
    with pytest.raises(MessageError, match="line break"):
        mail.send_test("me@example.com")
    with pytest.raises(MessageError, match="not a valid email address"):
        report.email("ok").send_test("me@")
    assert not (project / "outbox").exists()


def test_send_test_respects_the_size_limit_from_env(project):
    (project / ".env").write_text("NOTIFIER_MAX_MESSAGE_SIZE=20000\n", encoding="utf-8")
    mail = report.email("Big", to="a@example.com")
    mail.attach(bytes(50_000), "zeros.bin")
    with pytest.raises(MessageError, match="limit"):
        mail.send_test("me@example.com")
    assert not (project / "outbox").exists()


def test_send_test_does_nothing_in_a_scheduled_run(project, monkeypatch, capsys):
    monkeypatch.setenv(protocol.RUN_ID_ENV, "abc123")
    assert report.in_scheduled_run()
    mail = report.email("Scheduled", to="a@example.com")
    assert mail.send_test("me@example.com") == []
    assert not (project / "outbox").exists()
    assert "does nothing during scheduled runs" in capsys.readouterr().out


def test_email_is_annotated_to_return_a_report_email():
    # Jupyter's completion (jedi) follows the annotation: `mail.` must offer the methods.
    assert typing.get_type_hints(report.email)["return"] is report.ReportEmail
    assert isinstance(report.email("x"), report.ReportEmail)


def test_filtered_frame_drops_its_row_numbers_but_named_index_stays():
    import pandas as pd

    from notifier.mail.parts import attachment_part
    from notifier.mail.tables import dataframe_html

    frame = pd.DataFrame({"region": ["N", "S", "E"], "units": [1, 2, 3]})
    filtered = frame[frame["units"] > 1]  # index [1, 2]: row numbers, not data
    assert attachment_part(filtered, "f.csv").data == b"region,units\nS,2\nE,3\n"
    assert "<th" not in dataframe_html(filtered).split("</thead>")[1]
    named = filtered.set_index("region")
    assert attachment_part(named, "n.csv").data == b"region,units\nS,2\nE,3\n"
    assert ">S</th>" in dataframe_html(named)


# -- the preview: attachments, recipients, styles that survive JupyterLab's ----------------------


def _links(page: str) -> dict[str, bytes]:
    """File name -> bytes of every download link in a preview."""
    found = re.findall(r'<a href="data:[^;]+;base64,([^"]*)" download="([^"]*)"', page)
    return {html.unescape(name): base64.b64decode(data) for data, name in found}


def test_preview_attachments_are_download_links_within_a_budget():
    mail = report.email("Files", to="a@example.com")
    mail.attach(b"a,b\n1,2\n", "small.csv")
    mail.attach(bytes(range(256)) * 40, "middle.bin")  # 10 KiB
    mail.attach(bytes(20_000), "large.bin")
    mail.attach(b"{}", "tail.json")
    message = compose(mail.to_email(), default_sender=SENDER).message
    page = render_preview(message, attachment_budget=12_000)
    assert _links(page) == {
        "small.csv": b"a,b\n1,2\n",
        "middle.bin": bytes(range(256)) * 40,
        "tail.json": b"{}",  # a later small file still fits
    }
    assert (
        "large.bin <span style='color:#777'>(application/octet-stream, 19.5 KB), too large" in page
    )
    # the outbox page (standalone, default budget) links them all
    assert set(_links(render_preview(message))) == {
        "small.csv",
        "middle.bin",
        "large.bin",
        "tail.json",
    }


def test_preview_header_cells_set_the_styles_a_host_page_would_change(project):
    # JupyterLab (and nbconvert's archived HTML) right-align td/th, centre tables with a
    # fixed layout and stripe rows: every header cell and row says what it wants inline.
    mail = report.email("Styles", to="a@example.com", cc="c@example.com")
    mail.text("x")
    page = mail.preview_html()
    header = re.search(r"<table (.*?)</table>", page, re.S).group(0)
    table_style = re.match(r'<table style="([^"]*)"', header).group(1)
    assert "table-layout:auto" in table_style and "margin:0" in table_style
    rows = re.findall(
        r"<tr style=\"([^\"]*)\"><th style=\"([^\"]*)\">([^<]*)</th><td style=\"([^\"]*)\">", header
    )
    assert [name for _, _, name, _ in rows] == ["From", "To", "Cc", "Subject", "Date"]
    for row, name_style, _, value_style in rows:
        assert "background:#f6f8fa" in row
        for style in (name_style, value_style):
            for rule in ("text-align:left", "vertical-align:top", "border:none", "background:"):
                assert rule in style, (rule, style)
    card = re.match(r'<div class="notifier-email" style="([^"]*)"', page).group(1)
    assert "background:#fff" in card and "color:#1f2328" in card  # readable in a dark theme


def test_preview_of_an_email_without_recipients_shows_the_runs(project, monkeypatch):
    variables = protocol.default_recipients_environment(
        ["boss@example.com"], ["team@example.com"], ["audit@example.com"]
    )  # what the runner sets for the kernel
    assert variables == {
        "NOTIFIER_DEFAULT_RECIPIENTS": '{"to": ["boss@example.com"], "cc": ["team@example.com"], '
        '"bcc": ["audit@example.com"]}'
    }
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    mail = report.email("For the job")
    mail.text("x")
    bundle = mail._repr_mimebundle_()
    page = bundle["text/html"]
    assert ">boss@example.com</td>" in page
    assert ">team@example.com</td>" in page
    assert "audit@example.com  (envelope only, not in headers)" in page
    assert "job&#x27;s recipients" not in page
    assert bundle["text/plain"].startswith("<ReportEmail 'For the job' to boss@example.com, team@")
    assert bundle[protocol.EMAIL_MIME]["to"] == []  # the runner still decides who gets it


@pytest.mark.parametrize(
    "value", ["", "not json", "[]", '{"to": 5}', '{"to": []}', '{"to": ["a@example.com", 1]}']
)
def test_unusable_default_recipients_fall_back_to_the_placeholder(project, monkeypatch, value):
    monkeypatch.setenv(protocol.DEFAULT_RECIPIENTS_ENV, value)
    mail = report.email("For the job")
    assert "(the job&#x27;s recipients, from jobs.yaml or --to)" in mail.preview_html()


# -- send_test: one line per recipient, one clear error ----------------------------------------


def smtp_env(project: Path, server) -> None:
    (project / ".env").write_text(
        f"SMTP_HOST=127.0.0.1\nSMTP_PORT={server.port}\nSMTP_SECURITY=none\n"
        "SMTP_FROM=reports@example.com\nSMTP_TIMEOUT=5\nSMTP_RETRIES=0\n",
        encoding="utf-8",
    )


def test_send_test_prints_one_line_per_recipient_and_returns_the_same(project, smtp_server, capsys):
    smtp_env(project, smtp_server)
    mail = report.email("Hello", to="real@example.com")
    mail.text("x")
    results = mail.send_test(["me@example.com", "you@example.com"])
    printed = capsys.readouterr()
    assert printed.err == ""
    assert printed.out.splitlines() == [
        "accepted: me@example.com via smtp (250 2.0.0 OK: queued)",
        "accepted: you@example.com via smtp (250 2.0.0 OK: queued)",
    ]
    assert repr(results) == printed.out.strip()  # the cell's result: the same lines, compact
    assert results.ok and results[0].ok and len(results) == 1
    assert smtp_server.delivered_to("me@example.com") == 1


def test_send_test_refused_address_raises_one_error_with_the_fix(
    project, smtp_server_factory, capsys
):
    from smtp_server import Behaviour

    from notifier.errors import DeliveryError
    from notifier.notebook.interactive import SendTestError

    server = smtp_server_factory("plain", behaviour=Behaviour(refuse=["bad@example.com"]))
    smtp_env(project, server)
    mail = report.email("Hello", to="real@example.com")
    mail.text("x")
    with pytest.raises(SendTestError) as raised:
        mail.send_test(["me@example.com", "bad@example.com"])
    error = raised.value
    assert isinstance(error, DeliveryError)
    assert error.message == (
        "The test email was not delivered: bad@example.com was refused (550 5.1.1 "
        "<bad@example.com>: Recipient address rejected: User unknown). "
        "It was accepted for me@example.com."
    )
    assert error.fix == "check the recipient address"
    assert error._render_traceback_() == [
        f"SendTestError: {error.message}",
        "  fix: check the recipient address",
    ]
    assert capsys.readouterr() == ("", "")  # said once, by the exception: no log line, no print


def test_a_key_that_is_not_text_is_refused_where_it_is_written() -> None:
    with pytest.raises(TypeError, match="key= must be text"):
        report.email("Statement", to="a@example.com", key=5)
