"""Weights as bytes: safetensors serialization and the version id of a model.

Serving code (``dicom_node.model``) loads weights through this module, never
through the training loop in :mod:`ai.hashing.train`. Bytes in, bytes out:
the files are written and read by the caller.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported only to build or save a network, not for the version
    from ai.hashing.model import HashNet, HashNetConfig

__all__ = ["model_from_bytes", "weights_to_bytes", "weights_version"]


def weights_to_bytes(model: HashNet) -> bytes:
    """The model's state dict as safetensors bytes (deterministic for equal weights)."""
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    return bytes(save(state))


def weights_version(weights: bytes) -> str:
    """Version id of serialized weights: ``"hn-"`` + 16 hex digits of their SHA-256."""
    return "hn-" + hashlib.sha256(weights).hexdigest()[:16]


def model_from_bytes(weights: bytes, config: HashNetConfig) -> HashNet:
    """A :class:`HashNet` in eval mode from :func:`weights_to_bytes` output."""
    from safetensors.torch import load

    from ai.hashing.model import HashNet

    model = HashNet(config)
    model.load_state_dict(load(weights))
    return model.eval()
