"""ROI stacks → :class:`~ai.hashing.codes.HashCodes` (eval mode, no gradients)."""

from __future__ import annotations

import logging

import numpy as np
import numpy.typing as npt
import torch

from ai.hashing.codes import HashCodes, pack_signs
from ai.hashing.model import HashNet

__all__ = ["encode"]

logger = logging.getLogger(__name__)


def encode(
    model: HashNet,
    rois: npt.NDArray[np.floating],
    *,
    device: str | torch.device = "cpu",
    batch_size: int = 64,
    model_version: str | None = None,
) -> HashCodes:
    """Hash codes, embeddings and class probabilities of ROI stacks.

    Deterministic for fixed weights: the model runs in eval mode (batch-norm
    running statistics) under ``torch.inference_mode``, in float32. The model
    is left in eval mode on ``device``.

    Parameters
    ----------
    model : HashNet
        Trained network.
    rois : numpy.ndarray
        ``(n, C, H, W)`` float32 in ``[0, 1]``, ``C``/``H``/``W`` as the model's config.
    device : str or torch.device
        Where to run (``"cpu"``, ``"cuda"``).
    batch_size : int
        ROIs per forward pass.
    model_version : str, optional
        Recorded in the result.

    Returns
    -------
    HashCodes
        ``n`` rows.
    """
    cfg = model.config
    x = np.asarray(rois, dtype=np.float32)
    expected = (cfg.in_channels, cfg.roi_size, cfg.roi_size)
    if x.ndim != 4 or x.shape[1:] != expected:
        raise ValueError(f"rois must be (n, {', '.join(map(str, expected))}), got {x.shape}")
    if x.size and (float(x.min()) < 0.0 or float(x.max()) > 1.0):
        raise ValueError("rois must be scaled to [0, 1]")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    dev = torch.device(device)
    model.to(dev).eval()
    parts: dict[str, list[npt.NDArray[np.float32]]] = {
        k: []
        for k in (
            "shallow",
            "middle",
            "deep",
            "embedding",
            "size",
            "texture",
            "malignancy",
            "diameter",
        )
    }
    with torch.inference_mode():
        for start in range(0, x.shape[0], batch_size):
            batch = torch.from_numpy(x[start : start + batch_size]).to(dev, non_blocking=True)
            out = model(batch)
            parts["shallow"].append(out.shallow.float().cpu().numpy())
            parts["middle"].append(out.middle.float().cpu().numpy())
            parts["deep"].append(out.deep.float().cpu().numpy())
            parts["embedding"].append(out.embedding.float().cpu().numpy())
            parts["size"].append(torch.softmax(out.size_logits.float(), dim=1).cpu().numpy())
            parts["texture"].append(torch.softmax(out.texture_logits.float(), dim=1).cpu().numpy())
            if out.malignancy_logits is not None:
                probs = torch.softmax(out.malignancy_logits.float(), dim=1)
                parts["malignancy"].append(probs.cpu().numpy())
            if out.log_diameter is not None:
                parts["diameter"].append(torch.exp(out.log_diameter.float()).cpu().numpy())

    def cat(key: str, width: int) -> npt.NDArray[np.float32]:
        if not parts[key]:
            return np.zeros((0, width), np.float32)
        return np.concatenate(parts[key]).astype(np.float32, copy=False)

    k = cfg.n_bits
    return HashCodes(
        shallow=pack_signs(cat("shallow", k)),
        middle=pack_signs(cat("middle", k)),
        deep=pack_signs(cat("deep", k)),
        embedding=cat("embedding", cfg.embedding_dim),
        size_probs=cat("size", cfg.n_size_classes),
        texture_probs=cat("texture", cfg.n_textures),
        n_bits=k,
        model_version=model_version,
        malignancy_probs=cat("malignancy", 2) if cfg.n_malignancy == 2 else None,
        diameter_mm=cat("diameter", 1).reshape(-1) if cfg.diameter_head else None,
    )
