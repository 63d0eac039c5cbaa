"""Retrieval on the real LIDC-IDRI crops (skipped when ``../shared/data`` is absent).

Two checks with thresholds, each on nodules its model never saw:

- a model trained with the shipped recipe on four folds of patients, for a
  few epochs and without phantoms (about four minutes on this loaded 2-core
  machine),
  retrieves the fifth fold's nodules by size class and by malignancy group
  well above ITQ on raw pixels of the same ROIs;
- ``dicom-node evaluate retrieval --nodules DIR --json`` runs the k-fold
  protocol with the shipped model and reports every relevance with its spread
  (a shipped model trained on all these crops must know them well, which
  says little of its quality: the closing figures come from
  ``--train-folds``).
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from ai.evaluation.retrieval import evaluate_retrieval_table
from ai.hashing.data import crop_rois
from ai.hashing.infer import encode
from ai.hashing.recipe import recipe, train_recipe
from ai.readers.lidc_crops import patient_folds
from dicom_node.cli import main
from dicom_node.model import load_model

# Each test trains or encodes the 595 crops: minutes on 2 shared cores, past the default 300 s.
pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.timeout(1200)]


@pytest.fixture(scope="module")
def crops(lidc_nodules_dir):
    config = recipe().model
    rois, skipped = crop_rois(lidc_nodules_dir, model=config)
    return rois, skipped


def test_a_model_of_four_folds_retrieves_the_fifth_by_size_and_malignancy(crops) -> None:
    rois, _ = crops
    fold_of = patient_folds(rois.patient.tolist(), 5)
    fold = np.array([fold_of[p] for p in rois.patient])
    queries, database = (
        rois.subset(np.flatnonzero(fold == 4)),
        rois.subset(np.flatnonzero(fold != 4)),
    )
    config = dataclasses.replace(recipe(epochs=8, seed=1), extra_fraction=0.0)
    net = train_recipe(database, None, config).model
    rows = evaluate_retrieval_table(
        queries, database, encode(net, queries.rois), encode(net, database.rois)
    ).rows
    ours, itq = rows["ours joint 64"], rows["ITQ raw pixels 64"]
    # measured (torch on 1 thread): mAP 0.414 vs ITQ 0.328 by size class, 0.741 vs 0.666 by
    # malignancy group; fold 4 was not used to tune the recipe (fold 0 was)
    assert ours["map"] >= itq["map"] + 0.06, (ours, itq)
    assert ours["map_malignancy"] >= itq["map_malignancy"] + 0.05, (ours, itq)


def test_kfold_command_reports_every_relevance_with_spread(
    crops, lidc_nodules_dir, tmp_path, capsys
) -> None:
    rois, skipped = crops
    argv = [
        "evaluate",
        "retrieval",
        "--nodules",
        str(lidc_nodules_dir),
        "--json",
        "--out",
        str(tmp_path),
    ]
    assert main(argv) == 0
    metrics = json.loads(capsys.readouterr().out)
    assert metrics["folds"] == 5 and not metrics["trained_per_fold"]
    assert metrics["n_queries"] == len(rois) and len(metrics["skipped"]) == len(skipped)
    ours = metrics["rows"]["ours joint 64"]
    for key in ("map", "map_malignancy", "map_texture", "map_size_texture", "map@100", "p@10"):
        assert f"{key}_sd" in ours
    assert len(metrics["per_fold"]) == 5
    if "LIDC-IDRI" in load_model("").card.get("training_data", ""):
        # The shipped model has seen these crops, yet it barely flatters itself on them:
        # hn-2db92959aa9adec9 measured 0.652 / 0.834 here against 0.605 / 0.819 for the same
        # recipe trained per fold without the fold it is tested on (README); the previous
        # model, hn-de652fe45535674a, 0.612 / 0.839.
        assert ours["map"] >= 0.58 and ours["map_malignancy"] >= 0.80
        assert ours["map"] >= metrics["rows"]["ITQ raw pixels 64"]["map"] + 0.2
