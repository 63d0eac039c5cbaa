"""``dicom-node evaluate detection`` on a small phantom cohort written as DICOM."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ai.phantom import TEST_GEOMETRY
from ai.phantom.cohort import write_cohort
from dicom_node.cli import main

pytestmark = pytest.mark.integration

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cohort")
    write_cohort(out, patients=2, seed=7, studies_per_patient=1, geometry=TEST_GEOMETRY, anatomy_scale=0.6)
    return out


def test_detection_writes_metrics_figures_and_json(cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "eval"
    assert main(["evaluate", "detection", str(cohort), "--out", str(out), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["n_scans"] == 2
    assert printed["lung_dice_mean"] > 0.95
    assert 0.0 <= printed["cpm"] <= 1.0
    assert printed["froc_3mm"]["n_truths"] > 0
    assert len(printed["size_classes"]) == 7
    assert json.loads((out / "metrics.json").read_text())["cpm"] == printed["cpm"]
    assert (out / "froc.png").read_bytes().startswith(PNG)
    assert (out / "montage.png").read_bytes().startswith(PNG)


def test_detection_table_and_failures(cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["evaluate", "detection", str(cohort), "--out", str(tmp_path), "--limit", "1"]) == 0
    table = capsys.readouterr().out
    assert "CPM" in table and "lung Dice mean" in table and "class  diameter" in table
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "annotations.csv").write_text("seriesuid,coordX,coordY,coordZ,diameter_mm\n")
    assert main(["evaluate", "detection", str(empty)]) == 1
    assert main(["evaluate", "detection", str(tmp_path / "missing")]) == 1
    assert main(["evaluate"]) == 2
