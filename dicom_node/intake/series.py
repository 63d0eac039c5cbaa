"""Series completion: a series is complete after ``idle_seconds`` without a new instance."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from storage.catalog import Catalog

__all__ = ["SeriesWatcher", "complete_idle_series"]

logger = logging.getLogger(__name__)


def complete_idle_series(
    catalog: Catalog, idle_seconds: float, *, now: float | None = None
) -> list[str]:
    """Move idle ``receiving`` series to ``complete``; return those moved.

    The transition re-checks the idle condition in the same statement, so an
    instance arriving between the query and the update keeps it receiving;
    steps that ran on the series before its new instances are due again.
    """
    now = time.time() if now is None else now
    completed = []
    for uid in catalog.workflow.due_series(idle_seconds, now=now):
        if catalog.workflow.complete(uid, idle_before=now - idle_seconds, now=now):
            logger.info("series %s complete", uid)
            completed.append(uid)
    return completed


class SeriesWatcher:
    """A thread that completes idle series and hands them on.

    Parameters
    ----------
    catalog : Catalog
    idle_seconds : float
    interval : float
        Seconds between checks.
    on_complete : callable
        Called with each newly completed series UID (the node wakes its workers).
    """

    def __init__(
        self,
        catalog: Catalog,
        idle_seconds: float,
        interval: float,
        on_complete: Callable[[str], object],
    ) -> None:
        self._catalog = catalog
        self._idle = idle_seconds
        self._interval = interval
        self._on_complete = on_complete
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="series-watcher", daemon=True)

    def start(self) -> None:
        """Start watching."""
        self._thread.start()

    def stop(self) -> None:
        """Stop watching and wait for the thread."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join()

    def _loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                for uid in complete_idle_series(self._catalog, self._idle):
                    self._on_complete(uid)
            except Exception:  # noqa: BLE001 - the watcher must outlive a bad check
                logger.exception("series completion check failed; retrying")
