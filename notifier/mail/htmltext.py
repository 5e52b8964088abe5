"""A plain-text rendering of an HTML body, for the text/plain alternative.

Text is reflowed (runs of whitespace become one space, blocks get their own lines), except
inside ``<pre>``: code and tracebacks keep their indentation and blank lines verbatim.

Speed: a personalised bulk run derives one text part per recipient, and the stdlib's
``HTMLParser`` spends about 2 ms on a 150-row table (more than the rest of composing and
sending). Well-formed markup (what notifier's tables, Markdown and notices produce) is
therefore tokenized by one regular expression and fed to the very same handlers; anything
else (comments, ``<script>``/``<style>``, stray ``<``, unusual attributes) goes through
``HTMLParser`` itself. Both give the same text (tests/mail/test_htmltext.py compares them).
"""

from __future__ import annotations

import html
import re
from html.parser import HTMLParser

_BLOCK = {
    "p",
    "div",
    "br",
    "tr",
    "h1",
    "h2",
    "h3",
    "h4",
    "h5",
    "h6",
    "li",
    "table",
    "ul",
    "ol",
    "caption",
    "pre",
    "blockquote",
    "hr",
    "section",
    "header",
    "footer",
}
_SKIP = {"style", "script", "head", "title"}


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.chunks: list[str] = []
        self.skipping = 0
        self.href: str | None = None
        self.link_text: list[str] = []
        self.pre_depth = 0
        self.pre_text: list[str] = []  # the <pre> block being read
        self.verbatim: list[str] = []  # finished <pre> blocks, put back after reflowing

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if self.pre_depth and tag not in _SKIP:
            if tag == "pre":
                self.pre_depth += 1
            elif tag == "br":
                self.pre_text.append("\n")
            elif tag == "img":
                self.pre_text.append(f"[{attributes.get('alt') or 'image'}]")
            return  # other markup inside <pre> (syntax highlighting) adds nothing
        if tag in _SKIP:
            self.skipping += 1
        elif tag in _BLOCK:
            if tag not in {"tr", "li"}:
                self.chunks.append("\n")
            if tag == "li":
                self.chunks.append("- ")
            if tag == "hr":
                self.chunks.append("-" * 40 + "\n")
            if tag == "pre":
                self.pre_depth = 1
                self.pre_text = []
        elif tag in {"td", "th"}:
            self.chunks.append("\t")
        elif tag == "img":
            alt = attributes.get("alt") or "image"
            self.chunks.append(f"[{alt}]")
        elif tag == "a":
            self.href = attributes.get("href")

    def handle_endtag(self, tag: str) -> None:
        if self.pre_depth and tag not in _SKIP:
            if tag == "pre":
                self.pre_depth -= 1
                if not self.pre_depth:
                    self._end_pre()
            return
        if tag in _SKIP:
            self.skipping = max(0, self.skipping - 1)
        elif tag == "a" and self.href:
            if not self.href.startswith(("cid:", "#")):
                self.chunks.append(f" ({self.href})")
            self.href = None
        elif tag in _BLOCK:
            self.chunks.append("\n" if tag in {"tr", "li", "caption"} else "\n\n")

    def handle_data(self, data: str) -> None:
        if self.skipping:
            return
        data = data.replace("\x00", "")  # the placeholders below use it
        if self.pre_depth:
            self.pre_text.append(data)
        else:
            self.chunks.append(re.sub(r"\s+", " ", data))

    def close(self) -> None:
        super().close()
        if self.pre_depth:  # an unclosed <pre> runs to the end, as in a browser
            self.pre_depth = 0
            self._end_pre()

    def _end_pre(self) -> None:
        text = "".join(self.pre_text)
        if text.startswith("\n"):  # HTML drops the newline right after <pre>
            text = text[1:]
        self.verbatim.append(text.rstrip("\n"))
        self.chunks.append(_placeholder(len(self.verbatim) - 1) + "\n\n")


def _placeholder(index: int) -> str:
    return f"\x00pre{index}\x00"


# A tag: its name and the rest up to '>' (checked apart: plain attributes only).
_TAG = re.compile(r"<(/?)([a-zA-Z][-a-zA-Z0-9:_]*)([^<>]*)>")
_ATTR = r"""[a-zA-Z_:][-a-zA-Z0-9_:.]*(?:[\s]*=[\s]*(?:"[^"]*"|'[^']*'|[^\s"'=<>`/]+))?"""
_ATTRS = re.compile(rf"(?:[\s]+{_ATTR})*[\s]*(/?)")
_ATTR_PAIR = re.compile(
    r"""([a-zA-Z_:][-a-zA-Z0-9_:.]*)(?:[\s]*=[\s]*("[^"]*"|'[^']*'|[^\s"'=<>`/]+))?"""
)
# Elements whose content HTMLParser (in some Python version) reads as raw text.
_RAW_TEXT = re.compile(
    r"<(?:script|style|title|textarea|xmp|iframe|noembed|noframes|noscript|plaintext)\b", re.I
)


