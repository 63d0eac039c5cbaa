"""Jobs claimed under leases, and the nodule cursor an index follows (SQLite here;
tests/system runs the same statements on PostgreSQL)."""

from __future__ import annotations

import numpy as np
import pytest

from storage.catalog import Claim, Finished, IndexCursor, JobState, SeriesState, StepKey
from storage.errors import LeaseLost
from tests.factories import instance_record, random_nodules

ANALYSIS = StepKey("analysis", "v1", SeriesState.COMPLETE)
RESULTS = StepKey("results", "v1", SeriesState.INDEXED)
STEPS = (ANALYSIS, RESULTS)


def _complete(catalog, series: str, at: float) -> None:
    catalog.intake.record_instance(instance_record(series + ".1", series=series), now=at)
    assert catalog.workflow.complete(series, idle_before=at, now=at)


def test_claim_next_takes_series_under_way_first_then_the_oldest(catalog) -> None:
    workflow = catalog.workflow
    _complete(catalog, "1.2.1", 10.0)
    _complete(catalog, "1.2.2", 20.0)
    _complete(catalog, "1.2.3", 30.0)
    first = workflow.claim_next(STEPS, worker="w1", lease_seconds=60, now=100.0)
    assert first == Claim("1.2.1", "analysis", "v1", "w1", 1)
    # 1.2.1 indexed: its results step comes before the older waiting analyses.
    assert workflow.finish(
        first, JobState.DONE, outcome=SeriesState.INDEXED, detail="2", series_reason="2"
    ) == (Finished.MOVED, None)
    assert workflow.claim_next(STEPS, worker="w2", lease_seconds=60, now=101.0) == Claim(
        "1.2.1", "results", "v1", "w2", 1
    )
    assert workflow.claim_next(STEPS, worker="w2", lease_seconds=60, now=102.0) == Claim(
        "1.2.2", "analysis", "v1", "w2", 1
    )
    third = workflow.claim_next(STEPS, worker="w1", lease_seconds=60, now=103.0)
    assert third is not None and third.series_instance_uid == "1.2.3"
    assert workflow.claim_next(STEPS, worker="w1", lease_seconds=60, now=104.0) is None


def test_finishing_a_step_claims_the_next_for_the_same_worker(catalog) -> None:
    workflow = catalog.workflow
    _complete(catalog, "1.2.1", 10.0)
    claim = workflow.claim_next(STEPS, worker="w1", lease_seconds=60, now=100.0)
    assert claim is not None
    finished, following = workflow.finish(
        claim,
        JobState.DONE,
        outcome=SeriesState.INDEXED,
        detail="2 nodules",
        series_reason="2 nodules",
        then=RESULTS,
        lease_seconds=60,
        now=101.0,
    )
    assert finished is Finished.MOVED
    assert following == Claim("1.2.1", "results", "v1", "w1", 1)
    assert workflow.series_state("1.2.1") == (SeriesState.PROCESSING, None)
    assert workflow.claim_next(STEPS, worker="w2", lease_seconds=60, now=102.0) is None


def test_a_dead_workers_job_is_taken_over_when_its_lease_runs_out(catalog) -> None:
    workflow = catalog.workflow
    _complete(catalog, "1.2.1", 10.0)
    dead = workflow.claim_next(STEPS, worker="host:1:a:t", lease_seconds=10, now=100.0)
    assert dead is not None
    assert workflow.claim_next(STEPS, worker="w2", lease_seconds=10, now=109.0) is None
    # Renewing keeps it: the holder is alive after all.
    assert workflow.renew("host:1:a:", 10, now=109.0) == 1
    assert workflow.claim_next(STEPS, worker="w2", lease_seconds=10, now=118.0) is None
    taken = workflow.claim_next(STEPS, worker="w2", lease_seconds=10, now=119.5)
    assert taken == Claim("1.2.1", "analysis", "v1", "w2", 2)
    assert workflow.series_state("1.2.1")[0] is SeriesState.PROCESSING
    # The old holder renews nothing and can write nothing.
    assert workflow.renew("host:1:a:", 10, now=120.0) == 0
    with pytest.raises(LeaseLost, match="no longer held by host:1:a:t"):
        catalog.nodules.replace("1.2.1", "v1", random_nodules(np.random.default_rng(0), 2),
                                claim=dead)  # fmt: skip
    assert catalog.nodules.of(model_version="v1", series_instance_uid="1.2.1") == []
    assert workflow.finish(
        dead, JobState.DONE, outcome=SeriesState.INDEXED, detail=None, series_reason=None
    ) == (Finished.LOST, None)
    stored = catalog.nodules.replace(
        "1.2.1", "v1", random_nodules(np.random.default_rng(0), 2), claim=taken
    )
    assert len(stored) == 2
    job = workflow.job("1.2.1", "analysis", "v1")
    assert job is not None and job.worker == "w2" and job.attempts == 2


