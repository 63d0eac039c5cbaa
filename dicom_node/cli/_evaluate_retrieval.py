"""``dicom-node evaluate retrieval``: our codes against LSH and ITQ (FCDN Table 1 shape).

Two sources of labelled ROIs, cut by ``ai.roi`` exactly as the node cuts them:

- ``--phantom N --seed S``: a database of N phantom ROIs from the patients of
  seed S and N/2 queries from those of seed S+1 (training uses seeds 0 and
  10000: these patients were never seen);
- ``DIR``: DICOM series with a LUNA16-style ``annotations.csv`` beside them
  (ROIs at the annotated locations; size class from the annotated diameter;
  texture unknown, so the size+texture column repeats the size column).

Queries and database are patient-disjoint halves. Prints the tables (or
``--json``) and writes ``pr.png`` (precision-recall at 64 bits).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["add_retrieval"]


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
        "--seed", type=int, default=777, help="phantom seed (default 777, never used in training)"
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
        rois.append(rois_from_points(volume, None, points, size=config.roi_size))
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
    from ai.evaluation.retrieval import CODE_LENGTHS, evaluate_retrieval_table
    from ai.hashing.infer import encode
    from dicom_node.model import load_model, load_model_dir

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
            phantom_rois(n, model=config, seed=seed, workers=args.workers)
            for n, seed in ((args.phantom, args.seed), (max(8, args.phantom // 2), args.seed + 1))
        ]
        database, queries = (
            s.subset(np.flatnonzero(s.size_class > 0)) for s in sets
        )  # nodules only
        source = f"phantom seeds {args.seed} (database) and {args.seed + 1} (queries)"
    elif args.dir is not None:
        database, queries = _dicom_rois(args.dir, config).split_by_patient(0.5, seed=args.seed)
        source = str(args.dir)
    else:
        print("dicom-node evaluate retrieval: give DIR or --phantom N", file=sys.stderr)
        return 2
    if not len(queries) or not len(database):
        print("dicom-node evaluate retrieval: need ROIs of at least two patients", file=sys.stderr)
        return 1
    q = encode(model.net, queries.rois, model_version=model.version)
    db = encode(model.net, database.rois, model_version=model.version)
    result = evaluate_retrieval_table(queries, database, q, db, seed=args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    metrics = {
        "model_version": model.version,
        "source": source,
        "n_queries": result.n_queries,
        "n_database": result.n_database,
        "rows": result.rows,
    }
    (args.out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    _pr_png(result.curves, args.out / "pr.png", "precision-recall at 64 bits, relevance: same size class")
    if args.json:
        print(json.dumps(metrics, indent=2))
        return 0
    print(
        f"model {model.version}; {source}; {result.n_queries} queries vs {result.n_database} database ROIs "
        "(patient-disjoint); relevance: same size class\n"
    )
    print("mAP (whole database)       " + "".join(f"{b:>8} bits" for b in CODE_LENGTHS))
    for method in (
        "ours joint",
        "ours joint + float rerank",
        "ITQ raw pixels",
        "LSH raw pixels",
        "ITQ on our embedding",
        "LSH on our embedding",
    ):
        cells = [result.rows.get(f"{method} {b}", {}).get("map") for b in CODE_LENGTHS]
        print(
            f"{method:<27}"
            + "".join(f"{c:>13.3f}" if c is not None else f"{'-':>13}" for c in cells)
        )
    print("\nat 64 bits                      mAP   mAP@100     P@10   mAP size+texture")
    for method in (
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
    ):
        r = result.rows[method]
        print(
            f"{method:<30}{r['map']:>6.3f}{r['map@100']:>10.3f}{r['p@10']:>9.3f}{r['map_size_texture']:>12.3f}"
        )
    print(f"\nwrote {args.out / 'pr.png'}, {args.out / 'metrics.json'}")
    return 0


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
