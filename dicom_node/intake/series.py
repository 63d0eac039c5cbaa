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
        Called with each newly completed series UID.
    on_tick : callable, optional
        Called every ``tick_seconds`` (the node queues completed series that
        another process, such as ``dicom-node reindex``, put back).
    """

    def __init__(
        self,
        catalog: Catalog,
        idle_seconds: float,
        interval: float,
        on_complete: Callable[[str], object],
        *,
        on_tick: Callable[[], object] | None = None,
        tick_seconds: float = 30.0,
    ) -> None:
        self._catalog = catalog
        self._idle = idle_seconds
        self._interval = interval
        self._on_complete = on_complete
        self._on_tick = on_tick
        self._tick_seconds = tick_seconds
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
        last_tick = time.monotonic()
        while not self._stop.wait(self._interval):
            try:
                for uid in complete_idle_series(self._catalog, self._idle):
                    self._on_complete(uid)
                if self._on_tick is not None and time.monotonic() - last_tick >= self._tick_seconds:
                    last_tick = time.monotonic()
                    self._on_tick()
            except Exception:  # noqa: BLE001 - the watcher must outlive a bad check
                logger.exception("series completion check failed; retrying")
