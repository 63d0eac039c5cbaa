"""Worker threads: claims from the catalog, the next series read while one computes."""

from __future__ import annotations

import threading

from dicom_node.processing.jobs import JobRunner, Outcome, SeriesJob
from dicom_node.processing.queue import Workers
from storage.catalog import SeriesState
from tests.factories import instance_record
from tests.peers import wait_until


class ReadingStep:
    """Records the order of reads and runs; the first run waits for the second read."""

    name = "analysis"
    version = "v1"
    requires = SeriesState.COMPLETE
    produces = SeriesState.INDEXED
    on_error = SeriesState.FAILED

    def __init__(self, first: str, second: str, *, wait_for_second: bool) -> None:
        self.first, self.second = first, second
        self.wait_for_second = wait_for_second
        self.log: list[tuple[str, str, str]] = []
        self.second_read = threading.Event()
        self.overlapped = False

    def prepare(self, job: SeriesJob) -> None:
        self.log.append(("prepare", job.series_instance_uid, threading.current_thread().name))
        job.headers = []
        if job.series_instance_uid == self.second:
            self.second_read.set()

    def run(self, job: SeriesJob) -> Outcome:
        self.log.append(("run", job.series_instance_uid, threading.current_thread().name))
        if job.series_instance_uid == self.first and self.wait_for_second:
            self.overlapped = self.second_read.wait(30)
        return Outcome(SeriesState.INDEXED, "read" if job.headers is not None else "unread")


def _process_two_series(catalog, step: ReadingStep, *, read_ahead: bool) -> None:
    """Series 1.2.1 and 1.2.2 complete, run by one worker thread until both are indexed."""
    for at, series in ((10.0, "1.2.1"), (20.0, "1.2.2")):
        catalog.intake.record_instance(instance_record(series + ".1", series=series), now=at)
        assert catalog.workflow.complete(series, idle_before=at, now=at)
    workers = Workers(JobRunner(catalog, [step]), 1, poll_seconds=0.05, read_ahead=read_ahead)
    workers.start()
    try:
        wait_until(
            lambda: len(catalog.workflow.series_in_states([SeriesState.INDEXED])) == 2,
            what="both series indexed",
        )
    finally:
        workers.stop()


def _indexed(catalog) -> bool:
    return catalog.workflow.series_in_states([SeriesState.INDEXED]) != []


def test_the_next_series_is_read_while_the_current_one_computes(catalog) -> None:
    step = ReadingStep("1.2.1", "1.2.2", wait_for_second=True)
    _process_two_series(catalog, step, read_ahead=True)
    assert step.overlapped  # series 2 was read while series 1 was being computed
    order = [(kind, uid) for kind, uid, _ in step.log]
    assert sorted(order) == sorted(
        [("prepare", "1.2.1"), ("prepare", "1.2.2"), ("run", "1.2.1"), ("run", "1.2.2")]
    )
    assert order[0] == ("prepare", "1.2.1") and order[-1] == ("run", "1.2.2")
    readers = {thread for kind, _, thread in step.log if kind == "prepare"}
    runners = {thread for kind, _, thread in step.log if kind == "run"}
    assert readers.isdisjoint(runners)
    assert {catalog.workflow.series_state(uid) for uid in ("1.2.1", "1.2.2")} == {
        (SeriesState.INDEXED, "read")
    }


def test_without_read_ahead_the_step_reads_for_itself(catalog) -> None:
    step = ReadingStep("1.2.1", "1.2.2", wait_for_second=False)
    _process_two_series(catalog, step, read_ahead=False)
    assert [kind for kind, _, _ in step.log] == ["run", "run"]
    assert catalog.workflow.series_state("1.2.1") == (SeriesState.INDEXED, "unread")


def test_a_completed_series_wakes_the_workers_before_the_next_poll(catalog) -> None:
    step = ReadingStep("1.2.1", "1.2.2", wait_for_second=False)
    workers = Workers(JobRunner(catalog, [step]), 1, poll_seconds=3600, read_ahead=False)
    workers.start()
    try:
        catalog.intake.record_instance(instance_record("1.2.1.1", series="1.2.1"), now=10.0)
        assert catalog.workflow.complete("1.2.1", idle_before=10.0, now=10.0)
        workers.wake()
        wait_until(lambda: _indexed(catalog), timeout=20, what="the series indexed")
    finally:
        workers.stop()
