"""A tiny pure-Python line-chart writer (PNG), so the benchmark needs no plotting library.

``write_chart(path, title, panels)`` draws panels stacked vertically; each panel has a
y-axis label and one or more series of ``(x, y)`` points sharing the x axis (seconds).
Text uses a built-in 5x7 pixel font (lower case, digits and a little punctuation).
The PNG is 8-bit RGB, one zlib-compressed IDAT chunk, scanlines unfiltered.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field

Color = tuple[int, int, int]
WHITE: Color = (255, 255, 255)
BLACK: Color = (0, 0, 0)
GREY: Color = (215, 215, 215)
SERIES_COLORS: list[Color] = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189)]

# 5x7 glyphs, rows top to bottom; "#" is ink.
_FONT_ROWS = {
    "0": ".###.|#...#|#..##|#.#.#|##..#|#...#|.###.",
    "1": "..#..|.##..|..#..|..#..|..#..|..#..|.###.",
    "2": ".###.|#...#|....#|...#.|..#..|.#...|#####",
    "3": "####.|....#|....#|.###.|....#|....#|####.",
    "4": "...#.|..##.|.#.#.|#..#.|#####|...#.|...#.",
    "5": "#####|#....|####.|....#|....#|#...#|.###.",
    "6": "..##.|.#...|#....|####.|#...#|#...#|.###.",
    "7": "#####|....#|...#.|..#..|.#...|.#...|.#...",
    "8": ".###.|#...#|#...#|.###.|#...#|#...#|.###.",
    "9": ".###.|#...#|#...#|.####|....#|...#.|.##..",
    "a": ".....|.....|.###.|....#|.####|#...#|.####",
    "b": "#....|#....|####.|#...#|#...#|#...#|####.",
    "c": ".....|.....|.####|#....|#....|#....|.####",
    "d": "....#|....#|.####|#...#|#...#|#...#|.####",
    "e": ".....|.....|.###.|#...#|#####|#....|.####",
    "f": "..##.|.#...|####.|.#...|.#...|.#...|.#...",
    "g": ".....|.####|#...#|#...#|.####|....#|.###.",
    "h": "#....|#....|####.|#...#|#...#|#...#|#...#",
    "i": "..#..|.....|.##..|..#..|..#..|..#..|.###.",
    "j": "...#.|.....|..##.|...#.|...#.|#..#.|.##..",
    "k": "#....|#....|#..#.|#.#..|##...|#.#..|#..#.",
    "l": ".##..|..#..|..#..|..#..|..#..|..#..|.###.",
    "m": ".....|.....|##.#.|#.#.#|#.#.#|#.#.#|#.#.#",
    "n": ".....|.....|####.|#...#|#...#|#...#|#...#",
    "o": ".....|.....|.###.|#...#|#...#|#...#|.###.",
    "p": ".....|####.|#...#|#...#|####.|#....|#....",
    "q": ".....|.####|#...#|#...#|.####|....#|....#",
    "r": ".....|.....|#.##.|##..#|#....|#....|#....",
    "s": ".....|.....|.####|#....|.###.|....#|####.",
    "t": ".#...|.#...|####.|.#...|.#...|.#..#|..##.",
    "u": ".....|.....|#...#|#...#|#...#|#..##|.##.#",
    "v": ".....|.....|#...#|#...#|#...#|.#.#.|..#..",
    "w": ".....|.....|#...#|#.#.#|#.#.#|#.#.#|.#.#.",
    "x": ".....|.....|#...#|.#.#.|..#..|.#.#.|#...#",
    "y": ".....|#...#|#...#|#...#|.####|....#|.###.",
    "z": ".....|.....|#####|...#.|..#..|.#...|#####",
    ".": ".....|.....|.....|.....|.....|.##..|.##..",
    ",": ".....|.....|.....|.....|.##..|..#..|.#...",
    "-": ".....|.....|.....|.###.|.....|.....|.....",
    "/": "....#|...#.|...#.|..#..|.#...|.#...|#....",
    "%": "##..#|##.#.|...#.|..#..|.#...|.#.##|#..##",
    ":": ".....|.##..|.##..|.....|.##..|.##..|.....",
    "(": "...#.|..#..|.#...|.#...|.#...|..#..|...#.",
    ")": ".#...|..#..|...#.|...#.|...#.|..#..|.#...",
    "=": ".....|.....|#####|.....|#####|.....|.....",
    "+": ".....|..#..|..#..|#####|..#..|..#..|.....",
    "_": ".....|.....|.....|.....|.....|.....|#####",
    " ": ".....|.....|.....|.....|.....|.....|.....",
}
_FONT = {ch: rows.split("|") for ch, rows in _FONT_ROWS.items()}
GLYPH_W, GLYPH_H = 5, 7


class Canvas:
    """An RGB raster with just enough drawing for a line chart."""

    def __init__(self, width: int, height: int, background: Color = WHITE):
        self.width = width
        self.height = height
        self.pixels = bytearray(bytes(background) * (width * height))

    def dot(self, x: int, y: int, color: Color) -> None:
        """Set one pixel (outside the canvas: ignored)."""
        if 0 <= x < self.width and 0 <= y < self.height:
            i = 3 * (y * self.width + x)
            self.pixels[i:i + 3] = bytes(color)

    def line(self, x0: int, y0: int, x1: int, y1: int, color: Color, width: int = 1) -> None:
        """A straight line (Bresenham), ``width`` pixels thick."""
        dx, dy = abs(x1 - x0), -abs(y1 - y0)
        sx, sy = (1 if x0 < x1 else -1), (1 if y0 < y1 else -1)
        err = dx + dy
        while True:
            for k in range(width):
                self.dot(x0, y0 + k, color)
                self.dot(x0 + k, y0, color)
            if x0 == x1 and y0 == y1:
                return
            e2 = 2 * err
            if e2 >= dy:
                err += dy
                x0 += sx
            if e2 <= dx:
                err += dx
                y0 += sy

    def rect(self, x0: int, y0: int, x1: int, y1: int, color: Color) -> None:
        """A filled rectangle, corners included."""
        for y in range(max(0, y0), min(self.height, y1 + 1)):
            for x in range(max(0, x0), min(self.width, x1 + 1)):
                self.dot(x, y, color)

    def text(self, x: int, y: int, text: str, color: Color = BLACK, scale: int = 1) -> int:
        """Draw ``text`` with its top-left corner at ``(x, y)``; return its width."""
        start = x
        for ch in text.lower():
            glyph = _FONT.get(ch, _FONT[" "])
            for row, bits in enumerate(glyph):
                for col, bit in enumerate(bits):
                    if bit == "#":
                        for sy in range(scale):
                            for sx in range(scale):
                                self.dot(x + col * scale + sx, y + row * scale + sy, color)
            x += (GLYPH_W + 1) * scale
        return x - start

    def png(self) -> bytes:
        """The canvas as a PNG file."""
        raw = bytearray()
        stride = 3 * self.width
        for y in range(self.height):
            raw.append(0)  # filter: none
            raw += self.pixels[y * stride:(y + 1) * stride]

        def chunk(kind: bytes, data: bytes) -> bytes:
            return (struct.pack(">I", len(data)) + kind + data
                    + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

        header = struct.pack(">IIBBBBB", self.width, self.height, 8, 2, 0, 0, 0)
        return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                + chunk(b"IDAT", zlib.compress(bytes(raw), 6)) + chunk(b"IEND", b""))


def text_width(text: str, scale: int = 1) -> int:
    """Pixels ``Canvas.text`` needs for ``text``."""
    return len(text) * (GLYPH_W + 1) * scale


@dataclass
class Series:
    """One line: a name for the legend and its points."""

    name: str
    points: Sequence[tuple[float, float]]


@dataclass
class Panel:
    """One chart area: a y-axis label and its series."""

    label: str
    series: list[Series] = field(default_factory=list)


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values covering ``[low, high]``."""
    if high <= low:
        high = low + 1.0
    raw = (high - low) / max(1, count)
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    first = math.floor(low / step) * step
    ticks = []
    value = first
    while value <= high + step * 1e-9:
        ticks.append(round(value, 10))
        value += step
    if ticks[-1] < high:
        ticks.append(round(ticks[-1] + step, 10))
    return ticks


