"""Cross-family retrieval at a small size: trained on phantom family A, tested on family B.

Family B (other vessels, real LIDC shapes, another scanner) was never seen
in training; a model that only learned family A's look would rank B's
nodules no better than raw pixels. The full-size figures (both ways) are in
the README; this keeps the property in CI in well under a minute of training.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from ai.evaluation.retrieval import evaluate_retrieval_table
from ai.hashing.infer import encode
from ai.hashing.losses import LossConfig
from ai.hashing.recipe import phantom_pool, recipe
from ai.hashing.train import train

pytestmark = pytest.mark.slow


def test_trained_on_family_a_retrieves_family_b_by_size_class() -> None:
    base = recipe(epochs=10, seed=3)
    model = dataclasses.replace(
        base.model, growth=8, stem_channels=16, embedding_dim=32, n_malignancy=0
    )
    config = dataclasses.replace(
        base,
        model=model,
        batch_size=32,
        loss=LossConfig(
            similar=("size", "size", "size"), w_mask=1.0, w_diameter=5.0, w_ordinal=1.0
        ),
    )
    train_a = phantom_pool(224, model=model, seed=1, families=("a",))
    net = train(train_a, config, progress=False).model
    test_b = phantom_pool(128, model=model, seed=2, families=("b",))
    queries, database = test_b.subset(np.arange(48)), test_b.subset(np.arange(48, 128))
    rows = evaluate_retrieval_table(
        queries, database, encode(net, queries.rois), encode(net, database.rois)
    ).rows
    ours, itq = rows["ours joint 64"]["map"], rows["ITQ raw pixels 64"]["map"]
    assert ours >= 0.55 and ours >= itq + 0.2, (ours, itq)
