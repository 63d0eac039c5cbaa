"""Training loop of the hashing network (arrays in, weights and history out).

No files here (package rule): checkpoints are handed to an ``on_epoch``
callback as a dict that ``torch.save`` can write, and :func:`train` resumes
from such a dict; weights become bytes with :func:`weights_to_bytes`, whose
SHA-256 is the model version id. ``dicom_node/cli/train.py`` does the I/O.

Reproducible for a seed on one device: torch's generator seeds the weights,
a numpy generator (saved in checkpoints) draws batches and augmentations, so a
run resumed from a checkpoint ends with the same weights as an uninterrupted
one. On CUDA, mixed precision (bfloat16 autocast) is used unless disabled.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from ai.hashing.augment import augment_batch
from ai.hashing.infer import encode
from ai.hashing.losses import LossConfig, hashing_loss
from ai.hashing.metrics import (
    joint_distances,
    label_relevance,
    mean_average_precision,
    precision_at_k,
)
from ai.hashing.model import HashNet, HashNetConfig
from ai.hashing.serialization import model_from_bytes, weights_to_bytes, weights_version

__all__ = [
    "RoiSet",
    "concat_rois",
    "TrainConfig",
    "TrainResult",
    "evaluate_retrieval",
    "model_from_bytes",
    "train",
    "weights_to_bytes",
    "weights_version",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RoiSet:
    """Labelled ROI stacks.

    Attributes
    ----------
    rois : numpy.ndarray
        ``(n, C, H, W)`` float32 in ``[0, 1]``.
    size_class : numpy.ndarray
        ``(n,)`` int64 diameter class 0..7 (``ai.classes``).
    texture : numpy.ndarray
        ``(n,)`` int64 index into ``ai.hashing.codes.TEXTURES``; -1 unknown.
    patient : numpy.ndarray
        ``(n,)`` patient keys (any comparable dtype), for patient-disjoint splits.
    malignancy : numpy.ndarray, optional
        ``(n,)`` int64 malignancy group, 0 benign, 1 malignant, -1 unknown
        (``ai.readers.lidc_crops.malignancy_group``); ``None``: all unknown.
    diameter_mm : numpy.ndarray, optional
        ``(n,)`` float32 nodule diameter, 0 where unknown or no nodule.
    masks : numpy.ndarray, optional
        ``(n, C, H, W)`` fraction of each pixel inside the nodule (the readers'
        or the phantom's mask on the ROI planes, ``ai.roi.sample_planes``).
    """

    rois: npt.NDArray[np.float32]
    size_class: npt.NDArray[np.int64]
    texture: npt.NDArray[np.int64]
    patient: npt.NDArray[Any]
    malignancy: npt.NDArray[np.int64] | None = None
    diameter_mm: npt.NDArray[np.float32] | None = None
    masks: npt.NDArray[np.floating] | None = None

    def __post_init__(self) -> None:
        n = self.rois.shape[0]
        if self.rois.ndim != 4:
            raise ValueError(f"rois must be (n, C, H, W), got {self.rois.shape}")
        for name in ("size_class", "texture", "patient", "malignancy", "diameter_mm"):
            value = getattr(self, name)
            if value is not None and np.shape(value) != (n,):
                raise ValueError(f"{name} must be ({n},), got {np.shape(value)}")
        if self.masks is not None and self.masks.shape != self.rois.shape:
            raise ValueError(f"masks must be {self.rois.shape}, got {self.masks.shape}")

    def __len__(self) -> int:
        return int(self.rois.shape[0])

    def subset(self, index: npt.ArrayLike) -> RoiSet:
        """The rows ``index``."""
        i = np.asarray(index)
        return RoiSet(
            self.rois[i],
            self.size_class[i],
            self.texture[i],
            self.patient[i],
            None if self.malignancy is None else self.malignancy[i],
            None if self.diameter_mm is None else self.diameter_mm[i],
            None if self.masks is None else self.masks[i],
        )

    def split_by_patient(self, held_out: float, *, seed: int = 0) -> tuple[RoiSet, RoiSet]:
        """``(train, held_out)`` with no patient in both; ``held_out`` is the patient fraction."""
        patients = np.unique(self.patient)
        rng = np.random.default_rng(seed)
        n_out = max(1, int(round(held_out * patients.size))) if held_out > 0 else 0
        out = rng.permutation(patients)[:n_out]
        mask = np.isin(self.patient, out)
        return self.subset(np.flatnonzero(~mask)), self.subset(np.flatnonzero(mask))

    def labels(self) -> dict[str, npt.NDArray[Any]]:
        """Every label with its default filled in (-1 malignancy, 0 diameter), for batching."""
        n = len(self)
        return {
            "size_class": self.size_class,
            "texture": self.texture,
            "malignancy": (
                np.full(n, -1, np.int64) if self.malignancy is None else self.malignancy
            ),
            "diameter_mm": (
                np.zeros(n, np.float32) if self.diameter_mm is None else self.diameter_mm
            ),
        }


def concat_rois(*sets: RoiSet) -> RoiSet:
    """One :class:`RoiSet` of several (malignancy and diameter filled with their defaults).

    Masks are kept when every set has them; mixing sets with and without raises
    ``ValueError`` (a missing mask is not an empty one).
    """
    if not sets:
        raise ValueError("nothing to concatenate")
    with_masks = any(s.masks is not None for s in sets)
    if with_masks and not all(s.masks is not None for s in sets):
        raise ValueError("some sets have nodule masks and others not")
    labels = [s.labels() for s in sets]
    return RoiSet(
        np.concatenate([s.rois for s in sets]),
        np.concatenate([s.size_class for s in sets]),
        np.concatenate([s.texture for s in sets]),
        np.concatenate([np.asarray(s.patient).astype(str) for s in sets]),
        malignancy=np.concatenate([lab["malignancy"] for lab in labels]),
        diameter_mm=np.concatenate([lab["diameter_mm"] for lab in labels]),
        masks=np.concatenate([s.masks for s in sets if s.masks is not None])
        if with_masks
        else None,
    )


@dataclass(frozen=True)
class TrainConfig:
    """Training settings (all recorded in the model card).

    Parameters
    ----------
    epochs, batch_size : int
        Passes over the data; ROIs per step.
    lr, weight_decay : float
        AdamW settings.
    seed : int
        Seeds weights, batches and augmentation.
    amp : bool
        bfloat16 autocast on CUDA (ignored on CPU).
    augment : bool
        Random flips and 90° rotations in the image plane.
    scanner_augment : bool
        Also kernel, slice thickness, noise and calibration per ROI
        (``ai.hashing.augment``).
    shift_px : int
        Largest random shift of an ROI, pixels.
    extra_fraction : float
        Share of each batch drawn from the ``extra`` set of :func:`train`
        (e.g. phantoms beside real crops); an epoch is one pass over the main set.
    model, loss : HashNetConfig, LossConfig
        Architecture and loss weights.
    """

    epochs: int = 30
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    seed: int = 0
    amp: bool = True
    augment: bool = True
    scanner_augment: bool = False
    shift_px: int = 0
    extra_fraction: float = 0.5
    model: HashNetConfig = field(default_factory=HashNetConfig)
    loss: LossConfig = field(default_factory=LossConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (JSON-serialisable)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict` (a model card's ``config``)."""
        loss = dict(values.get("loss", {}))
        for key in ("similar", "layer_margins"):
            if loss.get(key) is not None:
                loss[key] = tuple(loss[key])
        rest = {k: v for k, v in values.items() if k not in ("model", "loss")}
        return cls(**rest, model=HashNetConfig(**values.get("model", {})), loss=LossConfig(**loss))


@dataclass(frozen=True)
class TrainResult:
    """A trained model and its per-epoch history (mean loss parts)."""

    model: HashNet
    history: tuple[dict[str, float], ...]


def _lr_factor(step: int, total: int) -> float:
    """Learning-rate factor: linear warm-up over 5 % of the steps, then cosine down to 2 %."""
    warm = max(1, total // 20)
    if step < warm:
        return (step + 1) / warm
    t = min(1.0, (step - warm) / max(1, total - warm))
    return 0.02 + 0.98 * 0.5 * (1.0 + math.cos(math.pi * t))


def train(
    data: RoiSet,
    config: TrainConfig | None = None,
    *,
    device: str | torch.device = "cpu",
    resume: dict[str, Any] | None = None,
    on_epoch: Callable[[int, dict[str, Any]], None] | None = None,
    progress: bool = True,
    extra: RoiSet | None = None,
) -> TrainResult:
    """Train a :class:`HashNet` on labelled ROIs.

    Parameters
    ----------
    data : RoiSet
        Training ROIs; ``C``/``H``/``W`` must match ``config.model``.
    extra : RoiSet, optional
        A second set (e.g. phantoms beside real crops) that fills
        ``config.extra_fraction`` of every batch; an epoch is one pass over ``data``.
    config : TrainConfig, optional
        Settings.
    device : str or torch.device
        ``"cpu"`` or ``"cuda"``.
    resume : dict, optional
        A checkpoint previously given to ``on_epoch``; training goes on after its epoch
        (with ``config.epochs`` larger than first planned, the learning-rate schedule
        follows the new length from the step reached).
    on_epoch : callable, optional
        ``on_epoch(epoch, checkpoint)`` after every epoch (1-based); save ``checkpoint`` to resume.
    progress : bool
        Show a tqdm progress bar.
    """
    from tqdm import tqdm

    cfg = config or TrainConfig()
    dev = torch.device(device)
    expected = (cfg.model.in_channels, cfg.model.roi_size, cfg.model.roi_size)
    if data.rois.shape[1:] != expected:
        raise ValueError(
            f"rois must be (n, {', '.join(map(str, expected))}), got {data.rois.shape}"
        )
    if len(data) < 2:
        raise ValueError("need at least 2 ROIs to train")
    if extra is not None and extra.rois.shape[1:] != expected:
        raise ValueError(f"extra rois must be (n, {', '.join(map(str, expected))})")
    torch.manual_seed(cfg.seed)
    model = HashNet(cfg.model).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    n_extra = int(round(cfg.batch_size * cfg.extra_fraction)) if extra is not None else 0
    n_main = cfg.batch_size - n_extra
    steps_per_epoch = max(1, len(data) // n_main)
    total_steps = cfg.epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: _lr_factor(step, total_steps))
    rng = np.random.default_rng(cfg.seed)
    history: list[dict[str, float]] = []
    start = 0
    if resume is not None:
        model.load_state_dict(resume["model"])
        opt.load_state_dict(resume["optimizer"])
        sched.load_state_dict(resume["scheduler"])  # the step count; the factor follows this config
        rng.bit_generator.state = resume["rng"]
        history = list(resume["history"])
        start = int(resume["epoch"])
    use_amp = cfg.amp and dev.type == "cuda"
    bar = tqdm(
        total=(cfg.epochs - start) * steps_per_epoch,
        disable=not progress,
        desc="train",
        unit="step",
    )
    sets = [(data, data.labels())] + ([(extra, extra.labels())] if extra is not None else [])
    for epoch in range(start + 1, cfg.epochs + 1):
        model.train()
        order = rng.permutation(len(data))
        sums: dict[str, float] = {}
        for step in range(steps_per_epoch):
            picks = [np.sort(order[step * n_main : (step + 1) * n_main])]
            if extra is not None:
                picks.append(np.sort(rng.integers(0, len(extra), n_extra)))
            batch = _batch(sets, picks)
            x_np, masks_np = batch["rois"], batch["masks"]
            if cfg.augment:
                x_np, masks_np = augment_batch(
                    x_np, masks_np, rng, scanner=cfg.scanner_augment, shift_px=cfg.shift_px
                )
            x = torch.from_numpy(x_np).to(dev)
            labels = {
                k: torch.from_numpy(batch[k]).to(dev)
                for k in ("size_class", "texture", "malignancy", "diameter_mm", "mask_known")
            }
            with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=use_amp):
                out = model(x)
            out = type(out)(*(None if t is None else t.float() for t in out))
            terms = hashing_loss(
                out,
                x,
                labels["size_class"],
                labels["texture"],
                cfg.loss,
                malignancy=labels["malignancy"],
                diameter_mm=labels["diameter_mm"],
                masks=None if masks_np is None else torch.from_numpy(masks_np).to(dev),
                mask_known=labels["mask_known"],
            )
            opt.zero_grad(set_to_none=True)
            terms.total.backward()  # type: ignore[no-untyped-call]
            opt.step()
            sched.step()
            for key, value in {"total": float(terms.total.detach()), **terms.parts}.items():
                sums[key] = sums.get(key, 0.0) + value
            bar.update(1)
            bar.set_postfix(epoch=epoch, loss=f"{float(terms.total.detach()):.3f}")
        means = {key: value / steps_per_epoch for key, value in sums.items()}
        if not all(math.isfinite(v) for v in means.values()):
            raise FloatingPointError(f"loss diverged at epoch {epoch}: {means}")
        history.append({"epoch": float(epoch), **means})
        logger.info("epoch %d/%d loss %.4f", epoch, cfg.epochs, means["total"])
        if on_epoch is not None:
            on_epoch(
                epoch,
                {
                    "epoch": epoch,
                    "model": model.state_dict(),
                    "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(),
                    "rng": rng.bit_generator.state,
                    "history": list(history),
                    "config": cfg.to_dict(),
                },
            )
    bar.close()
    model.eval()
    return TrainResult(model=model, history=tuple(history))


def _batch(
    sets: list[tuple[RoiSet, dict[str, npt.NDArray[Any]]]], picks: list[npt.NDArray[np.int64]]
) -> dict[str, Any]:
    """Rows ``picks[i]`` of ``sets[i]``, concatenated; masks zero where a set has none."""
    parts: dict[str, list[Any]] = {
        k: []
        for k in (
            "rois",
            "masks",
            "mask_known",
            "size_class",
            "texture",
            "malignancy",
            "diameter_mm",
        )
    }
    with_masks = any(s.masks is not None for s, _ in sets)
    for (roi_set, labels), idx in zip(sets, picks, strict=True):
        parts["rois"].append(roi_set.rois[idx].astype(np.float32, copy=False))
        if with_masks:
            parts["masks"].append(
                np.zeros(parts["rois"][-1].shape, np.float32)
                if roi_set.masks is None
                else roi_set.masks[idx].astype(np.float32)
            )
        parts["mask_known"].append(np.full(len(idx), roi_set.masks is not None))
        for key, values in labels.items():
            parts[key].append(values[idx])
    batch: dict[str, Any] = {k: np.concatenate(v) if v else None for k, v in parts.items()}
    dtypes = {"size_class": np.int64, "texture": np.int64, "malignancy": np.int64}
    for key, dtype in (*dtypes.items(), ("diameter_mm", np.float32)):
        batch[key] = batch[key].astype(dtype)
    return batch


def evaluate_retrieval(
    model: HashNet, queries: RoiSet, database: RoiSet, *, device: str | torch.device = "cpu"
) -> dict[str, float]:
    """Joint-distance retrieval of ``queries`` against ``database``.

    Returns
    -------
    dict
        ``map``, ``map@100``, ``p@10`` with relevance "same size class", and
        the same with suffix ``_size_texture`` for "same size class and texture".
    """
    q = encode(model, queries.rois, device=device)
    db = encode(model, database.rois, device=device)
    dist = joint_distances((q.shallow, q.middle, q.deep), (db.shallow, db.middle, db.deep))
    out: dict[str, float] = {}
    for suffix, rel in (
        ("", label_relevance(queries.size_class, database.size_class)),
        (
            "_size_texture",
            label_relevance(
                np.c_[queries.size_class, queries.texture],
                np.c_[database.size_class, database.texture],
            ),
        ),
    ):
        out[f"map{suffix}"] = mean_average_precision(dist, rel)
        out[f"map@100{suffix}"] = mean_average_precision(dist, rel, top=100)
        out[f"p@10{suffix}"] = precision_at_k(dist, rel, 10)
    return out
