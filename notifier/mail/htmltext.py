"""A plain-text rendering of an HTML body, for the text/plain alternative.

Text is reflowed (runs of whitespace become one space, blocks get their own lines), except
inside ``<pre>``: code and tracebacks keep their indentation and blank lines verbatim.
"""

from __future__ import annotations

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


def html_to_text(markup: str) -> str:
    """Readable text from HTML: blocks on their own lines, table cells tab-separated."""
    parser = _TextExtractor()
    parser.feed(markup)
    parser.close()
    text = "".join(parser.chunks)
    lines = [line.strip(" ").lstrip("\t").rstrip() for line in text.splitlines()]
    collapsed = re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()
    for index, block in enumerate(parser.verbatim):
        collapsed = collapsed.replace(_placeholder(index), block, 1)
    return collapsed + "\n"
