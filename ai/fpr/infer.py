"""Scoring candidates with the false-positive reduction network, and its shipped weights.

A model folder holds ``model.safetensors`` (the state dict) and
``model_card.json`` (its ``version``, the :class:`~ai.fpr.model.FprConfig`,
the operating point and how it was trained). The shipped folder is
``ai/weights/fpr`` (package data).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ai.errors import ModelLoadError
from ai.fpr.model import FprConfig, FprNet
from ai.fpr.patches import candidate_features, candidate_patches
from ai.measure import NoduleCandidate
from ai.modelio import load_state, state_bytes, version_id
from ai.types import Volume

__all__ = [
    "CARD_FILE",
    "WEIGHTS_FILE",
    "FprModel",
    "config_from_dict",
    "load_fpr",
    "model_from_bytes",
    "score_candidates",
    "shipped_fpr",
    "shipped_fpr_dir",
    "weights_to_bytes",
    "weights_version",
]

logger = logging.getLogger(__name__)

WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "model_card.json"


@dataclass(frozen=True)
class FprModel:
    """The network (eval mode) with its model card."""

    net: FprNet
    card: dict[str, Any]

    @property
    def version(self) -> str:
        """``"fpr-"`` and 16 hex digits of the weights' SHA-256."""
        return str(self.card["version"])

    @property
    def operating_point(self) -> float:
        """Probability threshold chosen for about 1 false positive per scan (model card)."""
        return float(self.card.get("operating_point", 0.5))


def weights_to_bytes(net: FprNet) -> bytes:
    """The state dict as safetensors bytes (deterministic for equal weights)."""
    return state_bytes(net)


def weights_version(weights: bytes) -> str:
    """Version id of serialized weights: ``"fpr-"`` + 16 hex digits of their SHA-256."""
    return version_id(weights, "fpr")


def model_from_bytes(weights: bytes, config: FprConfig) -> FprNet:
    """An :class:`FprNet` in eval mode from :func:`weights_to_bytes` output."""
    return load_state(FprNet(config), weights)


def config_from_dict(values: dict[str, Any]) -> FprConfig:
    """An :class:`FprConfig` from its JSON form (lists back to tuples)."""
    fields: dict[str, Any] = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    return FprConfig(**fields)


def shipped_fpr_dir() -> Path:
    """Folder of the false-positive reduction model shipped with the package."""
    return Path(str(resources.files("ai") / "weights" / "fpr"))


def load_fpr(folder: str | os.PathLike[str] | None = None) -> FprModel:
    """Load a model folder (default: the shipped one).

    Raises
    ------
    ai.errors.ModelLoadError
        Missing or unreadable files, or weights whose hash is not the card's version.
    """
    root = Path(folder) if folder is not None else shipped_fpr_dir()
    try:
        card = json.loads((root / CARD_FILE).read_text(encoding="utf-8"))
        weights = (root / WEIGHTS_FILE).read_bytes()
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"cannot read the FPR model in {root}: {exc}") from exc
    if weights_version(weights) != card.get("version"):
        raise ModelLoadError(f"{root / WEIGHTS_FILE} does not match its card's version")
    try:
        net = model_from_bytes(weights, config_from_dict(card.get("config", {})))
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ModelLoadError(f"{root / WEIGHTS_FILE}: {exc}") from exc
    logger.info("FPR model %s from %s", card["version"], root)
    return FprModel(net=net, card=card)


@functools.lru_cache(maxsize=4)
def shipped_fpr(device: str = "cpu") -> FprModel:
    """The shipped model on ``device``, loaded once per process and device (read-only use)."""
    model = load_fpr()
    model.net.to(torch.device(device)).eval()
    return model


def score_candidates(
    model: FprModel,
    volume: Volume,
    candidates: Sequence[NoduleCandidate],
    *,
    device: str | torch.device = "cpu",
    batch_size: int = 128,
    data_box: tuple[tuple[int, int], tuple[int, int], tuple[int, int]] | None = None,
) -> tuple[NoduleCandidate, ...]:
    """The candidates with their ``probability`` of being a nodule.

    Parameters
    ----------
    model : FprModel
    volume : Volume
        The volume the candidates were found in.
    candidates : sequence of NoduleCandidate
    device : str or torch.device
        Where patches are cut and the network runs (the model is moved there).
    batch_size : int
        Candidates per forward pass.
    data_box : tuple, optional
        Voxel bounds of real data (see :func:`ai.fpr.patches.candidate_patches`).

    Returns
    -------
    tuple of NoduleCandidate
        Same order, ``probability`` set.
    """
    if not candidates:
        return ()
    dev = torch.device(device)
    net = model.net.to(dev).eval()
    probabilities: list[np.ndarray] = []
    with torch.inference_mode():
        for start in range(0, len(candidates), batch_size):
            batch = candidates[start : start + batch_size]
            patches = candidate_patches(
                volume, batch, shape=net.config.patch_shape, data_box=data_box, device=dev
            )
            features = np.stack([candidate_features(c) for c in batch])
            logits = net(torch.from_numpy(patches).to(dev), torch.from_numpy(features).to(dev))
            probabilities.append(torch.sigmoid(logits.float()).cpu().numpy())
    p = np.concatenate(probabilities)
    return tuple(
        dataclasses.replace(c, probability=float(v)) for c, v in zip(candidates, p, strict=True)
    )
