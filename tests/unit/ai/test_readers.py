"""ai.readers: LUNA16 and LIDC-IDRI, on phantom samples written in those formats (and on the
real LIDC-IDRI-0001 case when ../shared/data has it)."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pytest

from ai.errors import ReaderError
from ai.phantom import TEST_GEOMETRY, first_studies, plan_patient, render_study
from ai.readers import parse_lidc_xml, read_annotations, read_lidc_scan, read_scan
from ai.readers.lidc import write_lidc_sample
from ai.readers.luna16 import write_luna16_sample

SHARED_LIDC = Path(__file__).resolve().parents[4] / "shared" / "data" / "LIDC-IDRI-0001.tar.gz"


def _studies(patients: int):
    return first_studies(patients, seed=3, geometry=TEST_GEOMETRY, anatomy_scale=0.6)


def _truth(seed: int, patient: int):
    return render_study(plan_patient(seed, patient, anatomy_scale=0.6), 0, TEST_GEOMETRY).nodules


def test_luna16_sample_reads_back_with_world_coordinates(tmp_path):
    paths = write_luna16_sample(tmp_path, _studies(1), seed=3)
    assert paths[0].with_suffix(".raw").exists()
    volume = read_scan(paths[0])
    annotations = read_annotations(tmp_path / "annotations.csv")
    rows = annotations[paths[0].stem]
    truth = _truth(3, 0)
    assert [r.diameter_mm for r in rows] == pytest.approx([n.diameter_mm for n in truth], abs=1e-5)
    assert volume.array.dtype == np.int16
    for row in rows:
        zyx = np.rint(volume.world_to_voxel(row.center_xyz)).astype(int)
        # the annotated centre is inside a bright nodule on the scan
        assert volume.array[tuple(zyx)] > -600, row


def test_luna16_bad_inputs(tmp_path):
    bad = tmp_path / "annotations.csv"
    bad.write_text("seriesuid,coordX,coordY\n1.2,3,4\n")
    with pytest.raises(ReaderError):
        read_annotations(bad)
    bad.write_text("seriesuid,coordX,coordY,coordZ,diameter_mm\n1.2,3,x,5,6\n")
    with pytest.raises(ReaderError):
        read_annotations(bad)
    with pytest.raises(ReaderError):
        read_annotations(tmp_path / "missing.csv")
    (tmp_path / "junk.mhd").write_text("not a header")
    with pytest.raises(ReaderError):
        read_scan(tmp_path / "junk.mhd")


def test_lidc_sample_head_first_and_feet_first(tmp_path):
    dirs = write_lidc_sample(tmp_path, _studies(2), seed=3)
    for patient, directory in enumerate(dirs):
        scan = read_lidc_scan(directory)
        truth = _truth(3, patient)
        assert len(scan.nodules) == len(truth)
        assert len({r.reader for r in scan.readings}) == 4
        for nodule in truth:
            distance = [
                np.linalg.norm(np.subtract(n.center_xyz, nodule.center_xyz)) for n in scan.nodules
            ]
            found = scan.nodules[int(np.argmin(distance))]
            assert min(distance) < 1.5, (nodule, found)
            assert (
                abs(found.diameter_mm - nodule.diameter_mm)
                < 2 * TEST_GEOMETRY.pixel_mm + 0.2 * nodule.diameter_mm
            )
            texture = {"solid": 5, "part-solid": 3, "ground-glass": 1}[nodule.texture]
            assert found.characteristics["texture"] == texture
            assert len(found.readers) >= 3


def test_lidc_xml_errors(tmp_path):
    (tmp_path / "a.xml").write_text("<notLidc/>")
    with pytest.raises(ReaderError):
        parse_lidc_xml(tmp_path / "a.xml")
    (tmp_path / "b.xml").write_text("<LidcReadMessage")
    with pytest.raises(ReaderError):
        parse_lidc_xml(tmp_path / "b.xml")
    with pytest.raises(ReaderError):
        read_lidc_scan(tmp_path)  # two XML files


@pytest.mark.skipif(
    not SHARED_LIDC.exists(), reason="shared/data/LIDC-IDRI-0001.tar.gz not present"
)
def test_real_lidc_idri_0001(tmp_path):
    with tarfile.open(SHARED_LIDC) as archive:
        archive.extractall(tmp_path, filter="data")
    series_dir = next(p.parent for p in tmp_path.rglob("*.xml"))
    scan = read_lidc_scan(series_dir)
    assert scan.volume.shape == (133, 512, 512)
    big = [n for n in scan.nodules if not n.small]
    assert len(big) == 1
    nodule = big[0]
    assert nodule.readers == (0, 1, 2, 3)
    assert 28 < nodule.diameter_mm < 36
    assert nodule.characteristics["malignancy"] == 5.0
    zyx = np.rint(scan.volume.world_to_voxel(nodule.center_xyz)).astype(int)
    assert scan.volume.array[tuple(zyx)] > -300  # a solid nodule at its centre
