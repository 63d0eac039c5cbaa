"""The model shipped in ai/weights: it loads, its version is its weights' hash, it retrieves."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ai.hashing.data import phantom_rois
from ai.hashing.infer import encode
from ai.hashing.metrics import joint_distances
from ai.hashing.train import weights_version
from dicom_node.model import CARD_FILE, MODEL_FILE, load_model, shipped_model_dir


@pytest.fixture(scope="module")
def shipped():
    model = load_model("")
    assert model is not None, "no model shipped in ai/weights"
    return model


def test_version_is_the_hash_of_the_shipped_weights(shipped) -> None:
    folder = shipped_model_dir()
    card = json.loads((folder / CARD_FILE).read_text())
    assert shipped.version == card["version"] == weights_version((folder / MODEL_FILE).read_bytes())
    assert (folder / MODEL_FILE).stat().st_size <= 20 * 2**20
    assert (folder / "MODEL_CARD.md").exists()


def test_codes_are_deterministic_and_similar_nodules_share_the_size_class(shipped) -> None:
    config = shipped.net.config
    # Two seeds never used in training (0 and 10000 were): unseen synthetic patients.
    database = phantom_rois(120, model=config, seed=515)
    queries = phantom_rois(40, model=config, seed=516)
    database = database.subset(np.flatnonzero(database.size_class > 0))
    queries = queries.subset(np.flatnonzero(queries.size_class > 0))
    first = encode(shipped.net, queries.rois)
    again = encode(shipped.net, queries.rois, batch_size=7)
    for layer in ("shallow", "middle", "deep"):
        np.testing.assert_array_equal(getattr(first, layer), getattr(again, layer))
    db = encode(shipped.net, database.rois)
    distances = joint_distances((first.shallow, first.middle, first.deep), (db.shallow, db.middle, db.deep))
    top5 = np.argsort(distances, axis=1, kind="stable")[:, :5]
    same = (database.size_class[top5] == queries.size_class[:, None]).mean(axis=1)
    # Most query nodules: at least 3 of their 5 nearest share the size class
    # (an untrained network scores about 0.2 here).
    assert (same >= 0.6).mean() > 0.5, f"{(same >= 0.6).mean():.2f} of queries"
