"""Training loop of the false-positive reduction network (arrays in, a network out).

Binary cross-entropy (positives weighted by ``FprTrainConfig.pos_weight``),
AdamW with a one-cycle schedule, and augmentations that keep
a candidate a candidate: random crops of :data:`~ai.fpr.patches.PATCH_SHAPE`
out of :data:`~ai.fpr.patches.TRAIN_PATCH_SHAPE` (shifts of up to 2.5 mm),
flips on every axis, in-plane transposes, and -- for half the samples -- an
in-plane window of 20-36 mm at a random offset outside which nothing is
visible. The last one matters: the real nodules are crops about 30 mm wide,
so without it "the patch's edge is hidden" would tell crop negatives from
whole-scan candidates.

Reproducible for a seed on one device (torch seeds the weights, a numpy
generator draws batches and augmentations).
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F

from ai.fpr.data import SampleSet
from ai.fpr.model import FprConfig, FprNet
from ai.fpr.patches import FILL, PATCH_SHAPE, PATCH_SPACING_MM, TRAIN_PATCH_SHAPE

__all__ = ["FprTrainConfig", "FprTrainResult", "predict", "roc_auc", "train_fpr"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FprTrainConfig:
    """How :func:`train_fpr` trains."""

    epochs: int = 14
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0
    augment: bool = True
    pos_weight: float = 1.0
    """Weight of a nodule sample's loss against another candidate's (1: probabilities
    calibrated to the training mix; more makes the network more liberal)."""
    model: FprConfig = field(default_factory=FprConfig)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return asdict(self)


@dataclass
class FprTrainResult:
    """The trained network (eval mode) and one history row per epoch."""

    net: FprNet
    history: list[dict[str, float]]


def _centre_crop(samples: SampleSet, index: npt.NDArray[np.intp]) -> tuple[np.ndarray, np.ndarray]:
    lo = [(t - p) // 2 for t, p in zip(TRAIN_PATCH_SHAPE, PATCH_SHAPE, strict=True)]
    sl = tuple(slice(a, a + p) for a, p in zip(lo, PATCH_SHAPE, strict=True))
    image = samples.image[index][(slice(None), *sl)].astype(np.float32) / 255.0
    visible = samples.visible[index][(slice(None), *sl)].astype(np.float32)
    return image, visible


def _augmented(
    samples: SampleSet, index: npt.NDArray[np.intp], rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    n = len(index)
    image = np.empty((n, *PATCH_SHAPE), np.float32)
    visible = np.empty((n, *PATCH_SHAPE), np.float32)
    for k, i in enumerate(index):
        lo = [
            int(rng.integers(0, t - p + 1))
            for t, p in zip(TRAIN_PATCH_SHAPE, PATCH_SHAPE, strict=True)
        ]
        sl = tuple(slice(a, a + p) for a, p in zip(lo, PATCH_SHAPE, strict=True))
        img = samples.image[i][sl].astype(np.float32) / 255.0
        vis = samples.visible[i][sl].astype(np.float32)
        if rng.random() < 0.5:
            width = rng.uniform(20.0, 36.0) / PATCH_SPACING_MM
            shift = rng.uniform(-6.0, 6.0, 2) / PATCH_SPACING_MM
            centre = (np.asarray(PATCH_SHAPE[1:]) - 1) / 2.0 + shift
            ys = np.abs(np.arange(PATCH_SHAPE[1]) - centre[0]) <= width / 2.0
            xs = np.abs(np.arange(PATCH_SHAPE[2]) - centre[1]) <= width / 2.0
            vis = vis * (ys[:, None] & xs[None, :])[None].astype(np.float32)
            img = np.where(vis > 0.5, img, np.float32(FILL))
        for axis in (0, 1, 2):
            if rng.random() < 0.5:
                img, vis = np.flip(img, axis), np.flip(vis, axis)
        if rng.random() < 0.5:
            img, vis = img.transpose(0, 2, 1), vis.transpose(0, 2, 1)
        image[k], visible[k] = img, vis
    return image, visible


def _batch(
    image: np.ndarray, visible: np.ndarray, features: np.ndarray, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    patches = torch.from_numpy(np.stack([image, visible], axis=1)).to(device)
    return patches, torch.from_numpy(np.ascontiguousarray(features)).to(device)


def predict(
    net: FprNet, samples: SampleSet, *, device: str | torch.device = "cpu", batch_size: int = 256
) -> npt.NDArray[np.float32]:
    """Probability of a nodule for each sample (centre crop, eval mode)."""
    dev = torch.device(device)
    net.to(dev).eval()
    out = []
    with torch.inference_mode():
        for start in range(0, len(samples), batch_size):
            index = np.arange(start, min(start + batch_size, len(samples)))
            image, visible = _centre_crop(samples, index)
            patches, features = _batch(image, visible, samples.features[index], dev)
            out.append(torch.sigmoid(net(patches, features)).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def roc_auc(labels: npt.ArrayLike, scores: npt.ArrayLike) -> float:
    """Area under the ROC curve (rank statistic; ties count half); nan without both classes."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    sorted_s = s[order]
    i = 0
    while i < len(s):
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i : j + 1]] = 0.5 * (i + j) + 1.0
        i = j + 1
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def train_fpr(
    samples: SampleSet,
    config: FprTrainConfig = FprTrainConfig(),
    *,
    held_out: SampleSet | None = None,
    device: str | torch.device = "cpu",
    on_epoch: Callable[[dict[str, float]], None] | None = None,
) -> FprTrainResult:
    """Train a fresh :class:`FprNet`.

    Parameters
    ----------
    samples : SampleSet
        Training samples (both labels present).
    config : FprTrainConfig
    held_out : SampleSet, optional
        Scored after every epoch (loss and ROC AUC in the history).
    device : str or torch.device
    on_epoch : callable, optional
        Called with each epoch's history row.

    Returns
    -------
    FprTrainResult

    Raises
    ------
    ValueError
        If the samples do not hold both labels.
    """
    labels = samples.label.astype(np.float32)
    n_pos = int(labels.sum())
    n_neg = len(labels) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError(f"training needs both labels ({n_pos} nodules, {n_neg} others)")
    torch.manual_seed(config.seed)
    rng = np.random.default_rng(config.seed)
    dev = torch.device(device)
    net = FprNet(config.model).to(dev)
    optimiser = torch.optim.AdamW(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    steps = config.epochs * math.ceil(len(samples) / config.batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimiser, max_lr=config.lr, total_steps=max(steps, 1), pct_start=0.15
    )
    pos_weight = torch.tensor(config.pos_weight, device=dev)
    history: list[dict[str, float]] = []
    logger.info(
        "FPR training: %d nodules, %d others, pos_weight %.2f", n_pos, n_neg, float(pos_weight)
    )
    for epoch in range(1, config.epochs + 1):
        started = time.perf_counter()
        net.train()
        order = rng.permutation(len(samples))
        total, count = 0.0, 0
        for start in range(0, len(order), config.batch_size):
            index = order[start : start + config.batch_size]
            if len(index) < 2:
                continue
            if config.augment:
                image, visible = _augmented(samples, index, rng)
            else:
                image, visible = _centre_crop(samples, index)
            patches, features = _batch(image, visible, samples.features[index], dev)
            target = torch.from_numpy(labels[index]).to(dev)
            logits = net(patches, features)
            loss = F.binary_cross_entropy_with_logits(logits, target, pos_weight=pos_weight)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()  # type: ignore[no-untyped-call]
            optimiser.step()
            schedule.step()
            total += float(loss.detach()) * len(index)
            count += len(index)
        row = {"epoch": float(epoch), "loss": total / max(count, 1)}
        if held_out is not None and len(held_out):
            scores = predict(net, held_out, device=dev)
            target = torch.from_numpy(held_out.label.astype(np.float32))
            row["held_out_loss"] = float(
                F.binary_cross_entropy(torch.from_numpy(scores).clamp(1e-6, 1 - 1e-6), target)
            )
            row["held_out_auc"] = roc_auc(held_out.label, scores)
        row["seconds"] = time.perf_counter() - started
        history.append(row)
        logger.info("epoch %d: %s", epoch, ", ".join(f"{k} {v:.4f}" for k, v in row.items()))
        if on_epoch is not None:
            on_epoch(row)
    return FprTrainResult(net=net.eval(), history=history)
