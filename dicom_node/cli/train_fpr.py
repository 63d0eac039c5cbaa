"""``dicom-node train-fpr``: train the nodule false-positive reduction network.

Samples (:mod:`ai.fpr.data`) are the node's own detector candidates, on the
node's 1 mm grid, from:

- ``--nodules DIR``: the real LIDC-IDRI crops (``lidc-nodules`` layout):
  detections inside the readers' nodule are nodules, those clear of it are not;
- ``--lidc DIR`` (repeatable): whole LIDC-IDRI scans with their readers' XML;
  the LUNA16 rule gives the nodules, candidates far from every reader's mark
  are real negatives;
- ``--phantom-patients N --phantom-seed S``: family-A phantom studies.

``--holdout-folds`` keeps the crops of those patient folds
(:func:`ai.readers.lidc_crops.patient_folds`, k=5) out of training and scores
them after every epoch; ``--exclude-patient`` drops a patient's crops
entirely (e.g. ``LIDC-IDRI-0001`` when that scan is the evaluation scan).
Extracted samples are cached in ``--cache`` (one ``.npz`` per source).

Output folder: ``model.safetensors``, ``model_card.json`` (version = hash of
the weights, configuration, data, history, held-out figures, operating point)
and ``MODEL_CARD.md``; :func:`dicom_node.model.load_fpr` reads it back.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

CARD_MD = "MODEL_CARD.md"

_LIDC_CITATION = (
    "LIDC-IDRI (The Cancer Imaging Archive), licence CC BY 3.0: Armato SG III et al., "
    "Data from LIDC-IDRI, TCIA 2015, doi:10.7937/K9/TCIA.2015.LO9QL9SX; Armato SG III et al., "
    "Med Phys 38(2):915-931, 2011; Clark K et al., J Digit Imaging 26(6):1045-1057, 2013."
)


def add_subparser(subparsers: Any) -> None:
    """Add ``train-fpr``."""
    parser = subparsers.add_parser(
        "train-fpr", help="train the nodule false-positive reduction network (weights + model card)"
    )
    data = parser.add_argument_group("Data")
    data.add_argument("--nodules", type=Path, metavar="DIR", help="lidc-nodules folder (crops)")
    data.add_argument(
        "--lidc",
        type=Path,
        action="append",
        default=[],
        metavar="DIR",
        help="a LIDC-IDRI series folder with its readers' XML (repeatable)",
    )
    data.add_argument(
        "--phantom-patients", type=int, default=0, metavar="N", help="phantom studies"
    )
    data.add_argument("--phantom-seed", type=int, default=5000, help="phantom cohort seed (5000)")
    data.add_argument(
        "--phantom-family",
        choices=("a", "b"),
        action="append",
        help="phantom families (repeatable; default a); evaluate on a seed never trained on",
    )
    data.add_argument(
        "--exclude-patient", action="append", default=[], metavar="ID", help="drop a crop patient"
    )
    data.add_argument(
        "--holdout-folds", type=int, nargs="*", default=[], metavar="F", help="crop folds held out"
    )
    data.add_argument("--cache", type=Path, help="folder for extracted samples (.npz per source)")
    data.add_argument(
        "--workers",
        type=int,
        default=1,
        help="processes rendering and detecting phantom studies (1; the samples do not change)",
    )
    training = parser.add_argument_group("Training")
    training.add_argument("--epochs", type=int, default=14)
    training.add_argument("--batch-size", type=int, default=64)
    training.add_argument("--lr", type=float, default=2e-3)
    training.add_argument("--seed", type=int, default=0)
    training.add_argument("--threads", type=int, default=2, help="torch CPU threads (2)")
    training.add_argument("--device", default="cpu", help="torch device (cpu)")
    training.add_argument(
        "--operating-point",
        type=float,
        default=0.5,
        help="probability threshold recorded in the card (chosen with evaluate detection)",
    )
    parser.add_argument("--out", type=Path, required=True, help="model folder to write")
    parser.set_defaults(func=run)


def _cached(cache: Path | None, name: str, make: Any) -> Any:
    import numpy as np

    from ai.fpr.data import SampleSet

    path = cache / f"{name}.npz" if cache is not None else None
    if path is not None and path.is_file():
        with np.load(path) as arrays:
            logger.info("samples %s from %s", name, path)
            return SampleSet.from_arrays(dict(arrays))
    samples = make()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, **samples.to_arrays())
    return samples


def _crop_samples(folder: Path, device: str) -> Any:
    from ai.fpr.data import concatenate, crop_samples
    from ai.readers.lidc_crops import read_nodule_table

    nodules = read_nodule_table(folder)
    parts = []
    for index, nodule in enumerate(nodules, start=1):
        parts.append(crop_samples(nodule, device=device))
        if index % 50 == 0:
            logger.info("crops: %d/%d", index, len(nodules))
    return concatenate(parts)


def _summary(samples: Any) -> dict[str, Any]:
    import numpy as np

    result: dict[str, Any] = {}
    for source in sorted(set(samples.source.tolist())):
        keep = samples.source == source
        result[source] = {
            "nodules": int((samples.label[keep] == 1).sum()),
            "others": int((samples.label[keep] == 0).sum()),
            "patients": len(np.unique(samples.patient[keep])),
        }
    return result


def _held_out_figures(samples: Any, scores: Any, threshold: float) -> dict[str, Any]:
    import numpy as np

    from ai.classes import SIZE_CLASS_LABELS, size_class
    from ai.fpr.train import roc_auc

    positive = samples.label == 1
    rows = []
    for cls in range(1, len(SIZE_CLASS_LABELS)):
        keep = positive & np.array([size_class(float(d)) == cls for d in samples.diameter_mm])
        if keep.any():
            rows.append(
                {
                    "size_class": SIZE_CLASS_LABELS[cls],
                    "nodules": int(keep.sum()),
                    "kept_at_operating_point": int((scores[keep] >= threshold).sum()),
                }
            )
    curve = [
        {
            "threshold": t,
            "nodules_kept": float((scores[positive] >= t).mean()) if positive.any() else None,
            "others_kept": float((scores[~positive] >= t).mean()) if (~positive).any() else None,
        }
        for t in (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.98)
    ]
    return {
        "roc_auc": roc_auc(samples.label, scores),
        "curve": curve,
        "nodules": int(positive.sum()),
        "others": int((~positive).sum()),
        "nodules_kept_at_operating_point": int((scores[positive] >= threshold).sum()),
        "others_kept_at_operating_point": int((scores[~positive] >= threshold).sum()),
        "by_size_class": rows,
    }


def _card_markdown(card: dict[str, Any]) -> str:
    data = card["data"]
    lines = [
        f"# dicom-node nodule false-positive reduction, {card['version']}",
        "",
        "A small 3-D CNN that gives each candidate of the blob detector (`ai.nodules`) the",
        "probability that it is a nodule (`ai.fpr`). Input: a 16x24x24 patch of 1.25 mm voxels",
        "around the candidate, limited to the candidate's own slices, and 8 measurements of it.",
        f"Parameters: {card['n_parameters']}. Trained on {card['device']} in "
        f"{card['seconds']:.0f} s with `{card['command']}`.",
        "",
        "## Data",
        "",
        f"- {_LIDC_CITATION}",
        "- Real nodule crops: `lidc-nodules` (596 nodules of 329 LIDC-IDRI patients, readers'",
        "  consensus masks; converted from the public repository PabloLION/ct-slicing).",
        f"- Crop patients left out: {', '.join(data['excluded_patients']) or 'none'};"
        f" crop folds held out: {data['holdout_folds'] or 'none'}.",
        f"- Whole LIDC-IDRI scans: {', '.join(data['lidc_scans']) or 'none'}.",
        f"- Phantom studies: {data['phantom_patients']} of seed {data['phantom_seed']} per family"
        f" ({', '.join(data.get('phantom_families', ['a']))}).",
        "",
        "| source | nodules | others | patients |",
        "| --- | --- | --- | --- |",
    ]
    for source, counts in data["train"].items():
        lines.append(
            f"| {source} | {counts['nodules']} | {counts['others']} | {counts['patients']} |"
        )
    lines += ["", "## Operating point", "", f"Probability {card['operating_point']:.2f}:"]
    lines.append(card.get("operating_point_reason", "set with --operating-point."))
    held = card.get("held_out")
    if held:
        lines += [
            "",
            "## Held-out crops (patients never trained on)",
            "",
            f"ROC AUC {held['roc_auc']:.3f}; at the operating point "
            f"{held['nodules_kept_at_operating_point']}/{held['nodules']} nodules kept, "
            f"{held['others_kept_at_operating_point']}/{held['others']} other candidates kept.",
            "",
            "| size class | nodules | kept |",
            "| --- | --- | --- |",
        ]
        for row in held["by_size_class"]:
            lines.append(
                f"| {row['size_class']} | {row['nodules']} | {row['kept_at_operating_point']} |"
            )
    lines += ["", "## History", "", "| epoch | loss | held-out AUC |", "| --- | --- | --- |"]
    for row in card["history"]:
        auc = row.get("held_out_auc")
        lines.append(
            f"| {int(row['epoch'])} | {row['loss']:.4f} | {'-' if auc is None else f'{auc:.3f}'} |"
        )
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    """Run ``train-fpr``; 0 on success, 1 on unusable data."""
    import datetime as dt

    import numpy as np
    import torch

    from ai.errors import AIError
    from ai.fpr.data import concatenate, lidc_scan_samples, phantom_samples
    from ai.fpr.infer import weights_to_bytes, weights_version
    from ai.fpr.model import FprConfig
    from ai.fpr.train import FprTrainConfig, predict, train_fpr
    from ai.readers.lidc_crops import patient_folds
    from dicom_node.model import CARD_FILE, MODEL_FILE

    torch.set_num_threads(max(1, args.threads))
    started = time.perf_counter()
    if not (args.nodules or args.lidc or args.phantom_patients):
        print("dicom-node train-fpr: give --nodules, --lidc or --phantom-patients", file=sys.stderr)
        return 1
    parts, held_out = [], None
    try:
        if args.nodules:
            crops = _cached(args.cache, "crops", lambda: _crop_samples(args.nodules, args.device))
            crops = crops.subset(~np.isin(crops.patient, args.exclude_patient))
            folds = patient_folds(crops.patient.tolist())
            fold = np.array([folds[p] for p in crops.patient])
            holdout = np.isin(fold, args.holdout_folds)
            if holdout.any():
                held_out = crops.subset(holdout)
            parts.append(crops.subset(~holdout))
        for series_dir in args.lidc:
            name = f"scan-{series_dir.name[-16:]}"
            parts.append(
                _cached(args.cache, name, lambda d=series_dir: lidc_scan_samples(str(d))[0])
            )
        for family in args.phantom_family or ["a"] if args.phantom_patients else []:
            prefix = "phantom" if family == "a" else f"phantom-{family}"
            name = f"{prefix}-{args.phantom_seed}-{args.phantom_patients}"
            parts.append(
                _cached(
                    args.cache,
                    name,
                    lambda f=family: phantom_samples(
                        args.phantom_seed, args.phantom_patients, family=f, workers=args.workers
                    ),
                )
            )
    except AIError as exc:
        print(f"dicom-node train-fpr: {exc}", file=sys.stderr)
        return 1
    samples = concatenate(parts)
    config = FprTrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        model=FprConfig(),
    )
    try:
        result = train_fpr(samples, config, held_out=held_out, device=args.device)
    except ValueError as exc:
        print(f"dicom-node train-fpr: {exc}", file=sys.stderr)
        return 1
    weights = weights_to_bytes(result.net)
    version = weights_version(weights)
    card: dict[str, Any] = {
        "name": "dicom-node nodule false-positive reduction",
        "version": version,
        "created_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "device": args.device,
        "torch": torch.__version__,
        "n_parameters": int(sum(p.numel() for p in result.net.parameters())),
        "config": FprConfig().to_dict(),
        "train_config": config.to_dict(),
        "operating_point": args.operating_point,
        "command": "dicom-node " + " ".join(sys.argv[1:]) if sys.argv else "train-fpr",
        "licence_of_training_data": _LIDC_CITATION,
        "data": {
            "train": _summary(samples),
            "excluded_patients": list(args.exclude_patient),
            "holdout_folds": list(args.holdout_folds),
            "lidc_scans": [d.name for d in args.lidc],
            "phantom_patients": args.phantom_patients,
            "phantom_seed": args.phantom_seed,
            "phantom_families": args.phantom_family or ["a"],
        },
        "history": result.history,
    }
    if held_out is not None:
        scores = predict(result.net, held_out, device=args.device)
        card["held_out"] = _held_out_figures(held_out, scores, args.operating_point)
    card["seconds"] = time.perf_counter() - started
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / MODEL_FILE).write_bytes(weights)
    (args.out / CARD_FILE).write_text(json.dumps(card, indent=1) + "\n", encoding="utf-8")
    (args.out / CARD_MD).write_text(_card_markdown(card), encoding="utf-8")
    print(f"{version}: {len(samples)} samples, {card['seconds']:.0f} s -> {args.out}")
    if "held_out" in card:
        held = card["held_out"]
        print(
            f"held-out crops: AUC {held['roc_auc']:.3f}, "
            f"{held['nodules_kept_at_operating_point']}/{held['nodules']} nodules and "
            f"{held['others_kept_at_operating_point']}/{held['others']} others kept at "
            f"{args.operating_point:.2f}"
        )
    return 0