def _attributes(text: str) -> list[tuple[str, str | None]]:
    """Attributes as HTMLParser reports them: lower-case names, unescaped values."""
    found: list[tuple[str, str | None]] = []
    for name, value in _ATTR_PAIR.findall(text):
        if not value:
            found.append((name.lower(), None))
            continue
        if value[0] in "\"'":
            value = value[1:-1]
        found.append((name.lower(), html.unescape(value)))
    return found


# What a tag adds outside <pre> when its handler would only append text (the others: None).
_START_TEXT: dict[str, str] = {
    tag: "" if tag in {"tr", "li"} else "\n" for tag in _BLOCK if tag not in {"pre"}
}
_START_TEXT.update({"li": "- ", "hr": "\n" + "-" * 40 + "\n", "td": "\t", "th": "\t"})
_END_TEXT: dict[str, str] = {
    tag: "\n" if tag in {"tr", "li", "caption"} else "\n\n" for tag in _BLOCK
}
_SPACE = re.compile(r"\s+")


def _feed_fast(parser: _TextExtractor, markup: str) -> bool:
    """Tokenize well-formed markup into ``parser``'s handlers; False (``parser`` must then
    be dropped) if it is not plain enough to be sure to read it as HTMLParser would.

    The common cases (text and block tags outside ``<pre>``) append to the parser's chunks
    here, exactly as its handlers would; everything else goes through the handlers.
    """
    if "<!" in markup or "<?" in markup or _RAW_TEXT.search(markup):
        return False
    unescape = html.unescape
    chunks = parser.chunks
    plain: dict[str, bool] = {}  # attribute strings already checked (table cells repeat them)

    def data(text: str) -> None:
        text = unescape(text)
        if parser.pre_depth or parser.skipping or "\x00" in text:
            parser.handle_data(text)
        elif text.isprintable() and "  " not in text:
            chunks.append(text)  # no whitespace but single spaces: nothing to collapse
        else:
            chunks.append(_SPACE.sub(" ", text))

    position = 0
    for match in _TAG.finditer(markup):
        begin = match.start()
        if begin > position:
            text = markup[position:begin]
            if "<" in text:
                return False  # a '<' that opens no plain tag
            data(text)
        closing, name, rest = match.groups()
        tag = name.lower()
        position = match.end()
        if closing:
            if rest.strip():
                return False
            if parser.pre_depth or tag in _SKIP or tag == "a":
                parser.handle_endtag(tag)
            else:
                added = _END_TEXT.get(tag)
                if added is not None:
                    chunks.append(added)
            continue
        self_closing = plain.get(rest)
        if self_closing is None:
            checked = _ATTRS.fullmatch(rest)
            if checked is None:
                return False
            self_closing = plain[rest] = bool(checked.group(1))
        added = None if parser.pre_depth else _START_TEXT.get(tag)
        if added is not None:
            if added:
                chunks.append(added)
        elif tag not in _BLOCK and tag not in _SKIP and tag not in ("img", "a", "pre"):
            pass  # no handler adds anything for other tags outside <pre>
        else:
            parser.handle_starttag(tag, _attributes(rest) if tag in ("img", "a") else [])
        if self_closing:
            if parser.pre_depth or tag in _SKIP or tag == "a":
                parser.handle_endtag(tag)
            else:
                added = _END_TEXT.get(tag)
                if added is not None:
                    chunks.append(added)
    if position < len(markup):
        text = markup[position:]
        if "<" in text:
            return False
        data(text)
    return True


def html_to_text(markup: str, *, fast: bool = True) -> str:
    """Readable text from HTML: blocks on their own lines, table cells tab-separated.

    ``fast=False`` always uses ``HTMLParser`` (the reference the fast path is tested against).
    """
    parser = _TextExtractor()
    if not (fast and _feed_fast(parser, markup)):
        parser = _TextExtractor()
        parser.feed(markup)
    parser.close()
    text = "".join(parser.chunks)
    lines = [line.strip(" ").lstrip("\t").rstrip() for line in text.splitlines()]
    collapsed = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
    for index, block in enumerate(parser.verbatim):
        collapsed = collapsed.replace(_placeholder(index), block, 1)
    return collapsed + "\n"