def format_tick(value: float) -> str:
    """Short tick text: 12k, 1.5m for large values, trimmed decimals for small ones."""
    if abs(value) >= 1_000_000:
        return f"{value / 1_000_000:g}m"
    if abs(value) >= 10_000:
        return f"{value / 1000:g}k"
    if value == int(value):
        return str(int(value))
    return f"{value:.3g}"


def render(title: str, panels: list[Panel], width: int = 960,
           panel_height: int = 260) -> Canvas:
    """Draw the chart."""
    margin_left, margin_right, top, gap = 70, 20, 40, 50
    height = top + len(panels) * (panel_height + gap) + 10
    canvas = Canvas(width, height)
    canvas.text(margin_left, 12, title, BLACK, scale=2)
    xs = [x for p in panels for s in p.series for x, _ in s.points]
    x_high = max(xs) if xs else 1.0
    x_ticks = nice_ticks(0.0, x_high, 8)
    x_high = x_ticks[-1]
    plot_w = width - margin_left - margin_right
    for n, panel in enumerate(panels):
        y0 = top + n * (panel_height + gap)
        y1 = y0 + panel_height
        ys = [y for s in panel.series for _, y in s.points if y is not None]
        y_ticks = nice_ticks(0.0, max(ys) if ys else 1.0, 5)
        y_high = y_ticks[-1] or 1.0

        def px(x: float) -> int:
            return margin_left + int(round(plot_w * x / x_high)) if x_high else margin_left

        def py(y: float, y0=y0, y_high=y_high) -> int:
            return y0 + panel_height - int(round(panel_height * y / y_high))

        for tick in y_ticks:
            y = py(tick)
            canvas.line(margin_left, y, margin_left + plot_w, y, GREY)
            label = format_tick(tick)
            canvas.text(margin_left - 6 - text_width(label), y - 3, label)
        for tick in x_ticks:
            x = px(tick)
            canvas.line(x, y0, x, y1, GREY)
            label = format_tick(tick)
            canvas.text(x - text_width(label) // 2, y1 + 6, label)
        canvas.line(margin_left, y0, margin_left, y1, BLACK)
        canvas.line(margin_left, y1, margin_left + plot_w, y1, BLACK)
        canvas.text(margin_left + 4, y0 - 12, panel.label)
        legend_x = margin_left + plot_w
        for k, series in enumerate(panel.series):
            color = SERIES_COLORS[k % len(SERIES_COLORS)]
            points = [(px(x), py(y)) for x, y in series.points if y is not None]
            for (ax, ay), (bx, by) in zip(points, points[1:], strict=False):
                canvas.line(ax, ay, bx, by, color, width=2)
            if len(points) == 1:
                canvas.rect(points[0][0] - 1, points[0][1] - 1, points[0][0] + 1,
                            points[0][1] + 1, color)
            legend_x -= text_width(series.name) + 24
            canvas.rect(legend_x, y0 - 9, legend_x + 10, y0 - 5, color)
            canvas.text(legend_x + 14, y0 - 12, series.name, color)
    canvas.text(margin_left + plot_w - text_width("time (s)"), height - 10 - 7, "time (s)")
    return canvas


def write_chart(path: str, title: str, panels: list[Panel]) -> None:
    """Render ``panels`` under ``title`` and write the PNG to ``path``."""
    data = render(title, panels).png()
    with open(path, "wb") as f:
        f.write(data)
