"""A log-linear (HDR-style) latency histogram in integer microseconds.

Values below ``2**sub_bucket_bits`` get a bucket each; above, every power of two is cut
into ``2**(sub_bucket_bits - 1)`` equal buckets, so a reported percentile is never off
by more than ``2**-(sub_bucket_bits - 1)`` of its value (1.6 % with the default 7 bits)
whatever the range, in a few hundred buckets at most. Counts are kept sparse (a dict),
histograms from several load-generator processes merge by adding counts, and the exact
minimum, maximum and sum are kept beside the buckets.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator

sub_bucket_bits_default = 7


class Histogram:
    """Counts of non-negative integer values (microseconds, by convention)."""

    __slots__ = ("sub_bucket_bits", "_half", "_linear", "counts", "count", "total",
                 "min", "max")

    def __init__(self, sub_bucket_bits: int = sub_bucket_bits_default):
        if not 2 <= sub_bucket_bits <= 16:
            raise ValueError(f"sub_bucket_bits must be 2..16, not {sub_bucket_bits}")
        self.sub_bucket_bits = sub_bucket_bits
        self._linear = 1 << sub_bucket_bits  # values below this are exact
        self._half = self._linear >> 1
        self.counts: dict[int, int] = {}
        self.count = 0
        self.total = 0  # sum of the recorded values (for the mean)
        self.min = 0
        self.max = 0

    # -- recording ----------------------------------------------------------------------

    def index(self, value: int) -> int:
        """The bucket of ``value``."""
        if value < self._linear:
            return value
        shift = value.bit_length() - self.sub_bucket_bits
        return shift * self._half + (value >> shift)

    def bounds(self, index: int) -> tuple[int, int]:
        """The smallest and largest value bucket ``index`` holds."""
        if index < self._linear:
            return index, index
        shift = index // self._half - 1
        sub = index - shift * self._half
        return sub << shift, ((sub + 1) << shift) - 1

    def record(self, value: int, times: int = 1) -> None:
        """Count ``value`` (``times`` times); negative values count as 0."""
        if value < 0:
            value = 0
        i = self.index(value)
        self.counts[i] = self.counts.get(i, 0) + times
        if not self.count or value < self.min:
            self.min = value
        if value > self.max:
            self.max = value
        self.count += times
        self.total += value * times

    def record_many(self, values: Iterable[int]) -> None:
        """Count every value of ``values``."""
        for value in values:
            self.record(value)

    def merge(self, other: Histogram) -> None:
        """Add ``other``'s counts (same ``sub_bucket_bits``) to this one."""
        if other.sub_bucket_bits != self.sub_bucket_bits:
            raise ValueError("cannot merge histograms of different precision")
        if not other.count:
            return
        counts = self.counts
        for i, n in other.counts.items():
            counts[i] = counts.get(i, 0) + n
        self.min = other.min if not self.count else min(self.min, other.min)
        self.max = max(self.max, other.max)
        self.count += other.count
        self.total += other.total

    # -- reading ------------------------------------------------------------------------

    def percentile(self, p: float) -> int:
        """The value at or below which ``p`` percent of the recorded values lie (the
        upper end of its bucket, never above the exact maximum); 0 when empty."""
        if not self.count:
            return 0
        if not 0 <= p <= 100:
            raise ValueError(f"percentile must be 0..100, not {p}")
        if p == 100:
            return self.max
        rank = max(1, math.ceil(self.count * p / 100.0))
        seen = 0
        for i in sorted(self.counts):
            seen += self.counts[i]
            if seen >= rank:
                return min(self.bounds(i)[1], self.max)
        return self.max

    def mean(self) -> float:
        """The exact mean (0.0 when empty)."""
        return self.total / self.count if self.count else 0.0

    def summary_ms(self) -> dict[str, float]:
        """p50, p90, p99, p99.9, max, min and mean in milliseconds."""
        def ms(us: float) -> float:
            return round(us / 1000.0, 3)
        return {"p50": ms(self.percentile(50)), "p90": ms(self.percentile(90)),
                "p99": ms(self.percentile(99)), "p99.9": ms(self.percentile(99.9)),
                "max": ms(self.max), "min": ms(self.min), "mean": ms(self.mean())}

    def buckets(self) -> Iterator[tuple[int, int, int]]:
        """``(low, high, count)`` of every non-empty bucket, ascending."""
        for i in sorted(self.counts):
            low, high = self.bounds(i)
            yield low, high, self.counts[i]

    # -- (de)serialization ----------------------------------------------------------------

    def to_dict(self) -> dict:
        """Plain data (for JSON, or a pipe between processes)."""
        return {"unit": "us", "sub_bucket_bits": self.sub_bucket_bits, "count": self.count,
                "sum": self.total, "min": self.min, "max": self.max,
                "counts": {str(i): n for i, n in sorted(self.counts.items())}}

    @classmethod
    def from_dict(cls, data: dict) -> Histogram:
        """The inverse of ``to_dict``."""
        h = cls(int(data.get("sub_bucket_bits", sub_bucket_bits_default)))
        h.counts = {int(i): int(n) for i, n in data.get("counts", {}).items()}
        h.count = int(data.get("count", sum(h.counts.values())))
        h.total = int(data.get("sum", 0))
        h.min = int(data.get("min", 0))
        h.max = int(data.get("max", 0))
        return h
