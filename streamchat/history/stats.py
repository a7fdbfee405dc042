"""Distributions of stream figures (time to first token, tokens/s): percentiles and histograms.

Pure functions over lists of numbers, so ``streamchat stats``, the TUI and the tests compute the same
figures. Percentiles interpolate linearly between the closest ranks (numpy's default), so the median
of two values is their mean and p95 of a handful of values is not simply the largest one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable

__all__ = ["Bin", "Distribution", "bars", "format_rate", "format_seconds", "histogram", "percentile"]


def percentile(values: Iterable[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``values`` (at least one value)."""
    data = sorted(values)
    if not data:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} is not within 0..100")
    pos = (len(data) - 1) * q / 100
    low = math.floor(pos)
    high = min(low + 1, len(data) - 1)
    return data[low] + (data[high] - data[low]) * (pos - low)


@dataclass(frozen=True, slots=True)
class Distribution:
    """Summary of one figure over many streams."""

    count: int
    median: float
    p95: float
    low: float
    high: float

    @classmethod
    def of(cls, values: Iterable[float]) -> "Distribution | None":
        """None when there are no values (a model that never produced a first token)."""
        data = sorted(v for v in values if v is not None and math.isfinite(v))
        if not data:
            return None
        return cls(len(data), percentile(data, 50), percentile(data, 95), data[0], data[-1])


@dataclass(frozen=True, slots=True)
class Bin:
    """``low <= value < high`` (the last bin includes ``high``)."""

    low: float
    high: float
    count: int


def histogram(values: Iterable[float], bins: int = 8) -> list[Bin]:
    """Counts of ``values`` in ``bins`` equal bins — equal on a log scale when the values are all
    positive and span more than a factor of 10 (times and rates usually do: a linear scale would
    put almost everything in the first bin)."""
    data = sorted(v for v in values if v is not None and math.isfinite(v))
    if not data:
        return []
    lo, hi = data[0], data[-1]
    if hi == lo:
        return [Bin(lo, hi, len(data))]
    log = lo > 0 and hi / lo > 10
    if log:
        a, b = math.log(lo), math.log(hi)
        edges = [math.exp(a + (b - a) * i / bins) for i in range(bins + 1)]
    else:
        edges = [lo + (hi - lo) * i / bins for i in range(bins + 1)]
    edges[0], edges[-1] = lo, hi  # exact ends, whatever exp/log rounding did
    counts = [0] * bins
    for v in data:
        i = bins - 1
        for k in range(bins):
            if v < edges[k + 1]:
                i = k
                break
        counts[i] += 1
    return [Bin(edges[i], edges[i + 1], counts[i]) for i in range(bins)]


BAR_WIDTH = 32


def format_seconds(value: float) -> str:
    return f"{value * 1000:.0f} ms" if value < 1 else f"{value:.2f} s"


def format_rate(value: float) -> str:
    return f"{value:,.0f}" if value >= 100 else f"{value:.1f}"


def bars(bins: list[Bin], fmt: Callable[[float], str], width: int = BAR_WIDTH) -> list[str]:
    """A histogram as text lines: ``  lo – hi │████▌ n``."""
    if not bins:
        return []
    most = max(b.count for b in bins)
    labels = [f"{fmt(b.low)} – {fmt(b.high)}" for b in bins]
    pad = max(len(label) for label in labels)
    eighths = " ▏▎▍▌▋▊▉"
    lines = []
    for label, b in zip(labels, bins):
        units = b.count / most * width * 8 if most else 0
        full, part = divmod(round(units), 8)
        bar = "█" * full + (eighths[part] if part else "")
        if b.count and not bar:
            bar = "▏"
        lines.append(f"  {label:>{pad}} │{bar} {b.count}")
    return lines
