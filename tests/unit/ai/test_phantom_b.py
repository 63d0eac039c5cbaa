"""Phantom family B: real LIDC shapes, its own vessels and scanner, reachable like family A."""

from __future__ import annotations

import csv

import numpy as np
import pytest
from scipy import ndimage

from ai.classes import size_class
from ai.phantom import TEST_GEOMETRY, plan_patient, render_study
from ai.phantom.family_b import make_patient_b
from ai.phantom.grid_b import HU_LUNG_B, ScannerB, _reconstruct
from ai.phantom.lidc_shapes import load_shapes
from ai.phantom.patches import make_patches


@pytest.fixture(scope="module")
def study_b():
    return render_study(plan_patient(11, 0, anatomy_scale=0.6, family="b"), 0, TEST_GEOMETRY)


def test_shape_library_is_small_real_and_drawn_at_the_asked_size():
    library = load_shapes()
    assert len(library) > 2000
    assert {"ground-glass", "part-solid", "solid"} <= set(library.texture)
    index = int(np.argmax(library.diameter_mm > 12))
    step = 0.25
    axis = np.arange(-20, 20 + step, step)
    grid = np.stack(np.meshgrid(axis, axis, axis, indexing="ij"), axis=-1)[..., ::-1]
    for diameter in (6.0, 15.0):
        inside = library.occupancy(index, grid, diameter, angle=1.0, mirror=True)
        equivalent = (6 * inside.sum() * step**3 / np.pi) ** (1 / 3)
        assert equivalent == pytest.approx(diameter, rel=0.03)
    core = library.occupancy(index, grid, 15.0, core_fraction=0.5)
    assert 0 < core.sum() < 0.5 * library.occupancy(index, grid, 15.0).sum()


def test_shapes_come_only_from_the_patients_we_were_given(lidc_nodules_dir):
    with open(lidc_nodules_dir / "nodules.csv", newline="", encoding="utf-8") as handle:
        given = {row["patient_id"] for row in csv.DictReader(handle)}
    assert set(load_shapes().patient_id) <= given


def test_family_b_study_has_exact_truth_and_its_own_anatomy(study_b):
    volume = study_b.volume
    assert study_b.nodules
    for index, nodule in enumerate(study_b.nodules, start=1):
        assert nodule.size_class == size_class(nodule.diameter_mm)
        voxels = np.argwhere(study_b.nodule_mask == index)
        assert voxels.size, nodule.nodule_id
        centroid = volume.voxel_to_world(voxels.mean(axis=0))
        assert (
            np.linalg.norm(centroid - np.asarray(nodule.center_xyz))
            < 0.25 * nodule.diameter_mm + 2.5
        )
    lungs = (study_b.lung_mask > 0) & (study_b.nodule_mask == 0) & (volume.array < -600)
    assert abs(float(np.median(volume.array[lungs])) - HU_LUNG_B) < 40
    family_a = render_study(plan_patient(11, 0, anatomy_scale=0.6), 0, TEST_GEOMETRY)
    assert len(make_patient_b(7).vessels) != len(plan_patient(7, 0).patient.vessels)
    assert not np.array_equal(family_a.volume.array, volume.array)


def test_scanner_b_noise_has_a_ramp_spectrum_family_a_noise_does_not():
    zeros = np.zeros((4, 128, 128), np.float32)
    noise = _reconstruct(zeros, 1.0, 0.7, ScannerB(sharpen=0.0, blur_mm=0.3), 30.0, 5)
    power = np.abs(np.fft.rfft2(noise)) ** 2
    f = np.hypot(np.fft.fftfreq(128)[:, None], np.fft.rfftfreq(128)[None, :])
    low, mid = power[:, (f > 0.02) & (f < 0.08)].mean(), power[:, (f > 0.2) & (f < 0.3)].mean()
    assert noise.std() == pytest.approx(30.0, rel=0.05)
    assert mid > 2.0 * low  # CT (filtered back projection) noise: little power at low frequencies
    edge = zeros.copy()
    edge[:, :, 64:] = 100.0
    sharp = _reconstruct(edge, 1.0, 0.7, ScannerB(sharpen=1.0), 0.0, 5)
    assert sharp[0, 64, 66:70].max() > 105.0  # edge enhancement overshoots


def test_family_b_patches_label_their_pixels():
    batch = make_patches(12, seed=2, size_zyx=(16, 32, 32), patients=1, family="b")
    assert batch.has_nodule.any()
    for i in np.flatnonzero(batch.has_nodule & (batch.diameter_mm >= 8)):
        mask = batch.nodule_masks[i] > 0
        equivalent = (6 * mask.sum() / np.pi) ** (1 / 3)  # 1 mm voxels
        assert equivalent == pytest.approx(float(batch.diameter_mm[i]), rel=0.2)
        assert ndimage.label(mask)[1] >= 1
    again = make_patches(12, seed=2, size_zyx=(16, 32, 32), patients=1, family="b")
    assert np.array_equal(again.patches, batch.patches)
    with pytest.raises(ValueError):
        make_patches(2, family="c")
