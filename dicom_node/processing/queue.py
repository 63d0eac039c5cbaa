"""Workers: threads that claim due jobs from the catalog and run them.

The same loop runs inside ``dicom-node serve`` (``worker.threads``) and as
``dicom-node worker`` on other machines: each thread claims the next due job
(:meth:`dicom_node.processing.jobs.JobRunner.claim_next`), and while it
computes that one it has already claimed the next and reads it in a reader
thread (``worker.read_ahead``), so the files of one series are read while
the previous one is computed. With nothing due a thread waits
``worker.poll_seconds``, or less when :meth:`Workers.wake` is called (the
node's series watcher does when a series completes). One more thread renews
the leases of everything this process holds, every third of
``worker.lease_seconds``; a process that stops renewing (killed, frozen,
cut off) loses its jobs to other workers when the leases run out.
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

from dicom_node.processing.jobs import JobRunner, SeriesJob
from storage.catalog import Claim

__all__ = ["Workers"]

logger = logging.getLogger(__name__)


@dataclass
class _Claimed:
    """A claimed job, and its series being read ahead."""

    claim: Claim
    job: SeriesJob
    reading: Future[None] | None


class Workers:
    """Threads claiming and running jobs, and the thread renewing their leases.

    Parameters
    ----------
    runner : JobRunner
    threads : int
        Worker threads; 0 runs nothing (a node that only receives and answers).
    poll_seconds : float
        Wait between two looks at the catalog when nothing is due.
    read_ahead : bool
        Claim and read the next series while computing the current one.
    """

    def __init__(
        self, runner: JobRunner, threads: int, *, poll_seconds: float, read_ahead: bool
    ) -> None:
        self.runner = runner
        self.poll_seconds = poll_seconds
        self.read_ahead = read_ahead
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._threads = [
            threading.Thread(target=self._loop, name=f"dicom-node-worker-{i}", daemon=True)
            for i in range(threads)
        ]
        if self._threads:
            self._threads.append(
                threading.Thread(target=self._renew, name="dicom-node-leases", daemon=True)
            )

    def start(self) -> None:
        """Start the worker threads and the lease renewal."""
        for thread in self._threads:
            thread.start()

    def wake(self, *_: object) -> None:
        """Look at the catalog now rather than at the next poll (a series completed)."""
        self._wake.set()

    def stop(self, timeout: float = 30.0) -> None:
        """Let running steps finish, give back claims read ahead, and stop the threads."""
        self._stopping.set()
        self._wake.set()
        for thread in self._threads:
            if thread.is_alive():
                thread.join(timeout)

    def _claim(self, reader: ThreadPoolExecutor | None) -> _Claimed | None:
        try:
            claim = self.runner.claim_next()
        except Exception:  # noqa: BLE001 - the catalog may be down for a while
            logger.exception("claiming work failed; trying again in %.0f s", self.poll_seconds)
            return None
        if claim is None:
            return None
        job = SeriesJob(claim.series_instance_uid)
        reading = None if reader is None else reader.submit(self.runner.prepare, claim, job)
        return _Claimed(claim, job, reading)

    def _loop(self) -> None:
        reader = (
            ThreadPoolExecutor(1, thread_name_prefix="dicom-node-reader")
            if self.read_ahead
            else None
        )
        ahead: _Claimed | None = None
        try:
            while not self._stopping.is_set():
                current = ahead or self._claim(reader)
                ahead = None
                if current is None:
                    self._wake.wait(self.poll_seconds)
                    self._wake.clear()
                    continue
                if current.reading is not None:
                    # A failed read is read again by the step itself, which
                    # turns the error into the series' outcome.
                    current.reading.exception()
                if self.read_ahead and not self._stopping.is_set():
                    ahead = self._claim(reader)
                try:
                    self.runner.run_claimed(current.claim, current.job)
                except Exception:  # noqa: BLE001 - a worker thread must survive any job
                    logger.exception(
                        "processing series %s failed", current.claim.series_instance_uid
                    )
        finally:
            if ahead is not None:
                if ahead.reading is not None:
                    ahead.reading.exception()
                try:
                    self.runner.release(ahead.claim)
                except Exception:  # noqa: BLE001 - the lease runs out instead
                    logger.exception(
                        "could not give back series %s", ahead.claim.series_instance_uid
                    )
            if reader is not None:
                reader.shutdown()

    def _renew(self) -> None:
        interval = self.runner.lease_seconds / 3
        while not self._stopping.wait(interval):
            try:
                self.runner.renew_leases()
            except Exception:  # noqa: BLE001 - renewal is retried; a lost lease is fenced
                logger.exception("renewing the job leases failed")
