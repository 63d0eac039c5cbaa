"""Cross-family retrieval at a small size: trained on phantom family A, tested on family B.

Family B (other vessels, real LIDC shapes, another scanner) was never seen
in training; a model that only learned family A's look would rank B's
nodules no better than raw pixels. The full-size figures (both ways) are in
the README; this keeps the property in CI at a small size (about 4 minutes on
this loaded 2-core machine: 221 s and 288 s in two runs).

At this size the margin over raw pixels is thin and depends on the seeds:
mAP 0.526 against 0.372 for ITQ (train A seed 1, B seed 2 split in two) and
0.442 against 0.360 on the seeds below (database and queries from two seeds,
hence patient-disjoint; trained on one thread, the same 0.4418 in every run).
The threshold keeps what both runs show: the codes of a model that never saw
family B rank B's nodules by size better than ITQ on their raw pixels. The
full-size figures are the ones to quote.
"""

from __future__ import annotations

import dataclasses

import pytest

from ai.evaluation.retrieval import evaluate_retrieval_table
from ai.hashing.infer import encode
from ai.hashing.losses import LossConfig
from ai.hashing.recipe import phantom_pool, recipe
from ai.hashing.train import train

# Draws 352 phantom ROIs and trains a network: minutes on 2 shared cores, past the default 300 s.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


def test_trained_on_family_a_retrieves_family_b_by_size_class(one_thread) -> None:
    base = recipe(epochs=10, seed=4)
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
    train_a = phantom_pool(224, model=model, seed=11, families=("a",))
    net = train(train_a, config, progress=False).model
    database = phantom_pool(80, model=model, seed=12, families=("b",))
    queries = phantom_pool(48, model=model, seed=13, families=("b",))
    rows = evaluate_retrieval_table(
        queries, database, encode(net, queries.rois), encode(net, database.rois)
    ).rows
    ours, itq = rows["ours joint 64"]["map"], rows["ITQ raw pixels 64"]["map"]
    print(f"cross-family mAP {ours:.4f}, ITQ raw pixels {itq:.4f}")  # shown with pytest -s
    # raw pixels already carry much of the size; the network must add to it
    assert ours >= 0.40 and ours >= itq + 0.05, (ours, itq)
