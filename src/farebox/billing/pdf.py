"""A small PDF 1.4 writer: A4 pages of positioned text lines and horizontal rules.

Why no dependency: an invoice needs positioned text in two fonts and a few rules. That is a
few dozen lines of well-specified output (ISO 32000-1: objects, one content stream a page, an
xref table of byte offsets, a trailer), fully proven by the tests with a real reader (pypdf).
A PDF library would be a large runtime dependency, with its own upgrades and security fixes,
for that one small job.

Fonts: Helvetica and Helvetica-Bold are two of the standard 14 fonts every reader has, so
nothing is embedded. Text is encoded in WinAnsiEncoding (Windows-1252): Latin-1 plus a few
typographic extras (€ • – — “ ”). A character outside it becomes its unaccented letter when
Unicode decomposes it ("ő" -> "o"), else "?", so a foreign name degrades legibly instead of
breaking the file.
"""

from __future__ import annotations

import math
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

A4_WIDTH = 595.28   # points (1/72 inch): 210 mm
A4_HEIGHT = 841.89  # 297 mm


@dataclass(frozen=True, slots=True)
class Text:
    """One line of text. (x, y) is the left end of its baseline, in points from the page's
    bottom-left corner."""

    x: float
    y: float
    text: str
    size: float = 10.0
    bold: bool = False


@dataclass(frozen=True, slots=True)
class Rule:
    """A horizontal line from x1 to x2 at height y."""

    x1: float
    x2: float
    y: float
    thickness: float = 0.5


Mark = Text | Rule

# Advance widths (1/1000 em) of the printable ASCII characters, space (32) to tilde (126),
# from Adobe's Helvetica and Helvetica-Bold font metrics, in WinAnsiEncoding order
# (code 39 is quotesingle, code 96 is grave).
_REGULAR_WIDTHS = (
    278, 278, 355, 556, 556, 889, 667, 191, 333, 333, 389, 584, 278, 333, 278, 278,
    556, 556, 556, 556, 556, 556, 556, 556, 556, 556, 278, 278, 584, 584, 584, 556,
    1015, 667, 667, 722, 722, 667, 611, 778, 722, 278, 500, 667, 556, 833, 722, 778,
    667, 778, 722, 667, 611, 722, 667, 944, 667, 667, 611, 278, 278, 278, 469, 556,
    333, 556, 556, 500, 556, 556, 278, 556, 556, 222, 222, 500, 222, 833, 556, 556,
    556, 556, 333, 500, 278, 556, 500, 722, 500, 500, 500, 334, 260, 334, 584,
)
_BOLD_WIDTHS = (
    278, 333, 474, 556, 556, 889, 722, 238, 333, 333, 389, 584, 278, 333, 278, 278,
    556, 556, 556, 556, 556, 556, 556, 556, 556, 556, 333, 333, 584, 584, 584, 611,
    975, 722, 722, 722, 722, 667, 611, 778, 722, 278, 556, 722, 611, 833, 722, 778,
    667, 778, 722, 667, 611, 722, 667, 944, 667, 667, 611, 333, 278, 333, 584, 556,
    333, 556, 611, 556, 611, 556, 333, 611, 611, 278, 278, 556, 278, 889, 611, 611,
    611, 611, 389, 556, 333, 611, 556, 778, 556, 556, 500, 389, 280, 389, 584,
)
assert len(_REGULAR_WIDTHS) == len(_BOLD_WIDTHS) == 127 - 32
# No glyph of either font beyond ASCII is wider than an em (Æ, Œ, —, …, ‰, ™ are exactly
# one): measuring those at 1000 can only overestimate, so a line may wrap early but never
# runs past its column.
_NON_ASCII_WIDTH = 1000


def winansi(text: str) -> bytes:
    """`text` as WinAnsiEncoding bytes for one line: controls and odd spaces become a space;
    a character the encoding lacks becomes its decomposed base letters, else "?"."""
    out = bytearray()
    for char in unicodedata.normalize("NFC", text):
        category = unicodedata.category(char)
        if category == "Cc" or category.startswith("Z"):
            out += b" "
            continue
        try:
            out += char.encode("cp1252")
        except UnicodeEncodeError:
            base = unicodedata.normalize("NFKD", char).encode("cp1252", "ignore")
            out += bytes(byte for byte in base if byte >= 0x20) or b"?"
    return bytes(out)


def text_width(text: str, size: float, bold: bool = False) -> float:
    """The width in points of `text` set in Helvetica (or Helvetica-Bold) at `size`."""
    widths = _BOLD_WIDTHS if bold else _REGULAR_WIDTHS
    units = sum(widths[byte - 32] if byte < 127 else _NON_ASCII_WIDTH for byte in winansi(text))
    return units * size / 1000


