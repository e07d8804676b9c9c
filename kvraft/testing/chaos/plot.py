"""A timeline of a chaos run as a PNG, drawn without matplotlib (not a dependency).

Top panel: the latency of every operation (log scale, one dot each: ok, fail, unknown).
Bottom panel: completions per second (ok, fail, unknown). Fault windows are shaded in
both, coloured by kind, with the recovery time after each heal in grey and the kind
written above. Pixels go into a ``Canvas`` (RGB bytes); ``Canvas.png()`` encodes it
with zlib; text uses a built-in 5x7 bitmap font.
"""

from __future__ import annotations

import math
import struct
import zlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

Color = tuple[int, int, int]

WHITE: Color = (255, 255, 255)
BLACK: Color = (0, 0, 0)
GRID: Color = (225, 225, 225)
OUTCOME_COLORS: dict[str, Color] = {"ok": (40, 90, 200), "fail": (215, 40, 40),
                                    "info": (240, 150, 0)}
FAULT_COLORS: dict[str, Color] = {"kill": (255, 205, 205), "pause": (225, 210, 250),
                                  "partition": (255, 240, 180), "slow": (200, 240, 245),
                                  "torn": (235, 215, 190), "membership": (205, 235, 205)}
RECOVERY_COLOR: Color = (236, 236, 236)

# 5x7 glyphs: seven rows of five bits, most significant bit on the left.
_FONT: dict[str, tuple[int, ...]] = {
    "0": (14, 17, 19, 21, 25, 17, 14), "1": (4, 12, 4, 4, 4, 4, 14),
    "2": (14, 17, 1, 2, 4, 8, 31), "3": (31, 2, 4, 2, 1, 17, 14),
    "4": (2, 6, 10, 18, 31, 2, 2), "5": (31, 16, 30, 1, 1, 17, 14),
    "6": (6, 8, 16, 30, 17, 17, 14), "7": (31, 1, 2, 4, 8, 8, 8),
    "8": (14, 17, 17, 14, 17, 17, 14), "9": (14, 17, 17, 15, 1, 2, 12),
    "A": (14, 17, 17, 31, 17, 17, 17), "B": (30, 17, 17, 30, 17, 17, 30),
    "C": (14, 17, 16, 16, 16, 17, 14), "D": (28, 18, 17, 17, 17, 18, 28),
    "E": (31, 16, 16, 30, 16, 16, 31), "F": (31, 16, 16, 30, 16, 16, 16),
    "G": (14, 17, 16, 23, 17, 17, 15), "H": (17, 17, 17, 31, 17, 17, 17),
    "I": (14, 4, 4, 4, 4, 4, 14), "J": (7, 2, 2, 2, 2, 18, 12),
    "K": (17, 18, 20, 24, 20, 18, 17), "L": (16, 16, 16, 16, 16, 16, 31),
    "M": (17, 27, 21, 21, 17, 17, 17), "N": (17, 17, 25, 21, 19, 17, 17),
    "O": (14, 17, 17, 17, 17, 17, 14), "P": (30, 17, 17, 30, 16, 16, 16),
    "Q": (14, 17, 17, 17, 21, 18, 13), "R": (30, 17, 17, 30, 20, 18, 17),
    "S": (15, 16, 16, 14, 1, 1, 30), "T": (31, 4, 4, 4, 4, 4, 4),
    "U": (17, 17, 17, 17, 17, 17, 14), "V": (17, 17, 17, 17, 17, 10, 4),
    "W": (17, 17, 17, 21, 21, 21, 10), "X": (17, 17, 10, 4, 10, 17, 17),
    "Y": (17, 17, 17, 10, 4, 4, 4), "Z": (31, 1, 2, 4, 8, 16, 31),
    " ": (0, 0, 0, 0, 0, 0, 0), ".": (0, 0, 0, 0, 0, 12, 12),
    ":": (0, 12, 12, 0, 12, 12, 0), "-": (0, 0, 0, 31, 0, 0, 0),
    "/": (0, 1, 2, 4, 8, 16, 0), "%": (24, 25, 2, 4, 8, 19, 3),
    "(": (2, 4, 8, 8, 8, 4, 2), ")": (8, 4, 2, 2, 2, 4, 8),
    "+": (0, 4, 4, 31, 4, 4, 0), "_": (0, 0, 0, 0, 0, 0, 31),
    ">": (8, 4, 2, 1, 2, 4, 8), ",": (0, 0, 0, 0, 12, 4, 8),
    "=": (0, 0, 31, 0, 31, 0, 0), "|": (4, 4, 4, 4, 4, 4, 4),
}


