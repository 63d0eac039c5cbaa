"""Pacing of a backfill: an off-peak window and a bandwidth limit, both interruptible.

A backfill runs beside a PACS that serves radiologists: it may only take the
archive's time at night (``--window 22:00-06:00``: outside it the run
pauses, and goes on when the window opens again) and only so much of its
bandwidth (``--max-mb-per-s``). Every wait ends at once when the run is
asked to stop (SIGTERM), so a stopped backfill never sits out a pause.
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["OffPeakWindow", "Pacing", "Stopped"]

logger = logging.getLogger(__name__)


class Stopped(Exception):
    """The run was asked to stop while waiting."""


@dataclass(frozen=True)
class OffPeakWindow:
    """Hours of the day when the backfill may run, e.g. ``22:00-06:00`` (crossing midnight)."""

    start: datetime.time
    end: datetime.time

    @classmethod
    def parse(cls, text: str) -> OffPeakWindow:
        """Parse ``HH:MM-HH:MM``.

        Raises
        ------
        ValueError
            Not two times of day, or both the same.
        """
        try:
            first, second = text.split("-")
            start = datetime.time.fromisoformat(first.strip())
            end = datetime.time.fromisoformat(second.strip())
        except ValueError as exc:
            raise ValueError(f"window {text!r} is not HH:MM-HH:MM (e.g. 22:00-06:00)") from exc
        if start == end:
            raise ValueError(f"window {text!r} is empty; leave --window out to run at any time")
        return cls(start, end)

    def is_open(self, now: datetime.datetime) -> bool:
        """True if ``now`` (local time) falls inside the window."""
        moment = now.time()
        if self.start < self.end:
            return self.start <= moment < self.end
        return moment >= self.start or moment < self.end

    def seconds_until_open(self, now: datetime.datetime) -> float:
        """Seconds from ``now`` to the next opening (0 when open)."""
        if self.is_open(now):
            return 0.0
        opening = datetime.datetime.combine(now.date(), self.start, tzinfo=now.tzinfo)
        if opening <= now:
            opening += datetime.timedelta(days=1)
        return (opening - now).total_seconds()

    def __str__(self) -> str:
        return f"{self.start:%H:%M}-{self.end:%H:%M}"


class Pacing:
    """Waits that keep a backfill inside its window and under its byte rate.

    Thread-safe: parallel downloads share one budget.

    Parameters
    ----------
    window : OffPeakWindow, optional
        None: run at any time.
    max_bytes_per_second : float, optional
        None or 0: no limit.
    stop : threading.Event
        Set to end every wait (:class:`Stopped` is raised).
    now : callable
        Local wall-clock time (tests move it).
    monotonic : callable
        Seconds for rate accounting.
    """

    def __init__(
        self,
        *,
        window: OffPeakWindow | None = None,
        max_bytes_per_second: float | None = None,
        stop: threading.Event | None = None,
        now: Callable[[], datetime.datetime] = datetime.datetime.now,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window = window
        self.rate = max_bytes_per_second or None
        self.stop = stop or threading.Event()
        self._now = now
        self._monotonic = monotonic
        self._lock = threading.Lock()
        self._next_free = 0.0  # monotonic time at which the byte budget is free again
        self.paused_seconds = 0.0
        """Time spent outside the window (for the studies/hour figure)."""

    def _wait(self, seconds: float) -> None:
        if self.stop.wait(seconds):
            raise Stopped

    def check(self) -> None:
        """Raise :class:`Stopped` if the run was asked to stop."""
        if self.stop.is_set():
            raise Stopped

    def wait_for_window(self) -> None:
        """Return at once inside the window; otherwise pause until it opens."""
        self.check()
        if self.window is None:
            return
        seconds = self.window.seconds_until_open(self._now())
        if seconds <= 0:
            return
        logger.info(
            "outside the window %s: pausing %.0f min (until %s)",
            self.window,
            seconds / 60,
            f"{self.window.start:%H:%M}",
        )
        started = self._monotonic()
        while seconds > 0:
            self._wait(min(seconds, 60.0))  # re-read the clock: suspend, DST
            seconds = self.window.seconds_until_open(self._now())
        self.paused_seconds += self._monotonic() - started
        logger.info("window %s open: going on", self.window)

    def spend(self, nbytes: int) -> None:
        """Account ``nbytes`` just transferred; wait as long as the rate limit asks."""
        self.check()
        if self.rate is None or nbytes <= 0:
            return
        with self._lock:
            now = self._monotonic()
            start = max(now, self._next_free)
            self._next_free = start + nbytes / self.rate
            delay = self._next_free - now
        if delay > 0:
            self._wait(delay)