def wrap(text: str, width: float, size: float, bold: bool = False) -> list[str]:
    """`text` broken at blanks into lines no wider than `width` (at least one line, maybe
    empty). A word wider than a whole line is cut between characters."""
    lines: list[str] = []
    line = ""
    for word in text.split():
        candidate = f"{line} {word}" if line else word
        if text_width(candidate, size, bold) <= width:
            line = candidate
            continue
        if line:
            lines.append(line)
        line = ""
        for char in word:
            if line and text_width(line + char, size, bold) > width:
                lines.append(line)
                line = ""
            line += char
    lines.append(line)
    return lines


def document(pages: Sequence[Sequence[Mark]], *, title: str) -> bytes:
    """A PDF file of A4 pages, each drawing its marks. `title` goes in the document's
    metadata (any Unicode: metadata strings are UTF-16)."""
    assert pages, "a PDF has at least one page"
    # Objects in file order; object n is objects[n - 1].
    catalog, page_tree, info, regular, bold = 1, 2, 3, 4, 5
    first_page = 6  # then each page is followed by its content stream
    kids = [first_page + 2 * index for index in range(len(pages))]
    objects: list[bytes] = [
        b"<< /Type /Catalog /Pages %d 0 R >>" % page_tree,
        b"<< /Type /Pages /Kids [%s] /Count %d >>" % (b" ".join(b"%d 0 R" % kid for kid in kids), len(kids)),
        b"<< /Title %s /Producer (Farebox) >>" % _unicode_string(title),
        _font(b"Helvetica"),
        _font(b"Helvetica-Bold"),
    ]
    for page, kid in zip(pages, kids, strict=True):
        objects.append(
            b"<< /Type /Page /Parent %d 0 R /MediaBox [0 0 %s %s] "
            b"/Resources << /Font << /F1 %d 0 R /F2 %d 0 R >> >> /Contents %d 0 R >>"
            % (page_tree, _number(A4_WIDTH), _number(A4_HEIGHT), regular, bold, kid + 1)
        )
        content = _content(page)
        objects.append(b"<< /Length %d >>\nstream\n%s\nendstream" % (len(content), content))
    assert len(objects) == kids[-1] + 1

    # The binary comment tells transfer tools the file is not text.
    out = bytearray(b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n")
    offsets = []
    for number, body in enumerate(objects, start=1):
        offsets.append(len(out))
        out += b"%d 0 obj\n%s\nendobj\n" % (number, body)
    xref = len(out)
    out += b"xref\n0 %d\n" % (len(objects) + 1)
    out += b"0000000000 65535 f \n"  # every xref entry is exactly 20 bytes, its EOL included
    for offset in offsets:
        out += b"%010d 00000 n \n" % offset
    out += b"trailer\n<< /Size %d /Root %d 0 R /Info %d 0 R >>\nstartxref\n%d\n" % (
        len(objects) + 1, catalog, info, xref)
    out += b"%%EOF\n"
    return bytes(out)


def _font(name: bytes) -> bytes:
    return b"<< /Type /Font /Subtype /Type1 /BaseFont /%s /Encoding /WinAnsiEncoding >>" % name


def _content(page: Sequence[Mark]) -> bytes:
    operations = []
    for mark in page:
        if isinstance(mark, Text):
            _check_on_page(mark.x, mark.y)
            assert mark.size > 0, mark
            font = b"/F2" if mark.bold else b"/F1"
            operations.append(b"BT %s %s Tf %s %s Td %s Tj ET" % (
                font, _number(mark.size), _number(mark.x), _number(mark.y), _literal(winansi(mark.text))))
        else:
            _check_on_page(mark.x1, mark.y)
            _check_on_page(mark.x2, mark.y)
            assert mark.thickness > 0, mark
            operations.append(b"%s w %s %s m %s %s l S" % (
                _number(mark.thickness), _number(mark.x1), _number(mark.y), _number(mark.x2), _number(mark.y)))
    return b"\n".join(operations)


def _check_on_page(x: float, y: float) -> None:
    assert 0 <= x <= A4_WIDTH and 0 <= y <= A4_HEIGHT, (x, y)


def _number(value: float) -> bytes:
    """A PDF real: plain decimal, never exponent notation (which PDF does not have)."""
    assert math.isfinite(value) and value >= 0, value
    text = f"{value:.2f}".rstrip("0").rstrip(".")
    return text.encode()


def _literal(data: bytes) -> bytes:
    """A PDF literal string. The delimiters and the escape character are escaped; bytes
    outside printable ASCII are written as octal escapes so content streams stay ASCII."""
    out = bytearray(b"(")
    for byte in data:
        if byte in b"()\\":
            out += b"\\" + bytes((byte,))
        elif 0x20 <= byte < 0x7F:
            out.append(byte)
        else:
            out += b"\\%03o" % byte
    out += b")"
    return bytes(out)


def _unicode_string(text: str) -> bytes:
    """A PDF text string in UTF-16BE with its byte-order mark, written in hex."""
    return b"<FEFF%s>" % text.encode("utf-16-be").hex().upper().encode()
