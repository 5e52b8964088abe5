"""Turn what notebooks have (figures, files, bytes, DataFrames) into MIME parts."""

from __future__ import annotations

import io
import mimetypes
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from notifier.errors import MessageError

PathLike = str | os.PathLike[str]


@dataclass(frozen=True)
class Part:
    """Binary content with its MIME type and file name."""

    data: bytes
    mime_type: str
    filename: str

    @property
    def maintype(self) -> str:
        """``image`` of ``image/png``."""
        return self.mime_type.split("/", 1)[0]

    @property
    def subtype(self) -> str:
        """``png`` of ``image/png``."""
        return self.mime_type.split("/", 1)[1]


def sniff_image_type(data: bytes) -> str | None:
    """The MIME type of PNG, JPEG, GIF, WebP or SVG bytes, or None."""
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    head = data[:512].lstrip().lower()
    if head.startswith(b"<svg") or (head.startswith(b"<?xml") and b"<svg" in head):
        return "image/svg+xml"
    return None


def is_figure(obj: Any) -> bool:
    """True for matplotlib figures (or anything else with ``savefig``), without importing it."""
    return callable(getattr(obj, "savefig", None))


def figure_png(figure: Any, dpi: int = 110) -> bytes:
    """Render a matplotlib figure (or Axes) to PNG bytes."""
    if not callable(getattr(figure, "savefig", None)) and hasattr(figure, "get_figure"):
        figure = figure.get_figure()
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi, bbox_inches="tight")
    return buffer.getvalue()


def image_part(source: Any, filename: str | None = None) -> Part:
    """An image from PNG/JPEG/GIF/SVG bytes, an image file, or a matplotlib figure/Axes."""
    if is_figure(source) or hasattr(source, "get_figure"):
        data = figure_png(source)
        return Part(data, "image/png", _with_suffix(filename or "chart", ".png"))
    if isinstance(source, bytes | bytearray):
        data = bytes(source)
        mime = sniff_image_type(data)
        if mime is None:
            raise MessageError(
                "The image bytes are not PNG, JPEG, GIF, WebP or SVG.",
                "pass the bytes of an image file, a file path, or a matplotlib figure",
            )
        ext = mimetypes.guess_extension(mime) or ".img"
        return Part(data, mime, filename or f"image{ext}")
    if isinstance(source, str | os.PathLike):
        path = _existing_file(source, "image")
        data = path.read_bytes()
        mime = sniff_image_type(data) or mimetypes.guess_type(path.name)[0]
        if not mime or not mime.startswith("image/"):
            raise MessageError(f"{path} is not an image.", "use a PNG, JPEG, GIF or SVG file")
        return Part(data, mime, filename or path.name)
    raise MessageError(
        f"Cannot make an image from {type(source).__name__}.",
        "pass a matplotlib figure, image bytes, or a path to an image file",
    )


def attachment_part(source: Any, filename: str | None = None, mime_type: str | None = None) -> Part:
    """An attachment from a path, bytes, text, a DataFrame (csv/xlsx/json by name) or a figure."""
    if _is_dataframe(source):
        name = filename or "data.csv"
        return Part(_dataframe_bytes(source, name), _guess(name, mime_type), name)
    if is_figure(source):
        name = _with_suffix(filename or "chart", ".png")
        return Part(figure_png(source), "image/png", name)
    if isinstance(source, bytes | bytearray):
        if not filename:
            raise MessageError("An attachment from bytes needs a file name.", "pass filename=...")
        return Part(bytes(source), _guess(filename, mime_type), filename)
    if isinstance(source, str | os.PathLike):
        path = _existing_file(source, "attachment")
        name = filename or path.name
        return Part(path.read_bytes(), _guess(name, mime_type), name)
    raise MessageError(
        f"Cannot attach a {type(source).__name__}.",
        "attach a file path, bytes with a file name, or a DataFrame",
    )


def _guess(name: str, explicit: str | None) -> str:
    if explicit:
        if "/" not in explicit:
            raise MessageError(f"{explicit!r} is not a MIME type.", "for example 'text/csv'")
        return explicit
    guessed = mimetypes.guess_type(name)[0]
    return guessed or "application/octet-stream"


def _is_dataframe(obj: Any) -> bool:
    return type(obj).__name__ in {"DataFrame", "Series"} and hasattr(obj, "to_csv")


def _dataframe_bytes(frame: Any, name: str) -> bytes:
    suffix = Path(name).suffix.lower()
    if suffix == ".csv":
        return frame.to_csv(index=keeps_index(frame)).encode("utf-8")
    if suffix == ".xlsx":
        buffer = io.BytesIO()
        frame.to_excel(buffer, index=keeps_index(frame))
        return buffer.getvalue()
    if suffix == ".json":
        return frame.to_json(orient="records", date_format="iso").encode("utf-8")
    raise MessageError(
        f"Cannot write a DataFrame as {name!r}.", "name the file .csv, .xlsx or .json"
    )


def keeps_index(frame: Any) -> bool:
    """Keep an index that carries data: named, or not plain integers.

    A filtered frame keeps its old row numbers (an unnamed integer index): that is
    not data, and writing it would add an anonymous first column.
    """
    index = frame.index
    if any(name is not None for name in index.names):
        return True
    return index.dtype.kind not in "iu"


def _existing_file(source: PathLike, what: str) -> Path:
    path = Path(source).expanduser()
    if path.is_dir():
        raise MessageError(
            f"The {what} {str(path)!r} is a folder, not a file.",
            "attach the files in it one by one, or make a .zip of the folder and attach that",
        )
    if not path.is_file():
        raise MessageError(f"The {what} {str(path)!r} does not exist.", "check the path")
    return path


def _with_suffix(name: str, suffix: str) -> str:
    return name if Path(name).suffix else name + suffix
