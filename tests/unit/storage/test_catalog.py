"""Catalog statements on SQLite and on a real PostgreSQL server."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from dicom_node.intake.series import complete_idle_series
from storage.catalog import Catalog, InstanceRecord, SeriesState


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.system)])
def catalog(request, tmp_path):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'catalog.sqlite3'}"
    else:
        url = request.getfixturevalue("postgresql_url")
        engine = sa.create_engine(url)
        with engine.begin() as connection:
            connection.execute(sa.text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
        engine.dispose()
    catalog = Catalog(url)
    yield catalog
    catalog.close()


def _record(sop: str, series: str = "1.2.3", study: str = "1.2", number: int = 1) -> InstanceRecord:
    return InstanceRecord(
        study_instance_uid=study,
        series_instance_uid=series,
        sop_instance_uid=sop,
        sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
        transfer_syntax_uid="1.2.840.10008.1.2.1",
        relative_path=f"{study}/{series}/{sop}.dcm",
        size=10,
        sha256="0" * 64,
        modality="CT",
        instance_number=number,
        patient_name="Doe^Jane",
        study_date="20260101",
    )


def test_record_is_idempotent_and_counts(catalog) -> None:
    assert catalog.record_instance(_record("1.2.3.1"), now=100.0)
    assert not catalog.record_instance(_record("1.2.3.1"), now=101.0)
    assert catalog.record_instance(_record("1.2.3.2", number=2), now=102.0)
    (summary,) = catalog.summaries()
    assert summary.instance_count == 2
    assert summary.state is SeriesState.RECEIVING
    assert summary.last_received_at == 102.0
    assert catalog.series_instance_paths("1.2.3") == [
        "1.2/1.2.3/1.2.3.1.dcm",
        "1.2/1.2.3/1.2.3.2.dcm",
    ]


def test_idle_series_complete_and_late_instance_reopens(catalog) -> None:
    catalog.record_instance(_record("1.2.3.1"), now=100.0)
    assert complete_idle_series(catalog, 30, now=120.0) == []
    assert complete_idle_series(catalog, 30, now=131.0) == ["1.2.3"]
    assert catalog.series_state("1.2.3") == (SeriesState.COMPLETE, None)
    catalog.record_instance(_record("1.2.3.9", number=9), now=140.0)
    assert catalog.series_state("1.2.3")[0] is SeriesState.RECEIVING
    assert complete_idle_series(catalog, 30, now=171.0) == ["1.2.3"]


def test_transition_is_conditional(catalog) -> None:
    catalog.record_instance(_record("1.2.3.1"), now=100.0)
    assert not catalog.transition(
        "1.2.3", SeriesState.PROCESSING, from_states=[SeriesState.COMPLETE]
    )
    assert catalog.transition(
        "1.2.3", SeriesState.COMPLETE, from_states=[SeriesState.RECEIVING], idle_before=100.0
    )
    assert catalog.transition("1.2.3", SeriesState.PROCESSING, from_states=[SeriesState.COMPLETE])
    assert catalog.series_in_states([SeriesState.PROCESSING]) == ["1.2.3"]


def test_jobs_record_runs_per_processor_version(catalog) -> None:
    from dicom_node.processing.jobs import Outcome, run_series

    catalog.record_instance(_record("1.2.3.1"), now=100.0)
    complete_idle_series(catalog, 0, now=101.0)

    class Failing:
        version = "v-test"

        def process(self, uid: str) -> Outcome:
            raise RuntimeError("model exploded")

    outcome = run_series(catalog, Failing(), "1.2.3")
    assert outcome is not None and outcome.state is SeriesState.FAILED
    assert catalog.series_state("1.2.3") == (SeriesState.FAILED, "RuntimeError: model exploded")
    job = catalog.job("1.2.3", "v-test")
    assert job is not None and job["state"] == "failed" and job["finished_at"] is not None
    assert run_series(catalog, Failing(), "1.2.3") is None  # not complete any more: not claimed