def test_expire_release_and_completion_make_jobs_due_again(catalog) -> None:
    workflow = catalog.workflow
    _complete(catalog, "1.2.1", 10.0)
    claim = workflow.claim_next(STEPS, worker="w1", lease_seconds=600, now=100.0)
    assert claim is not None
    assert workflow.expire(["w1"]) == 1  # known dead: taken over at once
    taken = workflow.claim_next(STEPS, worker="w2", lease_seconds=600, now=101.0)
    assert taken is not None and taken.attempts == 2
    # Given back unstarted: pending, the series where the step starts, the attempt undone.
    assert workflow.release(taken, SeriesState.COMPLETE, now=102.0)
    assert not workflow.release(taken, SeriesState.COMPLETE, now=102.0)
    job = workflow.job("1.2.1", "analysis", "v1")
    assert job is not None and job.state is JobState.PENDING and job.attempts == 1
    assert workflow.series_state("1.2.1")[0] is SeriesState.COMPLETE
    claim = workflow.claim_next(STEPS, worker="w1", lease_seconds=600, now=103.0)
    assert claim is not None
    workflow.finish(
        claim, JobState.DONE, outcome=SeriesState.SKIPPED, detail="x", series_reason="x"
    )
    assert workflow.claim_next(STEPS, worker="w1", lease_seconds=600, now=104.0) is None
    # A late instance and a new completion: the finished step is due again.
    catalog.intake.record_instance(instance_record("1.2.1.2", series="1.2.1", number=2), now=105.0)
    assert workflow.claim_next(STEPS, worker="w1", lease_seconds=600, now=106.0) is None
    assert workflow.complete("1.2.1", idle_before=105.0, now=107.0)
    job = workflow.job("1.2.1", "analysis", "v1")
    assert job is not None and job.state is JobState.PENDING
    again = workflow.claim_next(STEPS, worker="w1", lease_seconds=600, now=108.0)
    assert again is not None and again.step == "analysis"


def test_the_nodule_cursor_sees_new_rows_and_removals_in_order(catalog) -> None:
    rng = np.random.default_rng(1)
    nodules = catalog.nodules
    for series in ("1.2.1", "1.2.2"):
        catalog.intake.record_instance(instance_record(series + ".1", series=series), now=1.0)
    assert nodules.cursor() == IndexCursor(-1, 0)
    first = nodules.replace("1.2.1", "v1", random_nodules(rng, 3))
    other = nodules.replace("1.2.2", "v2", random_nodules(rng, 2))  # another model version
    head = nodules.cursor()
    assert head.last_nodule_id == other[-1].id and head.last_removal == 0
    assert [b.ids.tolist() for b in nodules.iter_codes("v2", up_to_id=other[0].id)] == [
        [other[0].id]
    ]
    # The same series again: its rows are replaced by rows with larger ids, never
    # reused ones (SQLite would reuse the largest id without AUTOINCREMENT).
    again = nodules.replace("1.2.1", "v1", random_nodules(rng, 2))
    assert min(n.id for n in again) > head.last_nodule_id
    (batch,) = nodules.iter_codes("v1", after_id=head.last_nodule_id)
    assert batch.ids.tolist() == [n.id for n in again]
    assert list(nodules.iter_codes("v1", up_to_id=head.last_nodule_id)) == []
    newest = nodules.replace("1.2.1", "v1", random_nodules(rng, 2))  # the largest ids, replaced
    assert min(n.id for n in newest) > max(n.id for n in again)
    removed, last = nodules.removed_after("v1", head.last_removal)
    assert removed == [n.id for n in first + again] and last == 5
    assert nodules.removed_after("v2", head.last_removal) == ([], 5)
    assert nodules.removed_after("v1", last) == ([], last)
