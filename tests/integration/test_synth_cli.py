"""``dicom-node synth``: a cohort that pydicom, dcmtk and dciodvfy accept, with exact truth."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from scipy import ndimage

from ai.volume import from_sitk, load_series
from dicom_node.cli import main

pytestmark = pytest.mark.integration

SMALL = ["--matrix", "128", "--pixel-mm", "2.5", "--slice-mm", "2", "--scale", "0.6"]


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cohort")
    argv = [
        "synth",
        str(out),
        "--patients",
        "2",
        "--seed",
        "9",
        *SMALL,
        "--compression",
        "jpeg-ls",
        "--preview",
    ]
    assert main(argv) == 0
    return out


def test_every_file_reads_with_pydicom_and_dcmdump(cohort):
    files = sorted(cohort.rglob("*.dcm"))
    truth = json.loads((cohort / "truth.json").read_text())
    assert len(files) == sum(s["instances"] for s in truth["studies"]) > 100
    for path in files[::7]:
        ds = pydicom.dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.80"
        assert ds.pixel_array.shape == (128, 128)
        assert ds.Modality == "CT" and ds.RescaleType == "HU"
    dcmdump = shutil.which("dcmdump")
    if dcmdump is None:
        pytest.skip("dcmtk dcmdump not installed")
    result = subprocess.run(
        [dcmdump, "-q", *map(str, files)], capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "E:" not in result.stderr and "ImagePositionPatient" in result.stdout
    dciodvfy = shutil.which("dciodvfy")
    if dciodvfy is not None:
        check = subprocess.run(
            [dciodvfy, str(files[0])], capture_output=True, text=True, timeout=60
        )
        errors = [
            line for line in (check.stdout + check.stderr).splitlines() if line.startswith("Error")
        ]
        assert not errors, errors


def test_identity_dates_and_positions_per_study(cohort):
    truth = json.loads((cohort / "truth.json").read_text())
    studies = truth["studies"]
    assert {s["patient_position"] for s in studies} == {"HFS", "FFS"}
    by_patient: dict[str, list[dict]] = {}
    for study in studies:
        by_patient.setdefault(study["patient_id"], []).append(study)
    for records in by_patient.values():
        assert len(records) == 2
        prior, follow = sorted(records, key=lambda s: s["study_date"])
        assert prior["study_date"] < follow["study_date"]
        assert prior["study_instance_uid"] != follow["study_instance_uid"]
        tracks = {n["track_id"] for n in prior["nodules"]}
        assert tracks <= {n["track_id"] for n in follow["nodules"]}
        ds = pydicom.dcmread(next((cohort / follow["dicom_dir"]).glob("*.dcm")))
        assert ds.PatientPosition == follow["patient_position"]
        assert ds.StudyDate == follow["study_date"]


def test_truth_centres_land_on_the_nodules_read_from_files(cohort):
    truth = json.loads((cohort / "truth.json").read_text())
    with (cohort / "annotations.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == sum(len(s["nodules"]) for s in truth["studies"])
    for study in truth["studies"]:
        volume = load_series(sorted((cohort / study["dicom_dir"]).glob("*.dcm")), spacing=None)
        lungs = from_sitk(sitk.ReadImage(str(cohort / study["lung_mask"])))
        nodules = from_sitk(sitk.ReadImage(str(cohort / study["nodule_mask"])))
        assert lungs.shape == volume.shape
        assert np.allclose(lungs.origin, volume.origin) and np.allclose(
            lungs.direction, volume.direction
        )
        assert np.median(volume.array[lungs.array > 0]) < -750
        series_rows = [r for r in rows if r["seriesuid"] == study["series_instance_uid"]]
        for label, (nodule, row) in enumerate(
            zip(study["nodules"], series_rows, strict=True), start=1
        ):
            assert float(row["coordX"]) == pytest.approx(nodule["center_xyz"][0], abs=1e-3)
            # intensity centroid over the nodule (mask grown by a voxel for the partial volume)
            region = ndimage.binary_dilation(nodules.array == label)
            weights = np.clip(volume.array - lungs_background(volume, lungs), 0, None) * region
            voxels = np.argwhere(region)
            centroid_zyx = (voxels * weights[region][:, None]).sum(axis=0) / weights[region].sum()
            centroid = volume.voxel_to_world(centroid_zyx)
            # pleura or a vessel beside the nodule pulls this simple centroid; every location is
            # checked exactly (image with minus without the nodule) in tests/unit/ai/test_volume.py
            if nodule["location"] == "isolated":
                assert np.linalg.norm(centroid - np.asarray(nodule["center_xyz"])) < 1.0, nodule
            zyx = np.rint(volume.world_to_voxel(nodule["center_xyz"])).astype(int)
            assert volume.array[tuple(zyx)] > lungs_background(volume, lungs) + 150


def lungs_background(volume, lungs) -> float:
    return float(np.median(volume.array[lungs.array > 0]))


def test_preview_png_is_written(cohort):
    png = cohort / "preview.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 20_000


def test_same_seed_same_files(cohort, tmp_path):
    again = tmp_path / "again"
    argv = [
        "synth",
        str(again),
        "--patients",
        "1",
        "--seed",
        "9",
        *SMALL,
        "--compression",
        "jpeg-ls",
        "--studies",
        "2",
    ]
    assert main(argv) == 0
    first = sorted((cohort / "dicom").rglob("*.dcm"))[0]
    relative = first.relative_to(cohort)
    assert (again / relative).read_bytes() == first.read_bytes()


def test_public_formats_from_the_cli(tmp_path):
    assert (
        main(["synth", str(tmp_path / "luna"), "--patients", "1", "--format", "luna16", *SMALL])
        == 0
    )
    assert len(list((tmp_path / "luna").rglob("*.mhd"))) == 1
    assert (tmp_path / "luna" / "annotations.csv").exists()
    assert (
        main(["synth", str(tmp_path / "lidc"), "--patients", "1", "--format", "lidc", *SMALL]) == 0
    )
    assert len(list((tmp_path / "lidc").rglob("*.xml"))) == 1


def test_patch_mode_from_the_cli(tmp_path):
    argv = [
        "synth",
        str(tmp_path),
        "--format",
        "patches",
        "--count",
        "6",
        "--patch-size",
        "8",
        "16",
        "16",
    ]
    assert main([*argv, "--patch-mm", "2", "--scale", "0.6"]) == 0
    with np.load(tmp_path / "patches.npz") as data:
        assert data["patches"].shape == (6, 8, 16, 16)
        assert data["size_class"].shape == (6,)
        assert float(data["spacing_mm"]) == 2.0


def test_family_b_cohort_and_patches_from_the_cli(tmp_path):
    out = tmp_path / "b"
    argv = ["synth", str(out), "--patients", "1", "--studies", "1", "--seed", "5", *SMALL]
    assert main([*argv, "--family", "b"]) == 0
    truth = json.loads((out / "truth.json").read_text())
    assert truth["settings"]["family"] == "b"
    with (out / "annotations.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(truth["studies"][0]["nodules"]) >= 1
    volume = load_series(sorted((out / "dicom").rglob("*.dcm")))
    a_out = tmp_path / "a"
    assert main(["synth", str(a_out), *argv[2:]]) == 0
    family_a = load_series(sorted((a_out / "dicom").rglob("*.dcm")))
    assert not np.array_equal(volume.array, family_a.array)
    patches = tmp_path / "patches"
    argv = ["synth", str(patches), "--format", "patches", "--count", "4", "--family", "b"]
    assert main([*argv, "--patch-size", "8", "24", "24", "--scale", "0.6"]) == 0
    with np.load(patches / "patches.npz") as data:
        assert data["patches"].shape == (4, 8, 24, 24)