class Canvas:
    """An RGB image in memory with the few drawing operations the timeline needs."""

    def __init__(self, width: int, height: int, background: Color = WHITE):
        self.width = width
        self.height = height
        self.pixels = bytearray(bytes(background) * (width * height))

    def point(self, x: int, y: int, color: Color) -> None:
        if 0 <= x < self.width and 0 <= y < self.height:
            i = 3 * (y * self.width + x)
            self.pixels[i:i + 3] = bytes(color)

    def rect(self, x0: int, y0: int, x1: int, y1: int, color: Color) -> None:
        """Fill ``[x0, x1) x [y0, y1)`` (clipped)."""
        x0, x1 = max(0, min(x0, x1)), min(self.width, max(x0, x1))
        y0, y1 = max(0, min(y0, y1)), min(self.height, max(y0, y1))
        if x0 >= x1:
            return
        row = bytes(color) * (x1 - x0)
        for y in range(y0, y1):
            i = 3 * (y * self.width + x0)
            self.pixels[i:i + len(row)] = row

    def line(self, x0: int, y0: int, x1: int, y1: int, color: Color) -> None:
        """Bresenham's line, both ends included."""
        dx, dy = abs(x1 - x0), -abs(y1 - y0)
        sx, sy = (1 if x0 < x1 else -1), (1 if y0 < y1 else -1)
        err = dx + dy
        while True:
            self.point(x0, y0, color)
            if x0 == x1 and y0 == y1:
                return
            e2 = 2 * err
            if e2 >= dy:
                err += dy
                x0 += sx
            if e2 <= dx:
                err += dx
                y0 += sy

    def text(self, x: int, y: int, text: str, color: Color = BLACK, scale: int = 1) -> int:
        """Draw ``text`` with its top-left corner at (x, y); returns the x after it.
        Letters are upper-cased; characters without a glyph show as blanks."""
        for ch in text.upper():
            rows = _FONT.get(ch, _FONT[" "])
            for r, bits in enumerate(rows):
                for c in range(5):
                    if bits & (16 >> c):
                        self.rect(x + c * scale, y + r * scale, x + (c + 1) * scale,
                                  y + (r + 1) * scale, color)
            x += 6 * scale
        return x

    def png(self) -> bytes:
        """The image as PNG bytes (8-bit RGB, no filtering)."""
        stride = 3 * self.width
        raw = b"".join(b"\x00" + bytes(self.pixels[y * stride:(y + 1) * stride])
                       for y in range(self.height))

        def chunk(kind: bytes, data: bytes) -> bytes:
            return (struct.pack(">I", len(data)) + kind + data
                    + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))

        header = struct.pack(">IIBBBBB", self.width, self.height, 8, 2, 0, 0, 0)
        return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
                + chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


def fault_color(kind: str) -> Color:
    """The shade of a fault window: by family (kill, pause, partition, slow, torn)."""
    return FAULT_COLORS.get(kind.split("-", 1)[0], (230, 230, 230))


def _operations(history: Iterable[dict[str, Any]]) -> list[tuple[float, float, str]]:
    """(completion time, latency in s, outcome) of every completed operation."""
    started: dict[Any, float] = {}
    ops = []
    for rec in history:
        if rec["type"] == "invoke":
            started[rec["process"]] = rec["time"]
        elif rec["process"] in started:
            ops.append((rec["time"], rec["time"] - started.pop(rec["process"]), rec["type"]))
    return ops


def _nice_step(span: float, ticks: int) -> float:
    raw = span / max(1, ticks)
    power = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1
    for m in (1, 2, 5, 10):
        if raw <= m * power:
            return m * power
    return 10 * power


