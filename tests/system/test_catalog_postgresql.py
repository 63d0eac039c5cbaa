"""The catalog on a real PostgreSQL server: every part's statements, dialect by dialect.

The upserts (jobs), ``ON CONFLICT DO NOTHING`` inserts (instances, results,
deliveries), ``RETURNING`` and the case-insensitive person-name matching are
written differently by the two dialects; this runs them on PostgreSQL.
"""

from __future__ import annotations

import numpy as np
import pytest
import sqlalchemy as sa

from storage.catalog import (
    Catalog,
    DeliveryState,
    Finished,
    JobState,
    SeriesState,
    StepKey,
)
from tests.factories import generated_result, instance_record, near_code, new_nodule

pytestmark = pytest.mark.system


@pytest.fixture
def catalog(postgresql_url):
    engine = sa.create_engine(postgresql_url)
    with engine.begin() as connection:
        connection.execute(sa.text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    engine.dispose()
    catalog = Catalog(postgresql_url)
    yield catalog
    catalog.close()


class _Match:
    def __init__(self, keyword: str, kind: str, values: tuple[str, ...]) -> None:
        self.keyword, self.kind, self.values = keyword, kind, values


def test_intake_workflow_find_nodules_results_and_deliveries(catalog) -> None:
    # intake: idempotent, counted, a late instance reopens
    assert catalog.intake.record_instance(instance_record("1.2.3.1"), now=100.0)
    assert not catalog.intake.record_instance(instance_record("1.2.3.1"), now=101.0)
    assert catalog.intake.record_instance(instance_record("1.2.3.2", number=2), now=102.0)
    (summary,) = catalog.workflow.summaries()
    assert summary.instance_count == 2 and summary.state is SeriesState.RECEIVING
    assert catalog.intake.study("1.2") is not None

    # workflow: conditional transition, claim and finish with the job upsert
    workflow = catalog.workflow
    assert workflow.transition(
        "1.2.3", SeriesState.COMPLETE, from_states=[SeriesState.RECEIVING], idle_before=102.0
    )
    analysis = StepKey("analysis", "v1", SeriesState.COMPLETE)
    for attempt in (1, 2):
        claim = workflow.claim("1.2.3", analysis, worker="w", lease_seconds=9)
        assert claim is not None and claim.attempts == attempt
        job = workflow.job("1.2.3", "analysis", "v1")
        assert job is not None and job.state is JobState.RUNNING and job.attempts == attempt
        assert workflow.finish(
            claim,
            JobState.DONE,
            outcome=SeriesState.COMPLETE if attempt == 1 else SeriesState.INDEXED,
            detail=None,
            series_reason="done",
        ) == (Finished.MOVED, None)
    workflow.queue_job("1.2.3", "results", "v1")
    assert [j.step for j in workflow.jobs_in_states([JobState.PENDING])] == ["results"]

    # find: person names match case-insensitively, with wildcards
    rows = list(catalog.find.match("STUDY", [_Match("PatientName", "wildcard", ("doe*",))]))
    assert [r["StudyInstanceUID"] for r in rows] == ["1.2"]
    assert rows[0]["NumberOfStudyRelatedInstances"] == 2

    # nodules: replace returns the stored records, again on a rerun
    rng = np.random.default_rng(0)
    found = [
        new_nodule(
            i,
            near_code(rng, np.zeros(192, np.uint8), 3),
            np.eye(16)[i],
            diameter_mm=6.0,
            size_class=3,
        )
        for i in range(2)
    ]
    first = catalog.nodules.replace("1.2.3", "v1", found)
    again = catalog.nodules.replace("1.2.3", "v1", found)
    assert catalog.nodules.of(model_version="v1", study_instance_uid="1.2") == again
    assert set(catalog.nodules.by_id([n.id for n in again])) == {n.id for n in again}
    assert not set(n.id for n in first) & set(n.id for n in again)
    (batch,) = catalog.nodules.iter_codes("v1")
    assert batch.codes.shape == (2, 24) and batch.embeddings.shape == (2, 16)

    # results and their deliveries, once per destination
    result = generated_result()
    assert catalog.intake.record_result(result) and not catalog.intake.record_result(result)
    assert catalog.deliveries.enqueue("PACS@h:104", result, now=104.0)
    assert not catalog.deliveries.enqueue("PACS@h:104", result, now=105.0)
    (delivery,) = catalog.deliveries.in_states([DeliveryState.PENDING], due_before=104.0)
    catalog.deliveries.finish(delivery.id, DeliveryState.FAILED, error="0xA700", now=106.0)
    assert catalog.deliveries.requeue(sop_instance_uids=["1.2.99.1"]) == 1
