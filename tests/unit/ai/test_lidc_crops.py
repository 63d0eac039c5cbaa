"""The real-nodule crop reader: table parsing, groups, patient folds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ai.errors import ReaderError
from ai.readers.lidc_crops import (
    LIDC_CHARACTERISTICS,
    load_crop,
    malignancy_group,
    patient_folds,
    read_nodule_table,
    texture_class,
)
from ai.types import Volume
from ai.volume import write_image

HEADER = (
    "patient_id,nodule_id,image,mask,seriesuid,coordX,coordY,coordZ,diameter_mm,"
    "bboxLowX,bboxLowY,bboxLowZ,bboxHighX,bboxHighY,bboxHighZ,readers,"
    + ",".join(f"{c},{c}_value" for c in LIDC_CHARACTERISTICS)
)


def _write_folder(root: Path, rows: int = 2) -> Path:
    (root / "image").mkdir(parents=True)
    (root / "mask").mkdir()
    lines = [HEADER]
    for i in range(rows):
        array = np.full((4, 8, 8), -800, np.int16)
        array[1:3, 3:5, 3:5] = 40
        write_image(
            Volume(array, (2.0, 0.7, 0.7), (10.0, 20.0, -30.0 + i)), root / f"image/{i}.nii.gz"
        )
        write_image(
            Volume((array > 0).astype(np.uint8), (2.0, 0.7, 0.7), (10.0, 20.0, -30.0 + i)),
            root / f"mask/{i}.nii.gz",
        )
        ratings = ",".join(f"x,{v}" for v in (4, 5, 3, 2, 1, 3, 6, 1, 4))
        lines.append(
            f"P{i},1,image/{i}.nii.gz,mask/{i}.nii.gz,1.2.3.{i},11,21,{-28 + i},1.4,"
            f"10,20,-30,12,22,-28,{i + 1},{ratings}"
        )
    (root / "nodules.csv").write_text("\n".join(lines) + "\n")
    return root


def test_reads_rows_ratings_and_crops(tmp_path: Path) -> None:
    nodules = read_nodule_table(_write_folder(tmp_path / "crops"))
    assert [n.patient_id for n in nodules] == ["P0", "P1"]
    first = nodules[0]
    assert first.center_xyz == (11.0, 21.0, -28.0)
    assert first.malignancy == 4 and first.texture == 5 and first.ratings["Calcification"] == 6
    assert first.readers == 1
    volume, mask = load_crop(first)
    assert volume.shape == (4, 8, 8) and mask.dtype == np.bool_
    assert int(mask.sum()) == 8 and volume.spacing == pytest.approx((2.0, 0.7, 0.7))


def test_missing_crop_and_columns_are_named(tmp_path: Path) -> None:
    root = _write_folder(tmp_path / "crops")
    (root / "mask/1.nii.gz").unlink()
    with pytest.raises(ReaderError, match=r"nodules.csv:3: 1.nii.gz is not in"):
        read_nodule_table(root)
    (root / "nodules.csv").write_text("patient_id,image\nP0,image/0.nii.gz\n")
    with pytest.raises(ReaderError, match="missing columns"):
        read_nodule_table(root)


def test_groups_follow_seed_004_and_lidc_texture() -> None:
    assert [malignancy_group(m) for m in (1, 2, 3, 4, 5)] == [0, 0, None, 1, 1]
    assert [texture_class(t) for t in (1, 2, 3, 4, 5)] == [
        "ground-glass",
        "ground-glass",
        "part-solid",
        "solid",
        "solid",
    ]
    with pytest.raises(ValueError):
        malignancy_group(0)


def test_patient_folds_are_balanced_stable_and_disjoint() -> None:
    patients = [f"LIDC-IDRI-{i:04d}" for i in range(1, 53)]
    folds = patient_folds(patients + patients[:5], k=5)
    assert set(folds) == set(patients)
    sizes = sorted(np.bincount(list(folds.values())).tolist())
    assert sizes == [10, 10, 10, 11, 11]
    assert patient_folds(reversed(patients), k=5) == folds
    assert patient_folds(patients, k=5, seed=1) != folds
    with pytest.raises(ValueError):
        patient_folds(patients[:3], k=5)


def test_real_crops_line_up_with_their_masks(lidc_nodules_dir: Path) -> None:
    nodules = read_nodule_table(lidc_nodules_dir)
    assert len(nodules) == 596 and len({n.patient_id for n in nodules}) == 329
    first = next(n for n in nodules if n.patient_id == "LIDC-IDRI-0001")
    volume, mask = load_crop(first)
    centroid = volume.voxel_to_world(np.argwhere(mask).mean(axis=0))
    assert np.linalg.norm(centroid - np.asarray(first.center_xyz)) < 3.0
