"""``dicom-node train``: train the hashing network and write weights + model card.

Data: ``--phantom N`` renders N training ROIs with the phantom's patch mode
(``ai.hashing.data.phantom_rois``: the same ``ai.roi`` stacks the worker cuts)
and N/4 held-out ones from other synthetic patients; or ``--rois FILE.npz``
with arrays ``rois`` ``(n, C, H, W)`` float32 in [0, 1], ``size_class``,
``texture`` (-1 = unknown) and ``patient`` ``(n,)`` (e.g. from LUNA16 /
LIDC-IDRI findings through ``ai.roi``), of which a patient-disjoint fraction
(``--held-out``) is kept for the metrics in the model card.

Output folder: ``model.safetensors`` (weights), ``model_card.json`` and
``MODEL_CARD.md`` (data, configuration, history, metrics and the version id =
hash of the weights), and ``checkpoint.pt`` after every epoch, from which
``--resume`` goes on. :func:`dicom_node.model.load_model_dir` reads such a
folder back (and checks the version against the weights).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

CARD_MD = "MODEL_CARD.md"
CHECKPOINT_FILE = "checkpoint.pt"


def add_subparser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "train", help="train the nodule hashing network (weights + model card)"
    )
    data = parser.add_argument_group("Data")
    source = data.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--rois",
        type=Path,
        metavar="FILE.npz",
        help="labelled ROI stacks: rois, size_class, texture, patient",
    )
    source.add_argument(
        "--phantom",
        type=int,
        metavar="N",
        help="N training ROIs from the phantom's patch mode (held out: N/4 from other patients)",
    )
    data.add_argument(
        "--save-rois",
        type=Path,
        metavar="FILE.npz",
        help="also save the phantom ROIs (train + held out)",
    )
    data.add_argument("--workers", type=int, default=1, help="phantom processes")
    data.add_argument(
        "--held-out",
        type=float,
        default=0.2,
        metavar="FRACTION",
        help="with --rois: fraction of patients kept out for the card's metrics (default 0.2)",
    )
    model = parser.add_argument_group("Model and training")
    model.add_argument(
        "--bits", type=int, default=64, choices=(24, 32, 48, 64), help="bits per hash layer"
    )
    model.add_argument("--epochs", type=int, default=30)
    model.add_argument("--batch-size", type=int, default=64)
    model.add_argument("--lr", type=float, default=2e-3)
    model.add_argument(
        "--growth", type=int, default=None, help="dense-block growth (default: model default)"
    )
    model.add_argument("--seed", type=int, default=0)
    model.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    model.add_argument("--no-amp", action="store_true", help="no mixed precision on CUDA")
    out = parser.add_argument_group("Output Options")
    out.add_argument("--out", type=Path, required=True, metavar="DIR", help="output folder")
    out.add_argument(
        "--resume", action="store_true", help="go on from DIR/checkpoint.pt if present"
    )
    out.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def _card_markdown(card: dict[str, Any]) -> str:
    m = card["metrics_held_out"]
    lines = [
        f"# Nodule hashing model {card['version']}",
        "",
        f"- created: {card['created_utc']} on {card['device']} (torch {card['torch']})",
        f"- data: `{card['data']['source']}`: {card['data']['n_train']} training ROIs from "
        f"{card['data']['train_patients']} patients; "
        f"{card['data']['n_held_out']} held-out ROIs from "
        f"{card['data']['held_out_patients']} other patients",
        f"- network: dense encoder-decoder, {card['n_parameters']:,} parameters, "
        f"{card['config']['model']['n_bits']} bits x 3 layers, input {card['input_shape']}",
        f"- training: {card['config']['epochs']} epochs, batch {card['config']['batch_size']}, "
        f"lr {card['config']['lr']}, seed {card['config']['seed']}, {card['train_seconds']:.0f} s",
        "",
        "## Held-out retrieval",
        "",
        "Joint Hamming distance; queries = held-out patients, database = training set.",
        "",
        "| relevance | mAP | mAP@100 | P@10 |",
        "| --- | ---: | ---: | ---: |",
    ]
    for label, suffix in (
        ("same size class", ""),
        ("same size class and texture", "_size_texture"),
    ):
        lines.append(
            f"| {label} | {m.get('map' + suffix, float('nan')):.3f} | "
            f"{m.get('map@100' + suffix, float('nan')):.3f} | "
            f"{m.get('p@10' + suffix, float('nan')):.3f} |"
        )
    lines += ["", "Full configuration and loss history: `model_card.json`.", ""]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from ai.hashing.model import HashNetConfig
    from ai.hashing.train import (
        RoiSet,
        TrainConfig,
        evaluate_retrieval,
        train,
        weights_to_bytes,
        weights_version,
    )
    from dicom_node.model import CARD_FILE, MODEL_FILE

    device = (
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    model_kwargs: dict[str, Any] = {"n_bits": args.bits}
    if args.growth:
        model_kwargs["growth"] = args.growth
    if args.phantom:
        from ai.hashing.data import phantom_rois

        model_cfg = HashNetConfig(**model_kwargs)
        train_set = phantom_rois(
            args.phantom, model=model_cfg, seed=args.seed, workers=args.workers
        )
        held_out = phantom_rois(
            max(8, args.phantom // 4),
            model=model_cfg,
            seed=args.seed + 10_000,
            workers=args.workers,
        )
        source = (
            f"phantom patch mode, seeds {args.seed} (train) and {args.seed + 10_000} (held out)"
        )
        if args.save_rois:
            np.savez(
                args.save_rois,
                rois=np.concatenate([train_set.rois, held_out.rois]),
                size_class=np.concatenate([train_set.size_class, held_out.size_class]),
                texture=np.concatenate([train_set.texture, held_out.texture]),
                patient=np.concatenate([train_set.patient, held_out.patient]),
            )
    else:
        try:
            with np.load(args.rois, allow_pickle=False) as z:
                data = RoiSet(
                    z["rois"].astype(np.float32, copy=False),
                    z["size_class"].astype(np.int64),
                    z["texture"].astype(np.int64),
                    z["patient"],
                )
        except (OSError, KeyError, ValueError) as exc:
            print(f"dicom-node train: cannot read {args.rois}: {exc}", file=sys.stderr)
            return 2
        _, c, h, w = data.rois.shape
        if h != w:
            print(f"dicom-node train: ROIs must be square, got {h}x{w}", file=sys.stderr)
            return 2
        model_kwargs.update(in_channels=c, roi_size=h)
        train_set, held_out = data.split_by_patient(args.held_out, seed=args.seed)
        source = str(args.rois)
    config = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        amp=not args.no_amp,
        model=HashNetConfig(**model_kwargs),
    )
    args.out.mkdir(parents=True, exist_ok=True)
    checkpoint_path = args.out / CHECKPOINT_FILE
    resume = None
    if args.resume and checkpoint_path.exists():
        resume = torch.load(checkpoint_path, map_location=device, weights_only=False)
        print(f"resuming after epoch {resume['epoch']} from {checkpoint_path}")

    def save_checkpoint(epoch: int, state: dict[str, Any]) -> None:
        tmp = checkpoint_path.with_name(checkpoint_path.name + ".tmp")
        torch.save(state, tmp)
        os.replace(tmp, checkpoint_path)

    t0 = time.perf_counter()
    result = train(
        train_set,
        config,
        device=device,
        resume=resume,
        on_epoch=save_checkpoint,
        progress=not args.no_progress,
    )
    seconds = time.perf_counter() - t0
    weights = weights_to_bytes(result.model)
    version = weights_version(weights)
    metrics = (
        evaluate_retrieval(result.model, held_out, train_set, device=device)
        if len(held_out)
        else {}
    )
    card = {
        "version": version,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "device": torch.cuda.get_device_name() if device.startswith("cuda") else "cpu",
        "torch": torch.__version__,
        "input_shape": [config.model.in_channels, config.model.roi_size, config.model.roi_size],
        "n_parameters": result.model.n_parameters(),
        "data": {
            "source": source,
            "n_train": len(train_set),
            "n_held_out": len(held_out),
            "train_patients": int(np.unique(train_set.patient).size),
            "held_out_patients": int(np.unique(held_out.patient).size),
        },
        "config": config.to_dict(),
        "train_seconds": seconds,
        "history": list(result.history),
        "metrics_held_out": metrics,
    }
    _atomic_write(args.out / MODEL_FILE, weights)
    _atomic_write(args.out / CARD_FILE, json.dumps(card, indent=2).encode("utf-8"))
    _atomic_write(args.out / CARD_MD, _card_markdown(card).encode("utf-8"))
    print(
        f"model {version}: {args.out / MODEL_FILE} "
        f"({len(weights) / 2**20:.2f} MiB), {seconds:.0f} s"
    )
    for key in ("map", "map@100", "p@10", "map_size_texture"):
        if key in metrics:
            print(f"  held-out {key:<17} {metrics[key]:.3f}")
    return 0
