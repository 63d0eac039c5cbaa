"""The job runner: steps in order, context handed on, failures and restarts."""

from __future__ import annotations

import pytest

from dicom_node.processing.jobs import JobRunner, Outcome, SeriesJob
from storage.catalog import Catalog, JobState, SeriesState
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
    assert runner.pending() == []  # a failed job is not retried until reindex clears it


def test_recover_puts_an_interrupted_step_back_where_it_starts(catalog) -> None:
    analysis, results = Analysis(), Results()
    runner = JobRunner(catalog, [analysis, results])
    # The node died during the results step: the series says processing, the job running.
    assert catalog.workflow.transition("1.2.3", SeriesState.INDEXED)
    assert catalog.workflow.claim(
        "1.2.3", "results", "v1", from_state=SeriesState.INDEXED, worker="old", lease_seconds=60
    )
    assert runner.recover() == 1
    assert catalog.workflow.series_state("1.2.3")[0] is SeriesState.INDEXED
    record = catalog.workflow.job("1.2.3", "results", "v1")
    assert record is not None and record.state is JobState.PENDING
    assert runner.pending() == ["1.2.3"]
    job = runner.run("1.2.3")
    # Run alone after a restart, the results step gets no headers: it reads them itself.
    assert job is not None and job.outcome is not None
    assert job.outcome.state is SeriesState.REPORTED and results.seen == [None]


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