def render_timeline(history: list[dict[str, Any]], faults: list[dict[str, Any]],
                    path: Path, title: str = "", width: int = 1400,
                    height: int = 720) -> None:
    """Draw the run's latency and throughput with the fault windows shaded; write a
    PNG to ``path``."""
    ops = _operations(history)
    t_end = max([t for t, _, _ in ops] + [f.get("recovered") or f.get("end") or 0
                                           for f in faults] + [1.0])
    canvas = Canvas(width, height)
    left, right = 70, width - 20
    lat_top, lat_bottom = 60, int(height * 0.54)
    tp_top, tp_bottom = lat_bottom + 50, height - 50

    def x_of(t: float) -> int:
        return left + int((right - left) * t / t_end)

    lat_lo, lat_hi = -1.0, 4.0  # log10 of milliseconds: 0.1 ms .. 10 s

    def y_lat(latency_s: float) -> int:
        v = math.log10(max(latency_s * 1000.0, 10 ** lat_lo))
        v = min(v, lat_hi)
        return lat_bottom - int((lat_bottom - lat_top) * (v - lat_lo) / (lat_hi - lat_lo))

    # Fault windows first, so everything else draws over them. Labels go in three rows
    # above the panel, each where it does not overlap the previous one of its row; a
    # label with no room is left out (the colour still tells the family).
    label_ends = [0, 0, 0]
    for f in faults:
        end = f.get("end") if f.get("end") is not None else t_end
        for top, bottom in ((lat_top, lat_bottom), (tp_top, tp_bottom)):
            canvas.rect(x_of(f["start"]), top, max(x_of(end), x_of(f["start"]) + 1),
                        bottom, fault_color(f["kind"]))
            if f.get("recovered") is not None:
                canvas.rect(x_of(end), top, x_of(f["recovered"]), bottom, RECOVERY_COLOR)
        x = x_of(f["start"]) + 1
        for row, free_at in enumerate(label_ends):
            if x >= free_at:
                label_ends[row] = x + 6 * len(f["kind"]) + 4
                canvas.text(x, lat_top - 10 - 9 * row, f["kind"], BLACK)
                break

    # Grid and axes.
    step = _nice_step(t_end, 12)
    t = 0.0
    while t <= t_end:
        x = x_of(t)
        for top, bottom in ((lat_top, lat_bottom), (tp_top, tp_bottom)):
            canvas.line(x, top, x, bottom, GRID)
        canvas.text(x - 6, tp_bottom + 6, f"{t:g}")
        t += step
    for exp in range(int(lat_lo), int(lat_hi) + 1):
        y = y_lat(10 ** exp / 1000.0)
        canvas.line(left, y, right, y, GRID)
        canvas.text(8, y - 3, f"{10 ** exp:g}MS" if exp >= 0 else "0.1MS")
    for top, bottom in ((lat_top, lat_bottom), (tp_top, tp_bottom)):
        canvas.line(left, top, left, bottom, BLACK)
        canvas.line(left, bottom, right, bottom, BLACK)

    # Latency dots: ok first, so failures and unknowns stay visible on top.
    for outcome in ("ok", "fail", "info"):
        color = OUTCOME_COLORS[outcome]
        for t, latency, o in ops:
            if o == outcome:
                x, y = x_of(t), y_lat(latency)
                canvas.rect(x, y, x + 2, y + 2, color)

    # Throughput: completions per second by outcome.
    buckets = int(math.ceil(t_end)) + 1
    counts = {o: [0] * buckets for o in OUTCOME_COLORS}
    for t, _, o in ops:
        counts[o][int(t)] += 1
    peak = max([max(c) for c in counts.values()] + [1])
    tp_step = _nice_step(peak, 4)
    v = 0.0
    while v <= peak:
        y = tp_bottom - int((tp_bottom - tp_top) * v / peak)
        canvas.line(left + 1, y, right, y, GRID)
        canvas.text(8, y - 3, f"{v:g}")
        v += tp_step
    for outcome, series in counts.items():
        color = OUTCOME_COLORS[outcome]
        prev = None
        for second, n in enumerate(series):
            point = (x_of(second + 0.5), tp_bottom - int((tp_bottom - tp_top) * n / peak))
            if prev is not None:
                canvas.line(*prev, *point, color)
            prev = point

    # Titles and legend.
    canvas.text(left, 8, title, BLACK, scale=2)
    canvas.text(left, lat_bottom + 8, "latency per operation (log scale)")
    canvas.text(left, tp_bottom + 20, "operations completed per second; time in seconds")
    x = right - 500
    for outcome, label in (("ok", "ok"), ("fail", "fail"), ("info", "unknown")):
        canvas.rect(x, 12, x + 8, 20, OUTCOME_COLORS[outcome])
        x = canvas.text(x + 12, 13, label) + 12
    for family in FAULT_COLORS:
        canvas.rect(x, 12, x + 8, 20, FAULT_COLORS[family])
        x = canvas.text(x + 12, 13, family) + 10
    Path(path).write_bytes(canvas.png())
