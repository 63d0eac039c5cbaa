"""Catalog statements on SQLite (tests/system runs them on PostgreSQL)."""

from __future__ import annotations

import pytest

from storage.catalog import Catalog, Claim, Finished, JobState, SeriesState, StepKey
from tests.factories import generated_result, instance_record


def test_record_is_idempotent_and_counts(catalog) -> None:
    assert catalog.intake.record_instance(instance_record("1.2.3.1"), now=100.0)
    assert not catalog.intake.record_instance(instance_record("1.2.3.1"), now=101.0)
    assert catalog.intake.record_instance(instance_record("1.2.3.2", number=2), now=102.0)
    (summary,) = catalog.workflow.summaries()
    assert summary.instance_count == 2
    assert summary.state is SeriesState.RECEIVING
    assert summary.last_received_at == 102.0
    assert catalog.workflow.series_instance_paths("1.2.3") == [
        "1.2/1.2.3/1.2.3.1.dcm",
        "1.2/1.2.3/1.2.3.2.dcm",
    ]


def test_transition_is_conditional(catalog) -> None:
    catalog.intake.record_instance(instance_record("1.2.3.1"), now=100.0)
    assert not catalog.workflow.transition(
        "1.2.3", SeriesState.PROCESSING, from_states=[SeriesState.COMPLETE]
    )
    assert catalog.workflow.transition(
        "1.2.3", SeriesState.COMPLETE, from_states=[SeriesState.RECEIVING], idle_before=100.0
    )
    assert catalog.workflow.transition(
        "1.2.3", SeriesState.PROCESSING, from_states=[SeriesState.COMPLETE]
    )
    assert catalog.workflow.series_in_states([SeriesState.PROCESSING]) == ["1.2.3"]


def test_claim_and_finish_move_series_and_job_together(catalog) -> None:
    catalog.intake.record_instance(instance_record("1.2.3.1"), now=100.0)
    catalog.workflow.transition("1.2.3", SeriesState.COMPLETE)
    workflow = catalog.workflow
    analysis = StepKey("analysis", "v1", SeriesState.COMPLETE)

    def claim(state: SeriesState) -> Claim | None:
        key = StepKey("analysis", "v1", state)
        return workflow.claim("1.2.3", key, worker="w1", lease_seconds=60, now=102.0)

    assert claim(SeriesState.INDEXED) is None  # wrong state: nothing changes
    assert workflow.job("1.2.3", "analysis", "v1") is None
    held = claim(SeriesState.COMPLETE)
    assert held == Claim("1.2.3", "analysis", "v1", "w1", 1)
    assert workflow.series_state("1.2.3") == (SeriesState.PROCESSING, None)
    job = workflow.job("1.2.3", "analysis", "v1")
    assert job is not None and job.state is JobState.RUNNING and job.attempts == 1
    assert job.lease_expires_at == 162.0
    assert [j.step for j in workflow.jobs_in_states([JobState.RUNNING])] == ["analysis"]
    assert workflow.finish(
        held,
        JobState.DONE,
        outcome=SeriesState.INDEXED,
        detail="3 nodules",
        series_reason="3 nodules",
        now=103.0,
    ) == (Finished.MOVED, None)
    job = workflow.job("1.2.3", "analysis", "v1")
    assert job is not None and job.finished and job.outcome is SeriesState.INDEXED
    assert workflow.series_state("1.2.3") == (SeriesState.INDEXED, "3 nodules")
    # A second run of the same step and version replaces the job, counting attempts.
    workflow.transition("1.2.3", SeriesState.COMPLETE)
    held = claim(SeriesState.COMPLETE)
    job = workflow.job("1.2.3", "analysis", "v1")
    assert held is not None and job is not None and job.attempts == 2 and not job.finished
    # Another worker cannot finish it: nothing changes.
    stranger = Claim("1.2.3", "analysis", "v1", "w2", 2)
    assert workflow.finish(
        stranger, JobState.DONE, outcome=SeriesState.INDEXED, detail=None, series_reason=None
    ) == (Finished.LOST, None)
    assert workflow.series_state("1.2.3")[0] is SeriesState.PROCESSING
    # A late instance reopened the series meanwhile: finishing does not move it.
    catalog.intake.record_instance(instance_record("1.2.3.2", number=2), now=104.0)
    assert workflow.finish(
        held,
        JobState.DONE,
        outcome=SeriesState.INDEXED,
        detail=None,
        series_reason=None,
        then=analysis,
    ) == (Finished.REOPENED, None)
    assert workflow.series_state("1.2.3")[0] is SeriesState.RECEIVING


def test_generated_results_belong_to_their_study_not_to_a_series(catalog) -> None:
    catalog.intake.record_instance(instance_record("1.2.3.1"), now=100.0)
    result = generated_result()
    assert catalog.intake.record_result(result)
    assert not catalog.intake.record_result(result)
    assert catalog.intake.generated_results("1.2") == [result]
    assert catalog.intake.generated_result("1.2.99.1") == result
    assert [s.series_instance_uid for s in catalog.workflow.summaries()] == ["1.2.3"]
    assert catalog.deliveries.enqueue("PACS@h:104", result, now=106.0)
    assert not catalog.deliveries.enqueue("PACS@h:104", result, now=107.0)
    (delivery,) = catalog.deliveries.in_states()
    assert delivery.transfer_syntax_uid == result.transfer_syntax_uid


def test_a_catalog_of_another_schema_is_refused_with_the_reason(tmp_path) -> None:
    import sqlalchemy as sa

    from storage.errors import CatalogError

    url = f"sqlite:///{tmp_path / 'old.sqlite3'}"
    engine = sa.create_engine(url)
    with engine.begin() as connection:  # the jobs table of an earlier version
        connection.execute(
            sa.text("CREATE TABLE jobs (series_instance_uid VARCHAR(64), processor_version TEXT)")
        )
    engine.dispose()
    with pytest.raises(CatalogError, match=r"missing jobs\.id, jobs\.step"):
        Catalog(url)
