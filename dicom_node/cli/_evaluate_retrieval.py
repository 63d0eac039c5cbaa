"""``dicom-node evaluate retrieval``: our codes against LSH and ITQ (FCDN Table 1 shape).

Three sources of labelled ROIs, cut by ``ai.roi`` exactly as the node cuts
them, with the geometry the model asks for (``HashNetConfig.roi_kwargs``):

- ``--nodules DIR``: real nodule crops laid out like ``lidc-nodules``
  (``nodules.csv``, ``image/``, ``mask/``), at the readers' centres;
  ``--folds K`` (default 5) patient-disjoint folds
  (``ai.readers.lidc_crops.patient_folds``), each fold's nodules querying the
  other folds'; mean and spread over folds. Relevance: same size class, same
  malignancy group (benign 1-2 / malignant 4-5; 3 left out), same texture,
  same size class and texture. With ``--train-folds`` the model of each fold
  is trained on the other folds (and phantoms of both families) with the
  shipped model's recipe (``ai.hashing.recipe``), so it never saw the query
  fold's patients: use it for crops the model was trained on; the plain
  command (the shipped model or ``--model``) is honest on other crops;
- ``--phantom N --seed S [--family a|b]``: a database of N phantom ROIs from
  the patients of seed S and N/2 queries from those of seed S+1 (training
  uses other seeds: these patients were never seen);
- ``DIR``: DICOM series with a LUNA16-style ``annotations.csv`` beside them
  (ROIs at the annotated locations; size class from the annotated diameter;
  texture unknown).

For the last two, queries and database are patient-disjoint halves. Prints
the tables (or ``--json``) and writes ``metrics.json`` and ``pr.png``
(precision-recall at 64 bits).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["add_retrieval"]

logger = logging.getLogger(__name__)


def add_retrieval(evaluations: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``evaluate retrieval``."""
    parser = evaluations.add_parser(
        "retrieval", help="mAP, mAP@100, P@10 of our hash codes against LSH and ITQ, with ablations"
    )
    parser.add_argument(
        "dir",
        type=Path,
        nargs="?",
        metavar="DIR",
        help="DICOM series with annotations.csv (or use --phantom)",
    )
    parser.add_argument("--phantom", type=int, metavar="N", help="N phantom ROIs instead of DIR")
    parser.add_argument(
        "--family", choices=("a", "b"), default="a", help="phantom family of --phantom (default a)"
    )
    parser.add_argument(
        "--nodules",
        type=Path,
        metavar="DIR",
        help="real nodule crops (nodules.csv, image/, mask/): k-fold over patients",
    )
    parser.add_argument("--folds", type=int, default=5, help="folds over patients (default 5)")
    parser.add_argument(
        "--train-folds",
        action="store_true",
        help="train each fold's model on the other folds (+ phantoms) with the shipped recipe",
    )
    parser.add_argument(
        "--epochs",
        type=int,
        default=40,  # ai.hashing.recipe.EPOCHS (not imported here: it loads torch)
        help="epochs per fold model with --train-folds (the shipped model's: 40)",
    )
    parser.add_argument(
        "--train-phantoms",
        type=int,
        default=500,  # ai.hashing.recipe.PHANTOMS
        metavar="N",
        help="phantom ROIs per family for --train-folds (the shipped model's: 500; 0: none)",
    )
    parser.add_argument(
        "--seed",
        type=int,
        default=777,
        help="seed of the phantoms, LSH/ITQ and --train-folds (default 777, unused in training)",
    )
    parser.add_argument(
        "--model", type=Path, metavar="DIR", help="model folder (default: the shipped model)"
    )
    parser.add_argument("--workers", type=int, default=1, help="phantom processes")
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("retrieval-evaluation"),
        help="where pr.png and metrics.json go",
    )
    parser.add_argument("--json", action="store_true", help="print the metrics as JSON")
    parser.set_defaults(func=run_retrieval)


