"""A plain-text rendering of an HTML body, for the text/plain alternative."""

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
        self.in_pre = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
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
                self.in_pre = True
        elif tag in {"td", "th"}:
            self.chunks.append("\t")
        elif tag == "img":
            alt = attributes.get("alt") or "image"
            self.chunks.append(f"[{alt}]")
        elif tag == "a":
            self.href = attributes.get("href")

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP:
            self.skipping = max(0, self.skipping - 1)
        elif tag == "a" and self.href:
            if not self.href.startswith(("cid:", "#")):
                self.chunks.append(f" ({self.href})")
            self.href = None
        elif tag in _BLOCK:
            self.chunks.append("\n" if tag in {"tr", "li", "caption"} else "\n\n")
            if tag == "pre":
                self.in_pre = False

    def handle_data(self, data: str) -> None:
        if self.skipping:
            return
        self.chunks.append(data if self.in_pre else re.sub(r"\s+", " ", data))


def html_to_text(markup: str) -> str:
    """Readable text from HTML: blocks on their own lines, table cells tab-separated."""
    parser = _TextExtractor()
    parser.feed(markup)
    parser.close()
    text = "".join(parser.chunks)
    lines = [line.strip(" ").lstrip("\t").rstrip() for line in text.splitlines()]
    collapsed = re.sub(r"\n{3,}", "\n\n", "\n".join(lines))
    return collapsed.strip() + "\n"
