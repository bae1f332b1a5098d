"""Progress of long runs: samples done of a total, a rate, an ETA, and messages at most so often.

A batch (one process or Ray workers) reports through a :data:`BatchProgress` callback; a
:class:`Meter` computes what it passes, and :func:`printer` turns the calls into the CLI's
throttled lines. Never imports torch, FiftyOne or Streamlit.
"""
from __future__ import annotations

import time
from collections.abc import Callable

# progress(done, total, rate in samples per second, eta in seconds or None, message)
BatchProgress = Callable[[int, int, float, "float | None", str], None]

FINAL_MESSAGES = ("finished", "cancelled")  # a printer never holds these back


class Throttle:
    """Says yes at most once per `interval` seconds; a forced call always passes (and counts)."""

    def __init__(self, interval: float, clock: Callable[[], float] = time.perf_counter) -> None:
        self.interval = float(interval)
        self.clock = clock
        self.last = float("-inf")

    def due(self, force: bool = False) -> bool:
        now = self.clock()
        if not force and now - self.last < self.interval:
            return False
        self.last = now
        return True


class Meter:
    """Rate and ETA from the work done since :meth:`start`, passed on to a BatchProgress callback.

    Work is counted in units that come before whole samples (a batch counts heatmaps, and
    fractions of slow ones), so a rate and an ETA exist before the first sample is written;
    ``unit`` converts units to samples for the rate."""

    def __init__(self, report: BatchProgress | None, interval: float = 0.0, started: float | None = None) -> None:
        self.report = report
        self.throttle = Throttle(interval)
        self.started = time.perf_counter() if started is None else started  # a time.perf_counter()

    def start(self) -> None:
        self.started = time.perf_counter()

    def tell(self, done: int, total: int, message: str, *, worked: float | None = None,
             left: float | None = None, unit: float = 1.0, force: bool = True) -> None:
        """Report `done` of `total` samples. worked / left: units of work done and still to do
        (default: samples, done and total - done); unit: samples per unit of work."""
        if self.report is None or not self.throttle.due(force):
            return
        worked = float(done if worked is None else worked)
        left = float(total - done if left is None else left)
        elapsed = time.perf_counter() - self.started
        per_second = worked / elapsed if worked and elapsed > 0 else 0.0  # units per second
        rate = per_second * unit
        eta = left / per_second if per_second > 0 else None
        self.report(done, total, rate, eta, message)


def duration(seconds: float) -> str:
    """A wait as people say it: "40 s", "12 min", "3.5 h"."""
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def eta_text(seconds: float | None, estimate: bool = False) -> str:
    """The one way every progress text says the time left: "ETA 40 s", "ETA 5.8 h" (never
    "348.8 min"), "ETA ?" when unknown; estimate: a guess made before any work was measured."""
    if seconds is None:
        return "ETA ?"
    return f"ETA {duration(max(0.0, seconds))}" + (" (estimate)" if estimate else "")


def rate_line(done: int, total: int, started: float, noun: str = "samples") -> str:
    """``16 of 50 samples · 0.35/s · ETA 1 min`` from the work done since `started`
    (a time.perf_counter()); no rate before the first one is done."""
    elapsed = time.perf_counter() - started
    said = f"{done:,} of {total:,} {noun}"
    if done <= 0 or elapsed <= 0:
        return said
    rate = done / elapsed
    return f"{said} · {rate:.2f}/s · {eta_text((total - done) / rate)}"


def line(done: int, total: int, rate: float, eta: float | None, message: str) -> str:
    """``done/total (rate/s, ETA n s): message``, the CLI's progress line: counts as 24,792, the ETA
    as :func:`eta_text` says it, like the Batch page and the App's runs."""
    return f"{done:,}/{total:,} ({rate:.2f}/s, {eta_text(eta)}): {message}"


def printer(write: Callable[[str], None], interval: float = 1.0) -> BatchProgress:
    """A BatchProgress callback that writes :func:`line` at most every `interval` seconds; calls with
    nothing done yet and the final ones ("finished", "cancelled") are always written."""
    throttle = Throttle(interval)

    def progress(done: int, total: int, rate: float, eta: float | None, message: str) -> None:
        if throttle.due(force=not done or message in FINAL_MESSAGES):
            write(line(done, total, rate, eta, message))

    return progress
