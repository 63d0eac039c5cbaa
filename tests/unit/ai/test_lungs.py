"""Lung segmentation on small analytic chests (ellipsoid lungs, trachea, vessels, nodules)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ai.errors import NotALungCT
from ai.lungs import LungMask, close_mask, dilate_mask, erode_mask, segment_lungs
from ai.types import Volume
from tests.unit.ai.chests import Chest, make_chest


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return float(2 * np.logical_and(a, b).sum() / (a.sum() + b.sum()))


@pytest.fixture(scope="module")
def chest() -> Chest:
    return make_chest(nodules=(("right", "pleural", 12.0, 0.6), ("left", "solid", 9.0, 0.4)))


@pytest.fixture(scope="module")
def mask(chest: Chest) -> LungMask:
    return segment_lungs(chest.volume)


def test_lungs_match_truth_and_are_labelled_right_left(chest: Chest, mask: LungMask) -> None:
    assert mask.labels.shape == chest.volume.shape and mask.labels.dtype == np.uint8
    for value in (1, 2):
        assert dice(mask.labels == value, chest.lungs == value) > 0.95, value


def test_airway_is_removed(chest: Chest, mask: LungMask) -> None:
    assert mask.airway.sum() > 0
    top = chest.volume.shape[0] - 2
    nz, ny, nx = chest.volume.shape
    assert mask.airway[top, ny // 2, nx // 2]
    assert not mask.lungs[mask.airway].any()


def test_vessels_and_juxtapleural_nodules_are_inside(chest: Chest, mask: LungMask) -> None:
    for centre, _, kind in chest.nodules:
        zyx = np.round(chest.volume.world_to_voxel(centre)).astype(int)
        assert mask.lungs[tuple(zyx)], kind
    vessel_voxels = (chest.volume.array > -300) & (chest.lungs > 0)
    assert mask.lungs[vessel_voxels].mean() > 0.97


def test_touching_lungs_are_parted() -> None:
    touching = make_chest(touching=True, vessels=False, seed=1)
    result = segment_lungs(touching.volume)
    assert set(np.unique(result.labels)) == {0, 1, 2}
    for value in (1, 2):
        assert dice(result.labels == value, touching.lungs == value) > 0.93


def test_right_left_follow_world_coordinates_not_index_order() -> None:
    flipped = make_chest(vessels=False, flip_z=True, seed=2)
    result = segment_lungs(flipped.volume)
    for value in (1, 2):
        assert dice(result.labels == value, flipped.lungs == value) > 0.95
    assert result.airway.sum() > 0


def test_volume_without_lungs_raises() -> None:
    solid = Volume(array=np.full((10, 20, 20), 40.0, dtype=np.float32), spacing=(1.0, 1.0, 1.0), origin=(0, 0, 0))
    with pytest.raises(NotALungCT):
        segment_lungs(solid)


def test_morphology_is_dual_and_closing_only_adds() -> None:
    mask = torch.zeros((9, 9, 9), dtype=torch.bool)
    mask[4, 4, 4] = True
    grown = dilate_mask(mask, 1, ball=False)
    assert int(grown.sum()) == 7
    assert torch.equal(erode_mask(grown, 1, ball=False), mask)
    ring = torch.zeros((20, 20, 20), dtype=torch.bool)
    ring[5:15, 5:15, 5:15] = True
    ring[8:12, 8:12, 14] = False  # a notch
    closed = close_mask(ring, 3.0, (1.0, 1.0, 1.0))
    assert bool(closed[ring].all()) and bool(closed[9, 9, 14])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(chest: Chest, mask: LungMask) -> None:
    on_gpu = segment_lungs(chest.volume, device="cuda")
    assert np.array_equal(on_gpu.labels, mask.labels)
    assert np.array_equal(on_gpu.airway, mask.airway)


def test_phantom_lungs_match_the_truth_mask() -> None:
    from ai.phantom import TEST_GEOMETRY, synthesize_study

    study = synthesize_study(seed=11, geometry=TEST_GEOMETRY, anatomy_scale=0.6)
    result = segment_lungs(study.volume)
    for value in (1, 2):
        assert dice(result.labels == value, study.lung_mask == value) > 0.97, value
    assert not (result.airway & (study.lung_mask > 0)).any()
