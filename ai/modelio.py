"""Weights of torch modules as safetensors bytes, and the version id named after them.

One definition for every network of the node (hashing, false-positive
reduction): the state dict as deterministic safetensors bytes, a version id
made of a prefix and 16 hex digits of their SHA-256, and the way back. Bytes
in, bytes out: the node reads and writes the files (``dicom_node.model``).
torch and safetensors are imported only to save or load a network, so a node
that only checks a version never imports them.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from torch import nn

__all__ = ["load_state", "state_bytes", "version_id"]

M = TypeVar("M", bound="nn.Module")


def state_bytes(module: nn.Module) -> bytes:
    """The module's state dict as safetensors bytes (deterministic for equal weights)."""
    from safetensors.torch import save

    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    return bytes(save(state))


def version_id(weights: bytes, prefix: str) -> str:
    """``prefix`` + ``"-"`` + 16 hex digits of the SHA-256 of serialized weights."""
    return f"{prefix}-" + hashlib.sha256(weights).hexdigest()[:16]


def load_state(module: M, weights: bytes) -> M:
    """Load :func:`state_bytes` output into ``module`` and return it in eval mode."""
    from safetensors.torch import load

    module.load_state_dict(load(weights))
    return module.eval()
