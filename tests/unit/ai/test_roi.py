"""2.5-D ROI patches: layout, orientation, masking, known findings."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from ai.lungs import LungMask
from ai.readers.luna16 import read_annotations
from ai.roi import HU_WINDOW, extract_rois, rois_from_points
from ai.types import Volume


def _window(hu: float) -> float:
    return (hu - HU_WINDOW[0]) / (HU_WINDOW[1] - HU_WINDOW[0])


@pytest.fixture(scope="module")
def scene() -> tuple[Volume, LungMask, np.ndarray]:
    """A 1 mm cube of lung (-850) with markers at known world offsets from the centre."""
    shape = (61, 81, 81)
    hu = np.full(shape, 40.0, dtype=np.float32)
    labels = np.zeros(shape, dtype=np.uint8)
    labels[5:56, 10:71, 10:71] = 1
    hu[labels > 0] = -850.0
    c = np.array([30, 40, 40])
    hu[c[0] - 1 : c[0] + 2, c[1] - 1 : c[1] + 2, c[2] - 1 : c[2] + 2] = 0.0  # centre
    hu[c[0], c[1], c[2] + 12 : c[2] + 15] = 400.0  # +x (patient left): right of centre in axial
    hu[c[0] + 12 : c[0] + 15, c[1], c[2]] = -300.0  # +z (superior): above centre in coronal
    volume = Volume(array=hu, spacing=(1.0, 1.0, 1.0), origin=(-40.0, -40.0, -30.0))
    mask = LungMask(labels=labels, airway=np.zeros(shape, bool), spacing=volume.spacing)
    centre = volume.voxel_to_world(c)
    return volume, mask, centre


def test_layout_dtype_and_range(scene: tuple[Volume, LungMask, np.ndarray]) -> None:
    volume, mask, centre = scene
    rois = extract_rois(volume, mask, [centre, centre + 3.0], views=("axial", "coronal", "sagittal"))
    assert rois.shape == (2, 9, 64, 64) and rois.dtype == np.float32
    assert 0.0 <= rois.min() and rois.max() <= 1.0
    for channel in (1, 4, 7):  # middle plane of each view goes through the centre
        assert rois[0, channel, 31:33, 31:33].mean() == pytest.approx(_window(0.0), abs=0.02)
    assert extract_rois(volume, mask, np.zeros((0, 3))).shape == (0, 3, 64, 64)


def test_orientation_of_axial_and_coronal_planes(scene: tuple[Volume, LungMask, np.ndarray]) -> None:
    volume, mask, centre = scene
    rois = extract_rois(volume, mask, [centre], fov_mm=41.0, size=41, axial_slices=1, views=("axial", "coronal"))
    axial, coronal = rois[0, 0], rois[0, 1]
    # 1 mm pixels, pixel 20 at the centre: +13 mm in x (patient left) is column 33 of the centre row
    assert axial[20, 33] == pytest.approx(_window(400.0), abs=0.01)
    assert axial[20, 7] == pytest.approx(_window(-850.0), abs=0.02)
    # superior is up in coronal: +13 mm in z is row 7
    assert coronal[7, 20] == pytest.approx(_window(-300.0), abs=0.01)
    assert coronal[33, 20] == pytest.approx(_window(-850.0), abs=0.02)


def test_outside_the_dilated_lung_reads_zero(scene: tuple[Volume, LungMask, np.ndarray]) -> None:
    volume, mask, centre = scene
    near_edge = centre + np.array([-20.0, 0.0, 0.0])  # 10 mm from the lung's edge
    masked = extract_rois(volume, mask, [near_edge], fov_mm=40.0, size=40, axial_slices=1, lung_margin_mm=3.0)
    unmasked = extract_rois(volume, None, [near_edge], fov_mm=40.0, size=40, axial_slices=1)
    assert masked[0, 0, 20, 0] == 0.0  # 9.5 mm beyond the lung edge
    assert unmasked[0, 0, 20, 0] == pytest.approx(_window(40.0), abs=0.02)
    assert masked[0, 0, 20, 8] == pytest.approx(_window(40.0), abs=0.02)  # 1.5 mm beyond: kept


def test_known_findings_from_a_luna16_csv(scene: tuple[Volume, LungMask, np.ndarray], tmp_path: Path) -> None:
    volume, mask, centre = scene
    csv_path = tmp_path / "annotations.csv"
    csv_path.write_text("seriesuid,coordX,coordY,coordZ,diameter_mm\n1.2.3,%f,%f,%f,6.5\n9.9,0,0,0,4\n" % tuple(centre))
    findings = read_annotations(csv_path)["1.2.3"]
    assert len(findings) == 1 and findings[0].diameter_mm == 6.5
    rois = rois_from_points(volume, mask, [f.center_xyz for f in findings])
    assert np.array_equal(rois, extract_rois(volume, mask, [centre]))
    with pytest.raises(ValueError):
        rois_from_points(volume, mask, [(500.0, 0.0, 0.0)])
    with pytest.raises(ValueError):
        extract_rois(volume, mask, [centre], views=("oblique",))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(scene: tuple[Volume, LungMask, np.ndarray]) -> None:
    volume, mask, centre = scene
    views = ("axial", "coronal", "sagittal")
    on_cpu = extract_rois(volume, mask, [centre], views=views)
    on_gpu = extract_rois(volume, mask, [centre], views=views, device="cuda")
    assert np.allclose(on_cpu, on_gpu, atol=1e-4)
