"""The job runner: steps in order, context handed on, failures and restarts."""

from __future__ import annotations

import os

import pytest

from dicom_node.processing.jobs import JobRunner, Outcome, SeriesJob
from storage.catalog import Catalog, JobState, SeriesState, StepKey
from tests.factories import instance_record


@pytest.fixture(autouse=True)
def complete_series(catalog: Catalog) -> None:
    """Series 1.2.3, complete, in the unit tier's catalog."""
    catalog.intake.record_instance(instance_record("1.2.3.1"), now=100.0)
    catalog.workflow.transition("1.2.3", SeriesState.COMPLETE)


class Analysis:
    name = "analysis"
    version = "v1"
    requires = SeriesState.COMPLETE
    produces = SeriesState.INDEXED
    on_error = SeriesState.FAILED

    def __init__(self, outcome: SeriesState = SeriesState.INDEXED) -> None:
        self.outcome = outcome

    def run(self, job: SeriesJob) -> Outcome:
        job.headers = ["headers read once"]  # type: ignore[list-item]
        return Outcome(self.outcome, "2 nodules")


class Results:
    name = "results"
    version = "v1"
    requires = SeriesState.INDEXED
    produces = SeriesState.REPORTED
    on_error = SeriesState.INDEXED

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.seen: list[object] = []

    def run(self, job: SeriesJob) -> Outcome:
        self.seen.append(job.headers)
        if self.fail:
            raise RuntimeError("highdicom refused")
        return Outcome(SeriesState.REPORTED, "SR kept")


def test_steps_run_in_order_and_hand_their_results_on(catalog) -> None:
    results = Results()
    job = JobRunner(catalog, [Analysis(), results]).run("1.2.3")
    assert job is not None and job.outcome == Outcome(SeriesState.REPORTED, "2 nodules; SR kept")
    assert results.seen == [["headers read once"]]
    assert catalog.workflow.series_state("1.2.3") == (SeriesState.REPORTED, "2 nodules; SR kept")
    for step in ("analysis", "results"):
        record = catalog.workflow.job("1.2.3", step, "v1")
        assert record is not None and record.state is JobState.DONE
    assert JobRunner(catalog, [Analysis(), results]).run("1.2.3") is None  # nothing to claim


def test_a_skip_stops_the_run_and_a_failing_results_step_keeps_the_series_indexed(
    catalog,
) -> None:
    results = Results()
    job = JobRunner(catalog, [Analysis(SeriesState.SKIPPED), results]).run("1.2.3")
    assert job is not None and job.outcome is not None
    assert job.outcome.state is SeriesState.SKIPPED and results.seen == []
    catalog.workflow.transition("1.2.3", SeriesState.COMPLETE)
    runner = JobRunner(catalog, [Analysis(), Results(fail=True)])
    job = runner.run("1.2.3")
    assert job is not None and job.outcome is not None
    assert job.outcome.state is SeriesState.INDEXED
    assert "results failed: RuntimeError: highdicom refused" in (job.outcome.reason or "")
    record = catalog.workflow.job("1.2.3", "results", "v1")
    assert record is not None and record.state is JobState.FAILED
    assert runner.claim_next() is None  # a failed job is not retried until reindex clears it


