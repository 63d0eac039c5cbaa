"""The embedded work queue: worker threads fed with series UIDs.

The catalog's series state and jobs are the truth; the queue only carries
work to do now, in this process. A UID already waiting is not queued twice.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

__all__ = ["EmbeddedQueue"]

logger = logging.getLogger(__name__)

_STOP = object()


class EmbeddedQueue:
    """Run ``work(series_instance_uid)`` on ``threads`` worker threads.

    Parameters
    ----------
    work : callable
        Called with one series UID; exceptions are logged and swallowed by
        the worker loop only after ``work`` itself has recorded them.
    threads : int
        Worker threads; 0 queues nothing (processing happens elsewhere).
    """

    def __init__(self, work: Callable[[str], None], threads: int = 1) -> None:
        self._work = work
        self._queue: queue.Queue[object] = queue.Queue()
        self._waiting: set[str] = set()
        self._lock = threading.Lock()
        self._threads = [
            threading.Thread(target=self._loop, name=f"dicom-node-worker-{i}", daemon=True)
            for i in range(threads)
        ]

    def start(self) -> None:
        """Start the worker threads."""
        for thread in self._threads:
            thread.start()

    def submit(self, series_instance_uid: str) -> bool:
        """Queue a series unless it is already waiting; return True if queued."""
        if not self._threads:
            return False
        with self._lock:
            if series_instance_uid in self._waiting:
                return False
            self._waiting.add(series_instance_uid)
        self._queue.put(series_instance_uid)
        return True

    def stop(self, timeout: float = 30.0) -> None:
        """Let running work finish and stop the threads."""
        for _ in self._threads:
            self._queue.put(_STOP)
        for thread in self._threads:
            if thread.is_alive():
                thread.join(timeout)

    def join(self) -> None:
        """Block until every queued item has been processed (for tests)."""
        self._queue.join()

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is _STOP:
                    return
                assert isinstance(item, str)
                with self._lock:
                    self._waiting.discard(item)
                try:
                    self._work(item)
                except Exception:  # noqa: BLE001 - a worker thread must survive any job
                    logger.exception("processing series %s failed", item)
            finally:
                self._queue.task_done()
