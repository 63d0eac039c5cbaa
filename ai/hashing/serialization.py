"""Weights as bytes: safetensors serialization and the version id of a model.

Serving code (``dicom_node.model``) loads weights through this module, never
through the training loop in :mod:`ai.hashing.train`. Bytes in, bytes out:
the files are written and read by the caller. The bytes and version ids are
those of every network of the node (:mod:`ai.modelio`), with the prefix ``hn``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ai.modelio import load_state, state_bytes, version_id

if TYPE_CHECKING:  # torch is imported only to build or save a network, not for the version
    from ai.hashing.model import HashNet, HashNetConfig

__all__ = ["model_from_bytes", "weights_to_bytes", "weights_version"]


def weights_to_bytes(model: HashNet) -> bytes:
    """The model's state dict as safetensors bytes (deterministic for equal weights)."""
    return state_bytes(model)


def weights_version(weights: bytes) -> str:
    """Version id of serialized weights: ``"hn-"`` + 16 hex digits of their SHA-256."""
    return version_id(weights, "hn")


def model_from_bytes(weights: bytes, config: HashNetConfig) -> HashNet:
    """A :class:`HashNet` in eval mode from :func:`weights_to_bytes` output."""
    from ai.hashing.model import HashNet

    return load_state(HashNet(config), weights)
