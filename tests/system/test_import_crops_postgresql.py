"""``dicom-node import-crops`` into a PostgreSQL catalog: the same rows, once.

The reference part's upsert of the ``analysis`` job and the given nodules'
rows are written by the PostgreSQL dialect here (SQLite in
``tests/integration/test_import_crops.py``).
"""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from dicom_node.cli import main
from storage.catalog import Catalog, SeriesState
from storage.catalog.schema import instances, jobs, nodules, reference_nodules, series
from tests.factories import lidc_like_folder

pytestmark = pytest.mark.system


def test_import_twice_into_postgresql(tmp_path, fresh_database, monkeypatch, capsys) -> None:
    crops = lidc_like_folder(tmp_path / "crops", count=3, seed=5)
    monkeypatch.setenv("DICOM_NODE_STORAGE_CATALOG_URL", fresh_database)
    command = ["import-crops", "--data-dir", str(tmp_path / "data"), "--nodules", str(crops)]
    assert main([*command, "--no-progress"]) == 0
    assert "3 crops imported (72 new instances)" in capsys.readouterr().out
    catalog = Catalog(fresh_database, create=False)
    try:

        def counts() -> list[int]:
            with catalog.engine.begin() as connection:
                return [
                    int(connection.execute(sa.select(sa.func.count()).select_from(t)).scalar())
                    for t in (series, instances, nodules, jobs, reference_nodules)
                ]

        assert counts() == [3, 72, 3, 3, 3]
        assert {s.state for s in catalog.workflow.summaries()} == {SeriesState.REFERENCE}
        assert main([*command, "--no-progress"]) == 0
        assert "0 crops imported (0 new instances), 3 already indexed" in capsys.readouterr().out
        assert counts() == [3, 72, 3, 3, 3]
    finally:
        catalog.close()
