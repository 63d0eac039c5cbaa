"""Scoring candidates with the false-positive reduction network; the model from bytes.

A model is its weights (safetensors bytes, :mod:`ai.modelio`) and its card
(its ``version``, the :class:`~ai.fpr.model.FprConfig`, the operating point
and how it was trained); the node reads them from a model folder
(``dicom_node.model.load_fpr``; the shipped one is ``ai/weights/fpr``).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
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
    "FprModel",
    "config_from_dict",
    "fpr_from_bytes",
    "model_from_bytes",
    "score_candidates",
    "weights_to_bytes",
    "weights_version",
]

logger = logging.getLogger(__name__)


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


def fpr_from_bytes(weights: bytes, card: dict[str, Any]) -> FprModel:
    """The model from its weights and card (the node reads the folder: ``dicom_node.model``).

    Raises
    ------
    ai.errors.ModelLoadError
        Weights whose hash is not the card's version, or that do not fit its config.
    """
    if weights_version(weights) != card.get("version"):
        raise ModelLoadError(f"FPR weights do not match their card's version {card.get('version')}")
    try:
        net = model_from_bytes(weights, config_from_dict(card.get("config", {})))
    except (RuntimeError, TypeError, ValueError) as exc:
        raise ModelLoadError(f"FPR weights {card.get('version')}: {exc}") from exc
    return FprModel(net=net, card=card)


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
