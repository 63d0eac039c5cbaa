"""Series completion: idle series become complete, a late instance reopens one."""

from __future__ import annotations

from dicom_node.intake.series import complete_idle_series
from storage.catalog import SeriesState
from tests.factories import instance_record


def test_idle_series_complete_and_late_instance_reopens(catalog) -> None:
    catalog.intake.record_instance(instance_record("1.2.3.1"), now=100.0)
    assert complete_idle_series(catalog, 30, now=120.0) == []
    assert complete_idle_series(catalog, 30, now=131.0) == ["1.2.3"]
    assert catalog.workflow.series_state("1.2.3") == (SeriesState.COMPLETE, None)
    catalog.intake.record_instance(instance_record("1.2.3.9", number=9), now=140.0)
    assert catalog.workflow.series_state("1.2.3")[0] is SeriesState.RECEIVING
    assert complete_idle_series(catalog, 30, now=171.0) == ["1.2.3"]