def test_a_job_left_by_a_dead_process_of_this_host_is_taken_over_at_start(catalog) -> None:
    analysis, results = Analysis(), Results()
    runner = JobRunner(catalog, [analysis, results])
    host, pid, _ = runner.identity.split(":")
    # The node died during the results step: the series says processing, the
    # job running, held by a process of this host that is gone.
    assert catalog.workflow.transition("1.2.3", SeriesState.INDEXED)
    dead = f"{host}:{pid}:0ldt0ken:dicom-node-worker-0"  # this pid, an earlier process
    lease = StepKey("results", "v1", SeriesState.INDEXED)
    assert catalog.workflow.claim("1.2.3", lease, worker=dead, lease_seconds=600)
    alive = f"{host}:{os.getppid()}:t:x"  # a process that runs: its job stays its own
    catalog.intake.record_instance(instance_record("1.2.4.1", series="1.2.4"), now=100.0)
    catalog.workflow.transition("1.2.4", SeriesState.INDEXED)
    assert catalog.workflow.claim("1.2.4", lease, worker=alive, lease_seconds=600)
    assert runner.recover() == 1
    job = runner.run_next()
    # Run alone after a restart, the results step gets no headers: it reads them itself.
    assert job is not None and job.outcome is not None
    assert job.outcome.state is SeriesState.REPORTED and results.seen == [None]
    assert job.outcome.reason == "SR kept"
    record = catalog.workflow.job("1.2.3", "results", "v1")
    assert record is not None and record.attempts == 2 and record.state is JobState.DONE
    assert runner.run_next() is None
    assert catalog.workflow.series_state("1.2.4")[0] is SeriesState.PROCESSING


def test_a_series_left_processing_without_a_job_goes_back_to_the_first_step(catalog) -> None:
    runner = JobRunner(catalog, [Analysis(), Results()])
    catalog.workflow.transition("1.2.3", SeriesState.PROCESSING)
    assert runner.recover() == 1
    job = runner.run_next()
    assert job is not None and job.outcome == Outcome(SeriesState.REPORTED, "2 nodules; SR kept")


def test_a_job_its_workers_died_on_too_often_is_given_up(catalog) -> None:
    runner = JobRunner(catalog, [Analysis(), Results()], max_attempts=2)
    for attempt in (1, 2):
        claim = catalog.workflow.claim_next(
            runner._keys, worker=f"gone-{attempt}", lease_seconds=3, now=100.0 * attempt
        )
        assert claim is not None and claim.attempts == attempt
    claim = catalog.workflow.claim_next(runner._keys, worker=runner.worker(), lease_seconds=60)
    assert claim is not None and claim.attempts == 3
    job = runner.run_claimed(claim)
    assert job.outcome is not None and job.outcome.state is SeriesState.FAILED
    assert "given up: claimed 2 times by workers that stopped" in (job.outcome.reason or "")


def test_a_worker_whose_job_was_taken_over_records_nothing(catalog) -> None:
    class TakenOver(Analysis):
        def run(self, job: SeriesJob) -> Outcome:
            catalog.workflow.expire([job.claim.worker])
            other = catalog.workflow.claim_next(
                [StepKey("analysis", "v1", SeriesState.COMPLETE)], worker="other", lease_seconds=60
            )
            assert other is not None
            return super().run(job)

    job = JobRunner(catalog, [TakenOver(), Results()]).run("1.2.3")
    assert job is not None
    record = catalog.workflow.job("1.2.3", "analysis", "v1")
    assert record is not None and record.worker == "other" and record.state is JobState.RUNNING
    assert catalog.workflow.series_state("1.2.3")[0] is SeriesState.PROCESSING


def test_a_late_instance_after_the_steps_ran_makes_them_due_again(catalog) -> None:
    """A reported series reopened by a late instance, then a restart: processed again."""
    from dicom_node.intake.series import complete_idle_series

    runner = JobRunner(catalog, [Analysis(), Results()])
    runner.run("1.2.3")
    assert runner.pending() == []
    catalog.intake.record_instance(instance_record("1.2.3.2", number=2))  # late: receiving
    assert runner.pending() == []  # not while it is receiving ...
    # ... but once the restarted node's resume() has completed it, its steps are due,
    # although jobs of this model version finished before.
    assert complete_idle_series(catalog, 0.0) == ["1.2.3"]
    assert runner.pending() == ["1.2.3"]
    job = runner.run("1.2.3")
    assert job is not None and job.outcome is not None
    assert job.outcome.state is SeriesState.REPORTED
    assert runner.pending() == []
