"""QR codes of link URLs, rendered once per code and kept.

`segno.make_qr` always (`segno.make` picks a Micro QR for short data, which phone cameras and
zbar do not read). Error correction M survives a crease or a smudge on a printed card. The
mask is chosen once when a code is made (segno's search costs ~6 ms a code) and stored with
it; renderings are cached by URL and mask, which never change for a code.
"""

from __future__ import annotations

import io
import threading
from collections import OrderedDict
from dataclasses import dataclass

import segno

ERROR = "m"
BORDER = 4  # the quiet zone the standard asks for, in modules


def best_mask(url: str) -> int:
    """The mask segno's evaluation picks for this URL (slow: run it once per code)."""
    return segno.make_qr(url, error=ERROR).mask


@dataclass
class Rendering:
    """One code's QR symbol and what was drawn of it so far."""

    qr: segno.QRCode
    _svg: str | None = None
    _png: bytes | None = None
    _pdf_ops: tuple[int, str] | None = None

    @property
    def size(self) -> int:
        """Modules across, quiet zone included."""
        return int(self.qr.symbol_size(border=BORDER)[0])  # whole modules at scale 1 (segno types sizes int | float)

    def svg(self) -> str:
        """An inline `<svg>` that scales to its box (no width/height of its own)."""
        if self._svg is None:
            self._svg = self.qr.svg_inline(scale=1, border=BORDER, omitsize=True, svgclass="qr", lineclass=None)
        return self._svg

    def svg_document(self) -> str:
        """A standalone SVG file on a white ground, 8 px a module, scalable."""
        px = self.size * 8
        head = f'<svg xmlns="http://www.w3.org/2000/svg" width="{px}" height="{px}" '
        body = self.svg().replace("<svg ", head, 1)
        body = body.replace(">", '><rect width="100%" height="100%" fill="#fff"/>', 1)
        return '<?xml version="1.0" encoding="utf-8"?>\n' + body + "\n"

    def png(self) -> bytes:
        """A PNG at 8 px a module: large enough for any printer and any decoder."""
        if self._png is None:
            buf = io.BytesIO()
            self.qr.save(buf, kind="png", scale=8, border=BORDER)
            self._png = buf.getvalue()
        return self._png

    def pdf_ops(self) -> tuple[int, str]:
        """PDF path operators filling the dark modules, one unit a module, origin bottom-left.

        Runs of dark modules in a row become one rectangle (about 200 for a URL code instead
        of 500 squares); the caller places and scales them with a `cm` operator.
        """
        if self._pdf_ops is None:
            matrix = self.qr.matrix
            n = len(matrix)
            parts: list[str] = []
            for y, row in enumerate(matrix):
                x = 0
                while x < n:
                    if row[x] & 1:
                        start = x
                        while x < n and row[x] & 1:
                            x += 1
                        parts.append(f"{start + BORDER} {n - 1 - y + BORDER} {x - start} 1 re")
                    else:
                        x += 1
            parts.append("f")
            self._pdf_ops = (n + 2 * BORDER, " ".join(parts))
        return self._pdf_ops


class QrCache:
    """Renderings by (URL, mask), least recently used dropped first; safe across threads."""

    def __init__(self, capacity: int = 4096) -> None:
        self.capacity = capacity
        self._items: OrderedDict[tuple[str, int | None], Rendering] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, url: str, mask: int | None) -> Rendering:
        """The rendering of `url` with `mask` (None: let segno choose)."""
        key = (url, mask)
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
                self.hits += 1
                return found
        rendering = Rendering(segno.make_qr(url, error=ERROR, mask=mask))
        with self._lock:
            self.misses += 1
            self._items[key] = rendering
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return rendering

    def make(self, url: str) -> Rendering:
        """A new code's rendering with the best mask (slow: once per code), kept for its sheet."""
        rendering = Rendering(segno.make_qr(url, error=ERROR))
        with self._lock:
            self._items[(url, rendering.qr.mask)] = rendering
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)
        return rendering

    def forget(self, urls: set[str]) -> None:
        """Drop the renderings of revoked codes (they must not linger in memory)."""
        with self._lock:
            for key in [k for k in self._items if k[0] in urls]:
                del self._items[key]

    def clear(self) -> None:
        """Drop everything (benchmarks measure the cold case)."""
        with self._lock:
            self._items.clear()
