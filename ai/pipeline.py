"""One CT series, end to end on arrays: lungs → candidates → false-positive
reduction → nodules → ROIs → hash codes, and the compact image for registering
later scans.

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

from ai.fpr.infer import FprModel, score_candidates
from ai.hashing.codes import HashCodes
from ai.hashing.infer import encode
from ai.hashing.model import HashNet
from ai.lungs import LungMask, segment_lungs
from ai.nodules import NoduleCandidate, find_nodules
from ai.registration import RegistrationImage, registration_image
from ai.types import Volume

__all__ = ["DEFAULT_MIN_DIAMETER_MM", "SeriesAnalysis", "analyse_volume", "encode_at"]

logger = logging.getLogger(__name__)

#: Smallest equivalent diameter reported, mm. Lung-RADS (v2022) counts solid nodules
#: from 4 mm (under 4 mm is category 2 whatever else, and a new nodule under 4 mm is
#: not "new" in its sense); LUNA16 scores from 3 mm. 3-4 mm detections are mostly vessel
#: cross-sections and noise specks, and our diameters run about +0.6 mm on real
#: nodules under 5 mm (``dicom-node evaluate measurement``), so 4 mm.
DEFAULT_MIN_DIAMETER_MM = 4.0


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
    """Time per step (lungs, nodules, fpr, rois, codes, registration)."""
    candidates: tuple[NoduleCandidate, ...] = ()
    """Every candidate of the detector with its probability (the reported ``nodules``
    are those at the operating point and minimum diameter), for evaluations."""
    registration: RegistrationImage | None = None
    """Compact image for registering later scans of the patient to this one
    (:meth:`ai.registration.RegistrationImage.to_bytes` to keep it)."""
    fpr_version: str | None = None
    """Version of the false-positive reduction weights that scored the candidates."""

    @property
    def lung_volume_ml(self) -> float:
        """Segmented lung volume in millilitres."""
        return self.lung_mask.volume_ml()


def analyse_volume(
    volume: Volume,
    model: HashNet,
    *,
    fpr: FprModel,
    device: str | torch.device = "cpu",
    model_version: str | None = None,
    batch_size: int = 64,
    min_confidence: float = 0.0,
    min_probability: float | None = None,
    min_diameter_mm: float = DEFAULT_MIN_DIAMETER_MM,
    with_registration: bool = True,
) -> SeriesAnalysis:
    """Segment, detect, reduce false positives, extract ROIs and encode them.

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
        Blob-detector confidence under which candidates are not even scored.
    fpr : ai.fpr.FprModel
        False-positive reduction network (``dicom_node.model.shipped_fpr``: the shipped one).
    min_probability : float, optional
        Operating point: candidates whose probability of being a nodule is
        under it are not reported; default the model card's operating point.
    min_diameter_mm : float
        Smallest equivalent diameter reported (:data:`DEFAULT_MIN_DIAMETER_MM`).
    with_registration : bool
        Also make the compact registration image.

    Returns
    -------
    SeriesAnalysis
    """
    seconds: dict[str, float] = {}
    started = time.perf_counter()
    lung_mask = segment_lungs(volume, device=device)
    seconds["lungs"] = time.perf_counter() - started
    started = time.perf_counter()
    found = [
        n for n in find_nodules(volume, lung_mask, device=device) if n.confidence >= min_confidence
    ]
    seconds["nodules"] = time.perf_counter() - started
    started = time.perf_counter()
    threshold = fpr.operating_point if min_probability is None else min_probability
    candidates = score_candidates(fpr, volume, found, device=device)
    nodules = tuple(
        sorted(
            (
                c
                for c in candidates
                if (c.probability or 0.0) >= threshold and c.diameter_mm >= min_diameter_mm
            ),
            key=lambda c: -(c.probability or 0.0),
        )
    )
    seconds["fpr"] = time.perf_counter() - started
    rois, codes, thumbnails = encode_at(
        volume,
        lung_mask,
        np.array([n.center_xyz for n in nodules], np.float64),
        model,
        device=device,
        model_version=model_version,
        batch_size=batch_size,
        seconds=seconds,
    )
    compact = None
    if with_registration:
        started = time.perf_counter()
        compact = registration_image(volume, lung_mask)
        seconds["registration"] = time.perf_counter() - started
    logger.info(
        "%d nodules of %d candidates at p >= %.2f and >= %.1f mm; %s",
        len(nodules),
        len(candidates),
        threshold,
        min_diameter_mm,
        ", ".join(f"{k} {v:.2f} s" for k, v in seconds.items()),
    )
    return SeriesAnalysis(
        lung_mask,
        nodules,
        rois,
        codes,
        thumbnails,
        seconds,
        candidates=tuple(candidates),
        registration=compact,
        fpr_version=fpr.version,
    )


def encode_at(
    volume: Volume,
    lung_mask: LungMask | None,
    centres_xyz: npt.ArrayLike,
    model: HashNet,
    *,
    device: str | torch.device = "cpu",
    model_version: str | None = None,
    batch_size: int = 64,
    seconds: dict[str, float] | None = None,
) -> tuple[npt.NDArray[np.float32], HashCodes, npt.NDArray[np.uint8]]:
    """ROIs, hash codes and thumbnails of nodules at world points: what the worker stores.

    Every ROI is cut in one batch as the model was trained (its config's
    geometry), resampled on ``device``; the thumbnail is the ROI's central
    plane. :func:`analyse_volume` calls it for the nodules it found, the
    reference library (``dicom-node import-crops``) for the readers' nodules.

    Parameters
    ----------
    volume : Volume
    lung_mask : LungMask or None
        ``None`` where there are no lungs to mask with (a crop).
    centres_xyz : array_like
        ``(n, 3)`` world LPS mm.
    model : HashNet
    seconds : dict, optional
        Receives the time of ``rois`` and ``codes``.

    Returns
    -------
    rois : numpy.ndarray
        ``(n, C, H, W)`` float32 in [0, 1].
    codes : HashCodes
    thumbnails : numpy.ndarray
        ``(n, H, W)`` uint8.
    """
    from ai.roi import extract_rois

    seconds = {} if seconds is None else seconds
    started = time.perf_counter()
    cfg = model.config
    centres = np.asarray(centres_xyz, np.float64).reshape(-1, 3)
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
    return rois, codes, thumbnails
