"""ai.phantom: anatomy values, exact truth, determinism, coverage of the nodule kinds."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy import ndimage

from ai.classes import size_class
from ai.phantom import (
    LOCATIONS,
    SHAPES,
    TEST_GEOMETRY,
    TEXTURES,
    plan_patient,
    render_study,
    synthesize_study,
)
from ai.phantom.nodules import plan_tracks


@pytest.fixture(scope="module")
def plan():
    return plan_patient(5, 1, anatomy_scale=0.6)


@pytest.fixture(scope="module")
def study(plan):
    return render_study(plan, 0, TEST_GEOMETRY)


def test_same_seed_same_study_other_seed_other_study(plan, study):
    again = render_study(plan_patient(5, 1, anatomy_scale=0.6), 0, TEST_GEOMETRY)
    assert np.array_equal(again.volume.array, study.volume.array)
    assert again.nodules == study.nodules
    other = synthesize_study(6, patient_index=1, geometry=TEST_GEOMETRY, anatomy_scale=0.6)
    assert other.nodules != study.nodules


def test_hounsfield_units_look_like_chest_ct(study):
    hu = study.volume.array.astype(np.float32)
    lungs = study.lung_mask > 0
    parenchyma = lungs & (study.nodule_mask == 0) & (hu < -600)
    assert -900 < np.median(hu[parenchyma]) < -800
    corner = hu[:, :8, :8]
    assert abs(float(corner.mean()) + 1000) < 15  # air, clipped at -1024 below
    assert 12 < float(hu[:, :8, :8].std()) < 32  # scanner noise
    assert (hu > 300).sum() > 500  # ribs and spine (partial volume at 2.5 mm)
    body_soft = ((hu > -150) & (hu < 100)).mean()
    assert body_soft > 0.08
    assert study.volume.array.dtype == np.int16


def test_lung_labels_right_is_negative_x_and_airways_are_outside(study):
    volume = study.volume
    for label, sign in ((1, -1), (2, 1)):
        zyx = np.argwhere(study.lung_mask == label).mean(axis=0)
        x = volume.voxel_to_world(zyx)[0]
        assert np.sign(x) == sign
    trachea_air = (study.volume.array < -950) & (study.lung_mask == 0)
    # the trachea is internal air but not lung: present in the upper slices near the midline
    top = trachea_air[-10:, :, 54:74]
    assert top.any()


def test_nodule_truth_is_exact(study):
    volume = study.volume
    assert study.nodules
    for index, nodule in enumerate(study.nodules, start=1):
        assert nodule.size_class == size_class(nodule.diameter_mm)
        assert (
            nodule.texture in TEXTURES and nodule.shape in SHAPES and nodule.location in LOCATIONS
        )
        voxels = np.argwhere(study.nodule_mask == index)
        assert voxels.size, nodule.nodule_id
        centroid = volume.voxel_to_world(voxels.mean(axis=0))
        assert np.linalg.norm(centroid - np.asarray(nodule.center_xyz)) < 1.0, nodule
        # the nodule is inside its lung in the truth lung mask
        assert (study.lung_mask[study.nodule_mask == index] == nodule.lung).all()
        if nodule.shape == "round":
            voxel_volume = float(np.prod(volume.spacing))
            equivalent = 2 * (3 * len(voxels) * voxel_volume / (4 * np.pi)) ** (1 / 3)
            assert abs(equivalent - nodule.diameter_mm) < max(0.2 * nodule.diameter_mm, 2.5), nodule


def test_juxtapleural_nodules_touch_the_pleura_and_isolated_ones_do_not(plan):
    study = render_study(plan, 0, dataclasses.replace(TEST_GEOMETRY, pixel_mm=1.5, matrix=200))
    seen = set()
    for index, nodule in enumerate(study.nodules, start=1):
        grown = ndimage.binary_dilation(study.nodule_mask == index, iterations=2)
        touches_outside = bool((study.lung_mask[grown] == 0).any())
        if nodule.location == "juxtapleural":
            assert touches_outside, nodule
        if nodule.location == "isolated":
            assert not touches_outside, nodule
        seen.add(nodule.location)
    assert {"juxtapleural", "isolated"} <= seen or "juxtavascular" in seen


def test_without_nodules_differs_only_at_the_nodules(plan, study):
    bare = render_study(plan, 0, TEST_GEOMETRY, with_nodules=False)
    diff = study.volume.array.astype(np.int32) - bare.volume.array
    near = ndimage.binary_dilation(study.nodule_mask > 0, iterations=3)
    assert np.abs(diff[~near]).max() <= 1
    assert np.abs(diff[near]).max() > 100
    assert bare.nodules == study.nodules


def test_a_small_cohort_covers_every_size_class_texture_shape_and_location():
    tracks = [t for p in range(7) for t in plan_tracks(3, p, n_tracks=4, n_studies=2)]
    first = [t.diameters_mm[0] or t.diameters_mm[1] for t in tracks]
    assert {size_class(d) for d in first} == set(range(1, 8))
    assert {t.texture for t in tracks} == set(TEXTURES)
    assert {t.shape for t in tracks} == set(SHAPES)
    assert {t.location for t in tracks} == set(LOCATIONS)
    assert all(min(first) >= 3.0 and max(first) <= 30.0 for _ in [0])
    assert any(
        t.diameters_mm[0] == 0.0 < t.diameters_mm[1] for t in tracks
    )  # new lesion at follow-up


def test_follow_up_keeps_track_ids_and_growing_lesions_grow(plan, study):
    follow = render_study(plan, 1, TEST_GEOMETRY, noise_hu=0)
    prior = {n.track_id: n for n in study.nodules}
    later = {n.track_id: n for n in follow.nodules}
    assert set(prior) <= set(later)
    assert any(later[k].diameter_mm > prior[k].diameter_mm * 1.1 for k in prior)
    assert any(later[k].diameter_mm == prior[k].diameter_mm for k in prior)
    assert all(later[k].nodule_id != prior[k].nodule_id for k in prior)
    # a different table position: same lesion, different world centre
    k = next(iter(prior))
    assert not np.allclose(later[k].center_xyz, prior[k].center_xyz)


def test_bad_geometry_is_refused():
    with pytest.raises(ValueError):
        dataclasses.replace(TEST_GEOMETRY, matrix=4)
    with pytest.raises(ValueError):
        render_study(plan_patient(0, 0, anatomy_scale=0.6, n_studies=1), 1, TEST_GEOMETRY)


def test_patch_mode_labels_match_the_pixels():
    from ai.phantom.patches import make_patches

    batch = make_patches(24, seed=4, size_zyx=(16, 32, 32), spacing_mm=1.5, patients=2)
    assert batch.patches.shape == (24, 16, 32, 32) and batch.patches.dtype == np.int16
    assert 0 < batch.has_nodule.sum() < 24
    for i in range(len(batch)):
        mask = batch.nodule_masks[i] > 0
        if batch.has_nodule[i]:
            assert batch.size_class[i] == size_class(float(batch.diameter_mm[i]))
            assert min(batch.texture[i], batch.shape[i], batch.location[i]) >= 0
            assert np.abs(batch.offset_mm[i]).max() <= 2.0 + 1e-6
            if batch.diameter_mm[i] >= 6:
                assert mask.any()
                centre = (np.array(batch.patches.shape[1:]) - 1) / 2.0
                found = np.argwhere(mask).mean(axis=0)
                expected_zyx = centre + batch.offset_mm[i][::-1] / batch.spacing_mm
                assert np.linalg.norm(found - expected_zyx) * batch.spacing_mm < 1.0
        else:
            assert not mask.any() and batch.size_class[i] == 0 and batch.texture[i] == -1
            # negatives are centred in the lungs
            assert batch.lung_masks[i][8, 16, 16] > 0 or np.median(batch.patches[i]) < -500
    again = make_patches(24, seed=4, size_zyx=(16, 32, 32), spacing_mm=1.5, patients=2)
    assert np.array_equal(again.patches, batch.patches)


@pytest.mark.slow
def test_patch_mode_in_worker_processes_gives_the_same_patches():
    from ai.phantom.patches import make_patches

    # torch has started its threads in this process: workers must still not deadlock
    synthesize_study(0, geometry=TEST_GEOMETRY, anatomy_scale=0.6, n_tracks=0)
    kwargs = {"seed": 8, "size_zyx": (8, 16, 16), "spacing_mm": 2.0, "patients": 1}
    parallel = make_patches(70, workers=2, **kwargs)
    serial = make_patches(70, workers=1, **kwargs)
    assert np.array_equal(parallel.patches, serial.patches)
    assert np.array_equal(parallel.size_class, serial.size_class)


def test_nodule_attenuation_follows_texture():
    checked = set()
    for patient in range(2):
        study = synthesize_study(
            3, patient_index=patient, geometry=TEST_GEOMETRY, anatomy_scale=0.6, noise_hu=0
        )
        for index, nodule in enumerate(study.nodules, start=1):
            if nodule.diameter_mm < 10:
                continue
            core = ndimage.binary_erosion(study.nodule_mask == index, iterations=1)
            median = float(np.median(study.volume.array[core]))
            zyx = tuple(np.rint(study.volume.world_to_voxel(nodule.center_xyz)).astype(int))
            centre = float(study.volume.array[zyx])
            if nodule.texture == "ground-glass":
                assert -750 < median < -250 and centre < -250, nodule
            elif nodule.texture == "solid":
                assert median > -150, nodule
            else:  # part-solid: a solid core in ground glass
                assert centre > -200 and median < centre - 100, nodule
            checked.add(nodule.texture)
    assert len(checked) >= 2


def test_rotated_follow_up_keeps_its_truth_exact_in_its_own_world(plan, study):
    from ai.phantom.render import rotation_matrix, study_rotation_deg

    assert study_rotation_deg(plan, 0) == (0.0, 0.0, 0.0)
    angles = study_rotation_deg(plan, 1)
    assert 0.2 < max(abs(a) for a in angles) <= 4.0
    first = render_study(plan, 0, TEST_GEOMETRY, motion=True)
    assert np.array_equal(first.volume.array, study.volume.array)
    still = render_study(plan, 1, TEST_GEOMETRY, noise_hu=0)
    turned = render_study(plan, 1, TEST_GEOMETRY, noise_hu=0, motion=True)
    assert turned.volume.shape == still.volume.shape and turned.volume.origin == still.volume.origin
    rotation = rotation_matrix(angles)
    for label, (a, b) in enumerate(zip(still.nodules, turned.nodules, strict=True), start=1):
        assert a.track_id == b.track_id and a.diameter_mm == b.diameter_mm
        moved = np.linalg.norm(np.subtract(a.center_xyz, b.center_xyz))
        assert moved > 0.5  # the lesion moved with the patient
        zyx = np.rint(turned.volume.world_to_voxel(b.center_xyz)).astype(int)
        assert turned.nodule_mask[tuple(zyx)] == label
        # the mask's centroid is where the truth says
        voxels = np.argwhere(turned.nodule_mask == label)
        centroid = turned.volume.voxel_to_world(voxels.mean(axis=0))
        error = np.linalg.norm(centroid - np.asarray(b.center_xyz))
        assert error < 0.6 * TEST_GEOMETRY.pixel_mm + 1.0
    assert not np.allclose(rotation, np.eye(3))
