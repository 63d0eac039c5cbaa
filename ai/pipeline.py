"""One CT series, end to end on arrays: lungs → nodules → ROIs → hash codes.

Arrays in, a dataclass out; the device is a parameter (CUDA when the caller
has one, same results on CPU). The worker in ``dicom_node`` reads the series
and stores what this returns.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
import torch

from ai.hashing.codes import HashCodes
from ai.hashing.infer import encode
from ai.hashing.model import HashNet
from ai.lungs import LungMask, segment_lungs
from ai.nodules import NoduleCandidate, find_nodules
from ai.types import Volume

__all__ = ["SeriesAnalysis", "analyse_volume"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class SeriesAnalysis:
    """What one series yields."""

    lung_mask: LungMask
    nodules: tuple[NoduleCandidate, ...]
    rois: npt.NDArray[np.float32]
    """``(n, C, H, W)`` float32 in [0, 1], the hashing network's input."""
    codes: HashCodes
    thumbnails: npt.NDArray[np.uint8]
    """``(n, H, W)`` uint8: the central axial slice of each ROI, for galleries."""
    seconds: dict[str, float] = field(default_factory=dict)
    """Time per step (lungs, nodules, rois, codes)."""

    @property
    def lung_volume_ml(self) -> float:
        """Segmented lung volume in millilitres."""
        return self.lung_mask.volume_ml()


def analyse_volume(
    volume: Volume,
    model: HashNet,
    *,
    device: str | torch.device = "cpu",
    model_version: str | None = None,
    batch_size: int = 64,
    min_confidence: float = 0.0,
) -> SeriesAnalysis:
    """Segment, detect, extract ROIs and encode them.

    Parameters
    ----------
    volume : Volume
        ``(z, y, x)`` HU with geometry (any spacing; steps resample as they need).
    model : HashNet
        The hashing network (eval mode).
    device : str or torch.device
    model_version : str, optional
        Recorded in the codes.
    batch_size : int
        ROIs per forward pass.
    min_confidence : float
        Detector operating point: candidates under it are dropped.

    Returns
    -------
    SeriesAnalysis
    """
    from ai.roi import extract_rois

    seconds: dict[str, float] = {}
    started = time.perf_counter()
    lung_mask = segment_lungs(volume, device=device)
    seconds["lungs"] = time.perf_counter() - started
    started = time.perf_counter()
    nodules = tuple(
        n for n in find_nodules(volume, lung_mask, device=device) if n.confidence >= min_confidence
    )
    seconds["nodules"] = time.perf_counter() - started
    started = time.perf_counter()
    cfg = model.config
    centres = np.array([n.center_xyz for n in nodules], np.float64).reshape(-1, 3)
    # Every nodule's ROI in one batch, cut as the model was trained (its config's
    # geometry) and resampled on the device (the GPU when there is one).
    rois = extract_rois(volume, lung_mask, centres, **cfg.roi_kwargs(), device=device)
    rois = np.ascontiguousarray(rois, np.float32)
    if rois.shape[1] != cfg.in_channels:
        raise ValueError(f"ROIs have {rois.shape[1]} channels; the model expects {cfg.in_channels}")
    seconds["rois"] = time.perf_counter() - started
    started = time.perf_counter()
    codes = encode(model, rois, device=device, batch_size=batch_size, model_version=model_version)
    seconds["codes"] = time.perf_counter() - started
    middle = rois.shape[1] // 2
    thumbnails = (
        np.clip(rois[:, middle] * 255.0 + 0.5, 0, 255).astype(np.uint8)
        if len(rois)
        else np.zeros((0, cfg.roi_size, cfg.roi_size), np.uint8)
    )
    logger.info(
        "%d nodules; %s",
        len(nodules),
        ", ".join(f"{k} {v:.2f} s" for k, v in seconds.items()),
    )
    return SeriesAnalysis(lung_mask, nodules, rois, codes, thumbnails, seconds)
