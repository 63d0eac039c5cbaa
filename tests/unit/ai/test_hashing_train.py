"""ai.hashing.train and ``dicom-node train``: tiny CPU runs, resume, weights and model card."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from ai.hashing.infer import encode
from ai.hashing.model import HashNetConfig
from ai.hashing.train import (
    RoiSet,
    TrainConfig,
    evaluate_retrieval,
    model_from_bytes,
    train,
    weights_to_bytes,
    weights_version,
)

TINY = HashNetConfig(
    roi_size=16, n_bits=24, growth=4, block_layers=2, stem_channels=8, embedding_dim=8
)

# Training on one thread: deterministic networks, thresholds that hold under load.
pytestmark = pytest.mark.usefixtures("one_thread")


def toy_rois(n: int, seed: int = 0, size: int = 16) -> RoiSet:
    """Discs whose radius follows the size class and whose brightness follows the texture."""
    rng = np.random.default_rng(seed)
    sizes = rng.integers(1, 8, n)
    textures = rng.integers(0, 3, n)
    yy, xx = np.mgrid[:size, :size] - (size - 1) / 2
    r2 = yy**2 + xx**2
    rois = np.empty((n, 3, size, size), np.float32)
    for i in range(n):
        radius = 0.8 * sizes[i]
        level = (0.9, 0.6, 0.4)[textures[i]]
        disc = (r2 <= radius**2) * level
        if textures[i] == 1:  # part-solid: a solid core
            disc = np.where(r2 <= (radius / 2) ** 2, 0.9, disc)
        rois[i] = np.clip(disc + rng.normal(0, 0.03, (3, size, size)) + 0.1, 0, 1)
    return RoiSet(rois, sizes.astype(np.int64), textures.astype(np.int64), np.arange(n) // 4)


def _config(epochs: int) -> TrainConfig:
    return TrainConfig(epochs=epochs, batch_size=16, lr=5e-3, model=TINY)


def test_resume_after_a_crash_ends_with_the_same_weights() -> None:
    data = toy_rois(48)
    full = train(data, _config(2), progress=False)
    saved: dict = {}

    def crash_after_first(epoch: int, state: dict) -> None:
        saved.update(state)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(data, _config(2), on_epoch=crash_after_first, progress=False)
    resumed = train(data, _config(2), resume=saved, progress=False)
    assert [h["epoch"] for h in resumed.history] == [1.0, 2.0]
    for key, value in full.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[key], value, rtol=0, atol=0)
    assert full.history == resumed.history


def test_weights_bytes_round_trip_and_version_follows_the_weights() -> None:
    data = toy_rois(32)
    model = train(data, _config(1), progress=False).model
    blob = weights_to_bytes(model)
    assert weights_to_bytes(model) == blob
    again = model_from_bytes(blob, TINY)
    a, b = encode(model, data.rois), encode(again, data.rois)
    np.testing.assert_array_equal(a.rows(), b.rows())
    with torch.no_grad():
        next(again.parameters()).add_(1e-3)
    assert weights_version(weights_to_bytes(again)) != weights_version(blob)
    assert weights_version(blob).startswith("hn-") and len(weights_version(blob)) == 19


def test_split_by_patient_is_disjoint() -> None:
    data = toy_rois(40)
    tr, out = data.split_by_patient(0.3, seed=1)
    assert len(tr) + len(out) == 40 and len(out) == 12
    assert not set(tr.patient.tolist()) & set(out.patient.tolist())


def test_train_cli_writes_weights_card_and_resumes(tmp_path) -> None:
    from dicom_node.cli import main
    from dicom_node.model import load_model_dir

    data = toy_rois(64)
    npz = tmp_path / "rois.npz"
    np.savez(
        npz, rois=data.rois, size_class=data.size_class, texture=data.texture, patient=data.patient
    )
    out = tmp_path / "model"
    argv = [
        "train",
        "--rois",
        str(npz),
        "--out",
        str(out),
        "--bits",
        "24",
        "--growth",
        "4",
        "--batch-size",
        "16",
        "--no-progress",
        "--device",
        "cpu",
    ]
    assert main([*argv, "--epochs", "1"]) == 0
    card = json.loads((out / "model_card.json").read_text())
    loaded = load_model_dir(out)
    model, card2 = loaded.net, loaded.card
    assert (
        card2["version"]
        == card["version"]
        == weights_version((out / "model.safetensors").read_bytes())
    )
    assert card["data"]["n_train"] + card["data"]["n_held_out"] == 64
    # the card reports what the model does on the held-out patients
    train_set, held_out = data.split_by_patient(0.2, seed=0)
    again = evaluate_retrieval(model, held_out, train_set)
    assert card["metrics_held_out"]["map"] == pytest.approx(again["map"])
    assert card["metrics_held_out"]["p@10"] == pytest.approx(again["p@10"])
    assert "Held-out retrieval" in (out / "MODEL_CARD.md").read_text()
    assert model.config.n_bits == 24
    assert main([*argv, "--epochs", "2", "--resume"]) == 0
    resumed = json.loads((out / "model_card.json").read_text())
    assert [h["epoch"] for h in resumed["history"]] == [1.0, 2.0]
    assert resumed["version"] != card["version"]
    assert main(["train", "--rois", str(tmp_path / "missing.npz"), "--out", str(out)]) == 2


@pytest.mark.slow
def test_phantom_rois_are_labelled_stacks_centred_on_nodules() -> None:
    from ai.hashing.data import phantom_rois

    cfg = HashNetConfig(roi_size=32, in_channels=3)
    data = phantom_rois(12, model=cfg, seed=5, positive_fraction=0.75)
    assert data.rois.shape == (12, 3, 32, 32) and data.rois.dtype == np.float32
    assert float(data.rois.min()) >= 0.0 and float(data.rois.max()) <= 1.0
    nodule = data.size_class > 0
    assert (
        nodule.any() and (data.texture[nodule] >= 0).all() and (data.texture[~nodule] == -1).all()
    )
    # a nodule is denser than the lung around it: the centre outshines the ROI's median
    centre = data.rois[nodule, 1, 15:17, 15:17].mean(axis=(1, 2))
    assert (centre > np.median(data.rois[nodule, 1], axis=(1, 2))).mean() >= 0.8
    loss_ready = RoiSet(data.rois, data.size_class, data.texture, data.patient)
    assert (
        len(
            train(
                loss_ready, TrainConfig(epochs=1, batch_size=6, model=cfg), progress=False
            ).history
        )
        == 1
    )


def test_optional_heads_learn_diameter_and_malignancy_and_configs_round_trip() -> None:
    from ai.hashing.losses import LossConfig
    from ai.hashing.train import concat_rois

    data = toy_rois(160, seed=3)
    diameter = (1.6 * data.size_class).astype(np.float32)  # the discs' diameter in pixels
    group = (data.size_class >= 4).astype(np.int64)
    yy, xx = np.mgrid[:16, :16] - 7.5
    masks = (yy**2 + xx**2 <= (0.8 * data.size_class[:, None, None]) ** 2)[:, None]
    labelled = RoiSet(
        data.rois,
        data.size_class,
        data.texture,
        data.patient,
        malignancy=group,
        diameter_mm=diameter,
        masks=np.repeat(masks, 3, axis=1).astype(np.float16),
    )
    train_set, held_out = labelled.split_by_patient(0.25, seed=0)
    model = HashNetConfig(
        **{**TINY.__dict__, "n_malignancy": 2, "diameter_head": True, "mask_head": True}
    )
    loss = LossConfig(
        similar=("size", "malignancy", "size"),
        w_malignancy=1.0,
        w_mask=1.0,
        w_diameter=5.0,
        w_ordinal=1.0,
    )
    config = TrainConfig(epochs=12, batch_size=16, lr=5e-3, model=model, loss=loss, shift_px=1)
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    result = train(
        train_set, config, progress=False, extra=concat_rois(train_set.subset(np.arange(16)))
    )
    assert {"ce_malignancy", "mask", "diameter", "ordinal"} <= set(result.history[-1])
    codes = encode(result.model, held_out.rois)
    assert codes.diameter_mm is not None and codes.malignancy_probs is not None
    measured = np.corrcoef(codes.diameter_mm, held_out.diameter_mm)[0, 1]
    assert measured > 0.9, measured
    accuracy = ((codes.malignancy_probs[:, 1] > 0.5) == (held_out.malignancy == 1)).mean()
    assert accuracy > 0.85, accuracy
    plain = encode(model_from_bytes(weights_to_bytes(result.model), model), held_out.rois)
    assert np.array_equal(plain.deep, codes.deep)
    assert encode(train(data, _config(1), progress=False).model, data.rois).diameter_mm is None


def test_augmentation_moves_masks_with_the_image_and_is_reproducible() -> None:
    from ai.hashing.augment import augment_batch

    rois = np.zeros((4, 3, 16, 16), np.float32)
    rois[:, :, 4:7, 9:12] = 0.8
    masks = (rois > 0).astype(np.float32)
    x1, m1 = augment_batch(rois, masks, np.random.default_rng(5), scanner=True, shift_px=2)
    x2, m2 = augment_batch(rois, masks, np.random.default_rng(5), scanner=True, shift_px=2)
    assert np.array_equal(x1, x2) and np.array_equal(m1, m2)
    assert x1.min() >= 0.0 and x1.max() <= 1.0 and not np.array_equal(x1, rois)
    for i in range(4):  # the bright square is still where its mask is
        inside, outside = x1[i][m1[i] > 0.5], x1[i][m1[i] < 0.5]
        assert m1[i].sum() == masks[i].sum()
        assert inside.mean() > outside.mean() + 0.5


def test_the_cli_defaults_are_the_shipped_recipe() -> None:
    """``train --nodules`` and ``evaluate retrieval --train-folds`` default to the recipe.

    The CLI cannot import :mod:`ai.hashing.recipe` to build its parser (it loads
    torch), so it repeats the two numbers; this keeps them equal.
    """
    from ai.hashing.recipe import EPOCHS, PHANTOMS, recipe
    from dicom_node.cli import build_parser

    parser = build_parser()
    train = parser.parse_args(["train", "--nodules", "x", "--out", "y"])
    folds = parser.parse_args(["evaluate", "retrieval", "--nodules", "x", "--train-folds"])
    assert (train.epochs, train.with_phantoms) == (EPOCHS, PHANTOMS) == (40, 500)
    assert (folds.epochs, folds.train_phantoms) == (EPOCHS, PHANTOMS)
    assert recipe().epochs == EPOCHS
