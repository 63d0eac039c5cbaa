"""``dicom-node train``: train the hashing network and write weights + model card.

Data: ``--nodules DIR`` trains the model that has seen real nodules on every
crop of a ``lidc-nodules`` folder together with ``--with-phantoms N`` phantom
ROIs of each family, with the recipe of ``ai.hashing.recipe`` (the shipped
model; its held-out figures are phantoms of other patients, and the k-fold
figure on the crops comes from ``dicom-node evaluate retrieval --nodules DIR
--train-folds``, which trains the same recipe per fold: pass its
``metrics.json`` as ``--kfold-metrics`` to put it in the card);
``--phantom N`` renders N training ROIs with the phantom's patch mode
(``ai.hashing.data.phantom_rois``: the same ``ai.roi`` stacks the worker cuts,
``--family a|b``; ``--recipe`` for the real-crop model's geometry, heads and
augmentation) and N/4 held-out ones from other synthetic patients; or ``--rois FILE.npz``
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
    source.add_argument(
        "--nodules",
        type=Path,
        metavar="DIR",
        help="real LIDC-IDRI crops (nodules.csv, image/, mask/) with phantoms: the shipped recipe",
    )
    data.add_argument(
        "--with-phantoms",
        type=int,
        default=500,  # ai.hashing.recipe.PHANTOMS (not imported here: it loads torch)
        metavar="N",
        help="with --nodules: phantom ROIs of each family beside the crops (500)",
    )
    data.add_argument(
        "--family", choices=("a", "b"), default="a", help="with --phantom: phantom family (a)"
    )
    data.add_argument(
        "--recipe",
        action="store_true",
        help="with --phantom: the real-crop model's geometry, heads and augmentation",
    )
    data.add_argument(
        "--kfold-metrics",
        type=Path,
        metavar="FILE",
        help="metrics.json of evaluate retrieval --nodules --train-folds, quoted in the card",
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
    model.add_argument("--epochs", type=int, default=40)  # also ai.hashing.recipe.EPOCHS
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
        f"- ROI (``ai.roi.extract_rois``, cut as the model's config says): "
        f"{card['config']['model'].get('in_channels', 3)} axial planes "
        f"{card['config']['model'].get('slice_step_mm', 2.0)} mm apart, "
        f"{card['config']['model'].get('fov_mm', 48.0)} mm field of view at "
        f"{card['config']['model']['roi_size']} pixels, outside the volume "
        f"{card['config']['model'].get('roi_outside', 'air')}",
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
    if "training_data" in card:
        lines += [
            "",
            "## Training data, licence and citation",
            "",
            f"- data: {card['training_data']}",
            f"- licence: {card['licence']}",
            f"- cite: {card['citation']}",
        ]
    if "kfold" in card:
        k = card["kfold"]
        lines += [
            "",
            f"## Real nodules: {k['folds']}-fold over patients ({k['n_queries']} nodules)",
            "",
            "Each fold's nodules query the other folds'; "
            + (
                "each fold's model was trained with this recipe on the other folds only "
                "(`dicom-node evaluate retrieval --nodules DIR --train-folds`)."
                if k["trained_per_fold"]
                else "one model for all folds."
            )
            + " Mean ± sd over folds; mAP by relevance.",
            "",
            "| method | size class | malignancy group | texture | size + texture | P@10 size |",
            "| --- | ---: | ---: | ---: | ---: | ---: |",
        ]
        for row, values in k["rows"].items():
            cells = [
                f"{values[m]:.3f} ± {values[m + '_sd']:.3f}" if m in values else "-"
                for m in ("map", "map_malignancy", "map_texture", "map_size_texture", "p@10")
            ]
            lines.append(f"| {row} | " + " | ".join(cells) + " |")
    lines += ["", "Full configuration and loss history: `model_card.json`.", ""]
    return "\n".join(lines)


LIDC_CITATION = (
    "Armato III SG, McLennan G, Bidaut L, McNitt-Gray MF, Meyer CR, Reeves AP, et al. (2015). "
    "Data From LIDC-IDRI. The Cancer Imaging Archive. "
    "https://doi.org/10.7937/K9/TCIA.2015.LO9QL9SX; "
    "Armato SG III et al. The Lung Image Database Consortium (LIDC) and Image Database Resource "
    "Initiative (IDRI): a completed reference database of lung nodules on CT scans. Medical "
    "Physics 38: 915-931, 2011; Clark K et al. The Cancer Imaging Archive (TCIA): maintaining "
    "and operating a public information repository. Journal of Digital Imaging 26(6): "
    "1045-1057, 2013."
)

#: The k-fold rows and metrics quoted in a real-crop model's card.
KFOLD_ROWS = (
    "ours joint 64",
    "ours joint + float rerank 64",
    "ITQ raw pixels 64",
    "LSH raw pixels 64",
)
KFOLD_METRICS = ("map", "map_malignancy", "map_texture", "map_size_texture", "p@10")


def _real_data_card(kfold_metrics: Path | None) -> dict[str, Any]:
    """Training data, licence and citation of a model trained on LIDC-IDRI crops."""
    card: dict[str, Any] = {
        "training_data": (
            "LIDC-IDRI nodule crops (CT around each nodule with the readers' consensus mask and "
            "ratings; the team's lidc-nodules set, other patients held back) and phantoms of "
            "families A and B (family B's nodule shapes: LIDC-IDRI readers' contours of the same "
            "patients)"
        ),
        "licence": "CC BY 3.0 (the weights derive from LIDC-IDRI, CC BY 3.0); code Apache-2.0",
        "citation": LIDC_CITATION,
    }
    if kfold_metrics is not None:
        measured = json.loads(kfold_metrics.read_text(encoding="utf-8"))
        card["kfold"] = {
            "source": measured.get("source"),
            "folds": measured.get("folds"),
            "trained_per_fold": measured.get("trained_per_fold"),
            "n_queries": measured.get("n_queries"),
            "rows": {
                row: {
                    k: v
                    for k, v in measured["rows"][row].items()
                    if k.removesuffix("_sd") in KFOLD_METRICS
                }
                for row in KFOLD_ROWS
                if row in measured["rows"]
            },
        }
    return card


def _plain_config(args: argparse.Namespace, model: Any) -> Any:
    from ai.hashing.train import TrainConfig

    return TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        amp=not args.no_amp,
        model=model,
    )


def run(args: argparse.Namespace) -> int:
    import numpy as np
    import torch

    from ai.hashing.model import HashNetConfig
    from ai.hashing.train import (
        RoiSet,
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
    extra = None
    if args.nodules or (args.phantom and args.recipe):
        from ai.hashing.recipe import phantom_pool, recipe

        config = recipe(epochs=args.epochs, seed=args.seed, n_bits=args.bits)
        families: tuple[str, ...] = ("a", "b") if args.nodules else (args.family,)
        if args.nodules:
            from ai.hashing.data import crop_rois

            train_set, skipped = crop_rois(args.nodules, model=config.model)
            if args.with_phantoms:
                extra = phantom_pool(
                    args.with_phantoms, model=config.model, seed=args.seed, workers=args.workers
                )
            source = (
                f"LIDC-IDRI crops {args.nodules} ({len(train_set)} nodules"
                + (f", {len(skipped)} left out: centre outside its crop" if skipped else "")
                + f") with {args.with_phantoms} phantom ROIs of each family (seed {args.seed})"
            )
        else:
            train_set = phantom_pool(
                args.phantom,
                model=config.model,
                seed=args.seed,
                families=families,
                workers=args.workers,
            )
            source = f"phantom family {args.family.upper()}, seed {args.seed} (recipe)"
        held_out = phantom_pool(
            max(8, (args.phantom or args.with_phantoms or 400) // 4),
            model=config.model,
            seed=args.seed + 10_000,
            families=families,
            workers=args.workers,
        )
        source += f"; held out: phantoms of seed {args.seed + 10_000}"
    elif args.phantom:
        from ai.hashing.data import phantom_rois

        model_cfg = HashNetConfig(**model_kwargs)
        train_set = phantom_rois(
            args.phantom, model=model_cfg, seed=args.seed, workers=args.workers, family=args.family
        )
        held_out = phantom_rois(
            max(8, args.phantom // 4),
            model=model_cfg,
            seed=args.seed + 10_000,
            workers=args.workers,
            family=args.family,
        )
        source = (
            f"phantom patch mode, family {args.family.upper()}, seeds {args.seed} (train) and "
            f"{args.seed + 10_000} (held out)"
        )
        if args.save_rois:
            np.savez(
                args.save_rois,
                rois=np.concatenate([train_set.rois, held_out.rois]),
                size_class=np.concatenate([train_set.size_class, held_out.size_class]),
                texture=np.concatenate([train_set.texture, held_out.texture]),
                patient=np.concatenate([train_set.patient, held_out.patient]),
            )
        config = _plain_config(args, model_cfg)
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
        config = _plain_config(args, HashNetConfig(**model_kwargs))
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
        extra=extra,
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
            "n_phantoms_beside": 0 if extra is None else len(extra),
            "n_held_out": len(held_out),
            "train_patients": int(np.unique(train_set.patient).size),
            "held_out_patients": int(np.unique(held_out.patient).size),
        },
        "config": config.to_dict(),
        "train_seconds": seconds,
        "history": list(result.history),
        "metrics_held_out": metrics,
        "arguments": {k: str(v) for k, v in sorted(vars(args).items()) if k != "func"},
    }
    if args.nodules:
        card.update(_real_data_card(args.kfold_metrics))
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
