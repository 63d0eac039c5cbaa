"""``dicom-node evaluate retrieval`` on a tiny phantom set with a tiny untrained model."""

from __future__ import annotations

import json

import pytest
import torch

from ai.hashing.model import HashNet, HashNetConfig
from ai.hashing.train import weights_to_bytes, weights_version
from dicom_node.cli import main
from dicom_node.model import CARD_FILE, MODEL_FILE


@pytest.fixture
def tiny_model(tmp_path):
    torch.manual_seed(0)
    config = HashNetConfig(growth=4, stem_channels=8, embedding_dim=16)
    weights = weights_to_bytes(HashNet(config).eval())
    (tmp_path / MODEL_FILE).write_bytes(weights)
    (tmp_path / CARD_FILE).write_text(
        json.dumps({"version": weights_version(weights), "config": {"model": config.__dict__}})
    )
    return tmp_path


def test_table_rows_figures_and_json(tiny_model, tmp_path, capsys) -> None:
    out = tmp_path / "evaluation"
    assert (
        main(
            [
                "evaluate",
                "retrieval",
                "--phantom",
                "100",
                "--model",
                str(tiny_model),
                "--json",
                "--out",
                str(out),
            ]
        )
        == 0
    )
    metrics = json.loads(capsys.readouterr().out)
    rows = metrics["rows"]
    for bits in (24, 32, 48, 64):
        assert {f"{m} {bits}" for m in ("ours joint", "ours joint + float rerank")} <= set(rows)
        assert {"map", "map@100", "p@10", "map_texture", "map_size_texture"} <= set(
            rows[f"ours joint {bits}"]
        )
    # raw pixels of phantom nodules carry their size: ITQ beats a ranking by chance
    # (the share of same-size-class nodules in the database), the untrained model need not
    chance = 1.0 / 7.0
    assert rows["ITQ raw pixels 64"]["map"] > chance + 0.05
    assert rows["ITQ raw pixels 64"]["p@10"] > chance + 0.05
    assert "map_malignancy" not in rows["ours joint 64"]  # phantoms carry no malignancy
    assert {
        "ours shallow only 64",
        "ours middle only 64",
        "ours deep only 64",
        "ours float embedding",
        "ours float16 embedding",
    } <= set(rows)
    # float16 storage of the database embeddings leaves the rerank's mAP as it was
    before, after = rows["ours joint + float rerank 64"], rows["ours joint + float16 rerank 64"]
    assert abs(before["map"] - after["map"]) < 0.01
    assert metrics["n_queries"] > 0 and metrics["n_database"] > 0
    assert (out / "pr.png").stat().st_size > 5_000
    assert (
        json.loads((out / "metrics.json").read_text())["model_version"] == metrics["model_version"]
    )


def test_needs_a_source(tiny_model, capsys) -> None:
    assert main(["evaluate", "retrieval", "--model", str(tiny_model)]) == 2
    assert "give DIR, --nodules DIR or --phantom N" in capsys.readouterr().err
    assert main(["evaluate", "retrieval", "--train-folds", "--phantom", "10"]) == 2
