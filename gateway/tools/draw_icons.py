"""Draws the portal's app icons into gateway/src/gateway/static/icons/ (committed; run again
after changing the design or the colours): `.venv/bin/python gateway/tools/draw_icons.py`.

The mark is a white house (home and school) with a door and a gold star (the stars teachers
award) on the portal's blue (`--accent` in portal.css). Two shapes:
- "any": a rounded square on transparency, for browsers that show the icon as it is;
- "maskable": the blue bleeds to the edges and the mark stays inside the central circle of 40%
  radius that every launcher's mask keeps (https://w3c.github.io/manifest/#icon-masks); the
  Apple touch icon is this one too, since iOS rounds the corners itself.
Each is drawn four times larger and scaled down, which smooths the edges.
"""

from __future__ import annotations

import math
from pathlib import Path

from PIL import Image, ImageDraw

OUT = Path(__file__).resolve().parent.parent / "src" / "gateway" / "static" / "icons"
ACCENT = (11, 87, 164, 255)  # --accent
WHITE = (255, 255, 255, 255)
GOLD = (255, 191, 71, 255)  # --focus
SUPERSAMPLE = 4

# name: (size in pixels, maskable)
ICONS = {
    "icon-32.png": (32, False),
    "icon-192.png": (192, False),
    "icon-512.png": (512, False),
    "icon-maskable-192.png": (192, True),
    "icon-maskable-512.png": (512, True),
    "apple-touch-icon.png": (180, True),
}


def _star(cx: float, cy: float, outer: float, inner: float) -> list[tuple[float, float]]:
    points = []
    for i in range(10):
        radius = outer if i % 2 == 0 else inner
        angle = -math.pi / 2 + i * math.pi / 5
        points.append((cx + radius * math.cos(angle), cy + radius * math.sin(angle)))
    return points


def _mark(draw: ImageDraw.ImageDraw, size: float, scale: float) -> None:
    """The house and star, in a box of `scale` × the icon's size around its centre."""

    def at(x: float, y: float) -> tuple[float, float]:
        return (size / 2 + (x - 0.5) * scale * size, size / 2 + (y - 0.5) * scale * size)

    unit = scale * size
    # Roof: a broad triangle with its eaves past the walls.
    draw.polygon([at(0.14, 0.50), at(0.50, 0.16), at(0.86, 0.50)], fill=WHITE)
    draw.rounded_rectangle([at(0.24, 0.44), at(0.76, 0.84)], radius=0.04 * unit, fill=WHITE)
    # The door: blue, rounded at the top, standing on the sill.
    left, top = at(0.42, 0.62)
    right, bottom = at(0.58, 0.84)
    draw.rounded_rectangle([(left, top), (right, bottom + 0.05 * unit)], radius=0.08 * unit, fill=ACCENT)
    draw.rectangle([at(0.24, 0.84), at(0.76, 0.90)], fill=ACCENT)
    # The star above the door, ringed in blue so that it reads on the white wall.
    cx, cy = at(0.50, 0.47)
    draw.polygon(_star(cx, cy, 0.115 * unit, 0.05 * unit), fill=ACCENT)
    draw.polygon(_star(cx, cy, 0.085 * unit, 0.037 * unit), fill=GOLD)


def draw_icon(size: int, maskable: bool) -> Image.Image:
    big = size * SUPERSAMPLE
    image = Image.new("RGBA", (big, big), (0, 0, 0, 0))
    draw = ImageDraw.Draw(image)
    if maskable:
        draw.rectangle([0, 0, big, big], fill=ACCENT)
        _mark(draw, big, 0.72)
    else:
        draw.rounded_rectangle([0, 0, big - 1, big - 1], radius=0.22 * big, fill=ACCENT)
        _mark(draw, big, 0.80)
    return image.resize((size, size), Image.Resampling.LANCZOS)


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for name, (size, maskable) in ICONS.items():
        draw_icon(size, maskable).save(OUT / name, optimize=True)
        print(OUT / name)


if __name__ == "__main__":
    main()
