"""Progress of a backfill: studies done, studies per hour, data moved, time left.

On a terminal it is a ``tqdm`` bar; in a service (systemd's journal, a log
file) a log line every ``log_seconds`` instead, with the same figures.
"""

from __future__ import annotations

import logging
import sys
import time
from typing import IO, Any

__all__ = ["Progress"]

logger = logging.getLogger(__name__)


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 3600:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


class Progress:
    """Count finished studies and report the rate.

    Parameters
    ----------
    total : int
        Studies to do in this run.
    stream : file, optional
        Where a bar goes (default ``sys.stderr``); a bar only on a terminal.
    log_seconds : float
        Interval of log lines when there is no bar.
    """

    def __init__(self, total: int, *, stream: IO[str] | None = None, log_seconds: float = 60.0):
        self.total = total
        self.done = 0
        self.bytes = 0
        self.instances = 0
        self.started = time.monotonic()
        self.paused = 0.0
        self._stream = stream or sys.stderr
        self._log_seconds = log_seconds
        self._last_log = self.started
        self._bar: Any = None
        if self._stream.isatty() and total:
            from tqdm import tqdm

            self._bar = tqdm(
                total=total,
                unit="study",
                file=self._stream,
                dynamic_ncols=True,
                bar_format=(
                    "{l_bar}{bar}| {n_fmt}/{total_fmt} studies [{elapsed}<{remaining}{postfix}]"
                ),
            )

    @property
    def studies_per_hour(self) -> float:
        """Studies finished per hour of running (pauses outside the window excluded)."""
        running = time.monotonic() - self.started - self.paused
        return self.done / running * 3600 if running > 0 else 0.0

    @property
    def eta_seconds(self) -> float | None:
        """Running time left at the current rate, or None before the first study."""
        rate = self.studies_per_hour
        return (self.total - self.done) / rate * 3600 if rate > 0 else None

    def describe(self) -> str:
        """``12/40 studies, 85 studies/h, 310 MB, about 20 min left``."""
        eta = self.eta_seconds
        return (
            f"{self.done}/{self.total} studies, {self.studies_per_hour:.0f} studies/h, "
            f"{self.instances} instances, {self.bytes / 1e6:.0f} MB"
            + (
                f", about {_duration(eta)} left"
                if eta is not None and self.done < self.total
                else ""
            )
        )

    def study_done(self, instances: int, nbytes: int, *, paused: float = 0.0) -> None:
        """One study finished (fetched, or known already)."""
        self.done += 1
        self.instances += instances
        self.bytes += nbytes
        self.paused = paused
        if self._bar is not None:
            self._bar.set_postfix_str(
                f"{self.studies_per_hour:.0f} studies/h, {self.bytes / 1e6:.0f} MB", refresh=False
            )
            self._bar.update(1)
        elif time.monotonic() - self._last_log >= self._log_seconds or self.done == self.total:
            self._last_log = time.monotonic()
            logger.info("backfill: %s", self.describe())

    def close(self) -> None:
        """End the bar."""
        if self._bar is not None:
            self._bar.close()