def _dicom_rois(folder: Path, config: Any) -> Any:
    from ai.classes import size_class
    from ai.hashing.train import RoiSet
    from ai.readers.luna16 import read_annotations
    from ai.roi import rois_from_points
    from ai.volume import load_series
    from dicom_node.cli.evaluate import _series_files

    annotations = read_annotations(folder / "annotations.csv")
    rois, sizes, patients = [], [], []
    for uid, files in sorted(_series_files(folder).items()):
        found = annotations.get(uid, [])
        if not found:
            continue
        volume = load_series(files)
        points = [a.center_xyz for a in found]
        rois.append(rois_from_points(volume, None, points, **config.roi_kwargs()))
        sizes += [size_class(a.diameter_mm) for a in found]
        import pydicom

        patients += [
            str(pydicom.dcmread(files[0], stop_before_pixels=True).get("PatientID", uid))
        ] * len(found)
    if not rois:
        raise ValueError(f"no annotated series under {folder}")
    n = len(sizes)
    return RoiSet(
        np.concatenate(rois), np.array(sizes, np.int64), np.zeros(n, np.int64), np.array(patients)
    )


def run_retrieval(args: argparse.Namespace) -> int:
    """Run ``evaluate retrieval``."""
    from ai.evaluation.retrieval import evaluate_retrieval_table
    from ai.hashing.infer import encode
    from dicom_node.model import load_model, load_model_dir

    if args.nodules is not None:
        return _run_nodules(args)
    if args.train_folds:
        print("dicom-node evaluate retrieval: --train-folds needs --nodules", file=sys.stderr)
        return 2
    model = load_model_dir(args.model) if args.model else load_model("")
    if model is None:
        print(
            "dicom-node evaluate retrieval: no model (train one, or pass --model)", file=sys.stderr
        )
        return 1
    config = model.net.config
    if args.phantom:
        from ai.hashing.data import phantom_rois

        # Each seed draws its own pool of synthetic patients: database and
        # queries from two seeds are patient-disjoint (and unseen in training).
        sets = [
            phantom_rois(n, model=config, seed=seed, workers=args.workers, family=args.family)
            for n, seed in ((args.phantom, args.seed), (max(8, args.phantom // 2), args.seed + 1))
        ]
        database, queries = (
            s.subset(np.flatnonzero(s.size_class > 0)) for s in sets
        )  # nodules only
        source = (
            f"phantom family {args.family.upper()}, seeds {args.seed} (database) "
            f"and {args.seed + 1} (queries)"
        )
    elif args.dir is not None:
        database, queries = _dicom_rois(args.dir, config).split_by_patient(0.5, seed=args.seed)
        source = str(args.dir)
    else:
        print(
            "dicom-node evaluate retrieval: give DIR, --nodules DIR or --phantom N", file=sys.stderr
        )
        return 2
    if not len(queries) or not len(database):
        print("dicom-node evaluate retrieval: need ROIs of at least two patients", file=sys.stderr)
        return 1
    q = encode(model.net, queries.rois, model_version=model.version)
    db = encode(model.net, database.rois, model_version=model.version)
    result = evaluate_retrieval_table(queries, database, q, db, seed=args.seed)
    metrics = {
        "model_version": model.version,
        "source": source,
        "n_queries": result.n_queries,
        "n_database": result.n_database,
        "rows": result.rows,
    }
    header = (
        f"model {model.version}; {source}; {result.n_queries} queries vs "
        f"{result.n_database} database ROIs (patient-disjoint)"
    )
    return _report(args, metrics, result.curves, header)


def _run_nodules(args: argparse.Namespace) -> int:
    """``--nodules DIR``: k-fold over patients, with the given model or one trained per fold."""
    import torch

    from ai.errors import ReaderError
    from ai.evaluation.retrieval import kfold_retrieval
    from ai.hashing.data import crop_rois
    from ai.hashing.infer import encode
    from ai.hashing.recipe import phantom_pool, recipe, train_recipe
    from ai.readers.lidc_crops import patient_folds
    from dicom_node.model import load_model, load_model_dir

    training = recipe(epochs=args.epochs, seed=args.seed)
    model = None
    if args.train_folds:
        config = training.model
        version = f"recipe ai.hashing.recipe, {args.epochs} epochs, seed {args.seed}, per fold"
    else:
        model = load_model_dir(args.model) if args.model else load_model("")
        if model is None:
            print("dicom-node evaluate retrieval: no model (pass --model)", file=sys.stderr)
            return 1
        config = model.net.config
        version = model.version
    try:
        crops, skipped = crop_rois(args.nodules, model=config)
        fold_of_patient = patient_folds(crops.patient.tolist(), args.folds)
    except (ReaderError, ValueError) as exc:
        print(f"dicom-node evaluate retrieval: {exc}", file=sys.stderr)
        return 1
    folds = np.array([fold_of_patient[p] for p in crops.patient])
    phantoms = None
    if args.train_folds and args.train_phantoms:
        phantoms = phantom_pool(
            args.train_phantoms, model=config, seed=args.seed, workers=args.workers
        )
    device = "cuda" if torch.cuda.is_available() else "cpu"

    first: list[Any] = []

    def codes(fold: int, queries: Any, database: Any) -> Any:
        if model is None:
            started = time.perf_counter()
            net = train_recipe(database, phantoms, training, device=device).model
            logger.info("fold %d model trained in %.0f s", fold, time.perf_counter() - started)
        else:
            net = model.net
        encoded = (
            encode(net, queries.rois, device=device),
            encode(net, database.rois, device=device),
        )
        if not first:
            first.extend([queries, database, *encoded])
        return encoded

    result = kfold_retrieval(crops, folds, codes, seed=args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    queries0, database0, q0, db0 = first
    _matches_png(queries0, database0, q0, db0, args.out / "matches.png")
    metrics = {
        "model_version": version,
        "source": str(args.nodules),
        "folds": args.folds,
        "trained_per_fold": bool(args.train_folds),
        "train_phantoms_per_family": args.train_phantoms if args.train_folds else 0,
        "skipped": skipped,
        "n_queries": result.n_queries,
        "n_database": result.n_database,
        "rows": result.rows,
        "per_fold": result.folds,
    }
    header = (
        f"model {version}; {args.nodules}: {result.n_queries} nodules of "
        f"{len(set(crops.patient.tolist()))} patients, {args.folds} folds over patients "
        f"(each fold queries the others'; mean ± sd over folds)"
        + (f"; {len(skipped)} left out (centre outside its crop)" if skipped else "")
    )
    return _report(args, metrics, result.curves, header)


_RELEVANCE = (
    ("", "size class"),
    ("_malignancy", "malignancy group"),
    ("_texture", "texture"),
    ("_size_texture", "size + texture"),
)


def _cell(row: dict[str, float], key: str) -> str:
    if key not in row:
        return f"{'-':>13}"
    spread = row.get(f"{key}_sd")
    return f"{row[key]:>7.3f}±{spread:<5.3f}" if spread is not None else f"{row[key]:>13.3f}"


def _report(args: argparse.Namespace, metrics: dict[str, Any], curves: Any, header: str) -> int:
    """Write metrics.json and pr.png; print JSON or the tables."""
    from ai.evaluation.retrieval import CODE_LENGTHS

    rows: dict[str, dict[str, float]] = metrics["rows"]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    _pr_png(curves, args.out / "pr.png", "precision-recall at 64 bits, relevance: same size class")
    if args.json:
        print(json.dumps(metrics, indent=2))
        return 0
    print(header + "\n")
    print("mAP, relevance same size class   " + "".join(f"{b:>10} bits " for b in CODE_LENGTHS))
    for method in (
        "ours joint",
        "ours joint + float rerank",
        "ITQ raw pixels",
        "LSH raw pixels",
        "ITQ on our embedding",
        "LSH on our embedding",
    ):
        print(
            f"{method:<33}"
            + "".join(_cell(rows.get(f"{method} {b}", {}), "map") for b in CODE_LENGTHS)
        )
    shown = [
        (suffix, label) for suffix, label in _RELEVANCE if f"map{suffix}" in rows["ours joint 64"]
    ]
    print("\nmAP at 64 bits, relevance:       " + "".join(f"{label:>14}" for _, label in shown))
    methods = (
        "ours joint 64",
        "ours joint + float rerank 64",
        "ours joint + float16 rerank 64",
        "ours shallow only 64",
        "ours middle only 64",
        "ours deep only 64",
        "ours float embedding",
        "ours float16 embedding",
        "ITQ raw pixels 64",
        "LSH raw pixels 64",
    )
    for method in methods:
        print(f"{method:<33}" + "".join(_cell(rows[method], f"map{s}") for s, _ in shown))
    print("\nsame size class, 64 bits             mAP@100          P@10")
    for method in methods:
        print(f"{method:<33}{_cell(rows[method], 'map@100')}{_cell(rows[method], 'p@10')}")
    written = [args.out / name for name in ("pr.png", "matches.png", "metrics.json")]
    print("\nwrote " + ", ".join(str(p) for p in written if p.exists()))
    return 0


def _matches_png(queries: Any, database: Any, q: Any, db: Any, path: Path) -> None:
    """One query per size class of the first fold beside its five nearest (joint distance)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ai.classes import SIZE_CLASS_LABELS
    from ai.hashing.codes import TEXTURES
    from ai.hashing.metrics import joint_distances

    distance = joint_distances((q.shallow, q.middle, q.deep), (db.shallow, db.middle, db.deep))
    chosen = [
        int(np.flatnonzero(queries.size_class == c)[0])
        for c in range(1, 8)
        if (queries.size_class == c).any()
    ]
    group = ("benign", "malignant")
    figure, axes = plt.subplots(len(chosen), 6, figsize=(9.0, 1.65 * len(chosen)), squeeze=False)

    def caption(rois: Any, i: int) -> str:
        m = int(rois.malignancy[i]) if rois.malignancy is not None else -1
        rated = group[m] if m >= 0 else "rated 3"
        return f"{rois.diameter_mm[i]:.1f} mm {TEXTURES[int(rois.texture[i])]}\n{rated}"

    middle = queries.rois.shape[1] // 2
    for row, i in enumerate(chosen):
        order = np.argsort(distance[i], kind="stable")[:5]
        tiles = [
            (
                queries.rois[i, middle],
                f"query ({SIZE_CLASS_LABELS[int(queries.size_class[i])]} mm)\n"
                + caption(queries, i),
                "tab:red",
            )
        ]
        for j in order:
            same = database.size_class[j] == queries.size_class[i]
            tiles.append(
                (
                    database.rois[j, middle],
                    f"h={distance[i, j]} " + caption(database, j),
                    "tab:green" if same else "black",
                )
            )
        for column, (image, text, colour) in enumerate(tiles):
            axis = axes[row][column]
            axis.imshow(image, cmap="gray", vmin=0.0, vmax=1.0)
            axis.set_title(text, fontsize=6, color=colour)
            axis.axis("off")
    figure.suptitle(
        "first fold: queries (left) and their 5 nearest crops of other patients by joint Hamming "
        "distance; green: same size class",
        fontsize=7,
    )
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def _pr_png(curves: dict[str, Any], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5.5, 4.2))
    for name, curve in curves.items():
        axis.plot(
            curve.recall, curve.precision, label=name, linewidth=2 if name.startswith("ours") else 1
        )
    axis.set_xlabel("recall")
    axis.set_ylabel("precision")
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1.02)
    axis.grid(alpha=0.3)
    axis.legend(fontsize=8)
    axis.set_title(title, fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
