"""ai.fpr: the false-positive reduction network's input, training loop, weights and scores."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from ai.fpr import FprModel, score_candidates
from ai.fpr.data import SampleSet, concatenate, label_candidates
from ai.fpr.infer import weights_to_bytes, weights_version
from ai.fpr.model import FprConfig, FprNet
from ai.fpr.patches import FEATURES, FILL, PATCH_SHAPE, TRAIN_PATCH_SHAPE, candidate_patches
from ai.fpr.train import FprTrainConfig, predict, roc_auc, train_fpr
from ai.measure import NoduleCandidate
from ai.types import Volume
from dicom_node.errors import NodeError
from dicom_node.model import CARD_FILE, MODEL_FILE, load_fpr, shipped_fpr

# Training on one thread: deterministic networks, thresholds that hold under load.
pytestmark = pytest.mark.usefixtures("one_thread")


def candidate(zyx, bbox, diameter=6.0, confidence=0.5) -> NoduleCandidate:
    return NoduleCandidate(
        center_zyx=tuple(float(v) for v in zyx),
        center_xyz=(float(zyx[2]), float(zyx[1]), float(zyx[0])),
        diameter_mm=diameter,
        long_axis_mm=diameter * 1.2,
        volume_mm3=np.pi / 6 * diameter**3,
        mean_hu=-100.0,
        peak_hu=50.0,
        texture="solid",
        bbox=bbox,
        confidence=confidence,
        laterality="right",
        elongation=1.1,
    )


def ball_volume() -> Volume:
    hu = np.full((40, 40, 40), -850.0, np.float32)
    z, y, x = np.ogrid[:40, :40, :40]
    hu[(z - 20) ** 2 + (y - 20) ** 2 + (x - 20) ** 2 <= 16] = 40.0
    return Volume(hu, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))


def test_patch_shows_only_the_candidates_own_slices_windowed() -> None:
    volume = ball_volume()
    nodule = candidate((20, 20, 20), ((16, 25), (16, 25), (16, 25)))
    patches = candidate_patches(volume, [nodule])
    assert patches.shape == (1, 2, *PATCH_SHAPE)
    image, visible = patches[0]
    zc, yc, xc = (s // 2 for s in PATCH_SHAPE)
    assert image[zc, yc, xc] == pytest.approx((40.0 + 1000.0) / 1400.0, abs=0.02)
    assert image[zc, 0, 0] == pytest.approx((-850.0 + 1000.0) / 1400.0, abs=0.01)
    # 9 slices of 1 mm plus 1 mm margins are visible, at 1.25 mm that is about 9 of 16 planes
    planes = visible.any(axis=(1, 2))
    assert 7 <= planes.sum() <= 10 and planes[zc]
    assert np.all(image[~visible.astype(bool)] == pytest.approx(FILL))
    # the crop's own data box hides the rest in-plane
    boxed = candidate_patches(volume, [nodule], data_box=((0, 40), (14, 26), (0, 40)))[0]
    assert boxed[1, zc, :, xc].sum() < visible[zc, :, xc].sum()
    assert candidate_patches(volume, []).shape == (0, 2, *PATCH_SHAPE)


def test_labels_follow_truth_with_a_margin_left_out() -> None:
    cands = [candidate((0, 0, 0), ((0, 1),) * 3) for _ in range(3)]
    cands = [
        dataclasses.replace(c, center_xyz=xyz)
        for c, xyz in zip(cands, [(1.0, 0, 0), (7.0, 0, 0), (30.0, 0, 0)], strict=True)
    ]
    assert label_candidates(cands, [((0.0, 0.0, 0.0), 8.0)]) == [1, -1, 0]
    assert label_candidates(cands, [], exclusions=[((30.0, 0, 0), 4.0)]) == [0, 0, -1]


def synthetic_samples(n: int, seed: int) -> SampleSet:
    """Bright balls (nodules) against bright rods (vessels), with noise."""
    rng = np.random.default_rng(seed)
    image = np.full((n, *TRAIN_PATCH_SHAPE), int(FILL * 255), np.uint8)
    label = (np.arange(n) % 2).astype(np.int8)
    z, y, x = np.ogrid[: TRAIN_PATCH_SHAPE[0], : TRAIN_PATCH_SHAPE[1], : TRAIN_PATCH_SHAPE[2]]
    c = [s / 2 for s in TRAIN_PATCH_SHAPE]
    for i in range(n):
        r = rng.uniform(2.5, 4.0)
        if label[i]:
            shape = (z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2 <= r**2
        else:
            shape = np.broadcast_to(
                (y - c[1]) ** 2 + (x - c[2]) ** 2 <= (r / 2) ** 2, image.shape[1:]
            )
        image[i][shape] = 200
        image[i] = np.clip(image[i] + rng.normal(0, 8, image.shape[1:]), 0, 255).astype(np.uint8)
    return SampleSet(
        image=image,
        visible=np.ones(image.shape, bool),
        features=rng.normal(0, 0.1, (n, len(FEATURES))).astype(np.float32),
        label=label,
        diameter_mm=np.full(n, 6.0, np.float32),
        source=np.array(["phantom"] * n),
        patient=np.array([f"p{i % 5}" for i in range(n)]),
    )


def test_training_separates_balls_from_rods_it_never_saw() -> None:
    torch.manual_seed(0)
    train = synthetic_samples(96, seed=1)
    held = synthetic_samples(32, seed=2)
    config = FprTrainConfig(epochs=3, batch_size=16, lr=3e-3, model=FprConfig(widths=(8, 8, 16)))
    result = train_fpr(train, config, held_out=held)
    assert len(result.history) == 3 and "held_out_auc" in result.history[-1]
    scores = predict(result.net, held)
    assert roc_auc(held.label, scores) > 0.9
    with pytest.raises(ValueError):
        train_fpr(train.subset(train.label == 1), config)


def test_roc_auc_counts_ties_half() -> None:
    assert roc_auc([0, 1], [0.1, 0.9]) == 1.0
    assert roc_auc([1, 0], [0.1, 0.9]) == 0.0
    assert roc_auc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5
    assert np.isnan(roc_auc([1, 1], [0.1, 0.2]))


def test_sample_sets_concatenate_and_round_trip(tmp_path) -> None:
    a, b = synthetic_samples(4, 0), synthetic_samples(3, 1)
    both = concatenate([a, b])
    assert len(both) == 7 and both.patient.tolist()[:4] == a.patient.tolist()
    np.savez(tmp_path / "s.npz", **both.to_arrays())
    with np.load(tmp_path / "s.npz") as arrays:
        again = SampleSet.from_arrays(dict(arrays))
    assert np.array_equal(again.image, both.image) and again.source.tolist() == both.source.tolist()


def test_model_folder_round_trips_and_refuses_other_weights(tmp_path) -> None:
    net = FprNet(FprConfig(widths=(4, 4, 8))).eval()
    weights = weights_to_bytes(net)
    card = {
        "version": weights_version(weights),
        "config": net.config.to_dict(),
        "operating_point": 0.4,
    }
    (tmp_path / MODEL_FILE).write_bytes(weights)
    (tmp_path / CARD_FILE).write_text(json.dumps(card))
    model = load_fpr(tmp_path)
    assert model.version == card["version"] and model.operating_point == 0.4
    volume = ball_volume()
    scored = score_candidates(model, volume, [candidate((20, 20, 20), ((16, 25),) * 3)])
    assert scored[0].probability is not None and 0.0 < scored[0].probability < 1.0
    card["version"] = "fpr-0000000000000000"
    (tmp_path / CARD_FILE).write_text(json.dumps(card))
    with pytest.raises(NodeError):
        load_fpr(tmp_path)
    with pytest.raises(NodeError):
        load_fpr(tmp_path / "missing")


def test_shipped_model_loads_with_its_operating_point() -> None:
    model = shipped_fpr("cpu")
    assert isinstance(model, FprModel) and model.version.startswith("fpr-")
    assert 0.05 <= model.operating_point <= 0.95
    assert "CC BY 3.0" in model.card["licence_of_training_data"]


def test_phantom_samples_are_the_same_with_two_worker_processes() -> None:
    from ai.fpr.data import phantom_samples
    from ai.phantom.render import TEST_GEOMETRY

    kwargs = {"family": "b", "geometry": TEST_GEOMETRY, "anatomy_scale": 0.6, "max_negatives": 5}
    one = phantom_samples(11, 2, **kwargs)
    two = phantom_samples(11, 2, workers=2, **kwargs)
    assert len(one) > 0 and (one.label == 1).any()
    assert sorted(set(one.patient.tolist())) == ["phantom-b-11-0", "phantom-b-11-1"]
    arrays = two.to_arrays()
    for key, value in one.to_arrays().items():
        np.testing.assert_array_equal(arrays[key], value, err_msg=key)
