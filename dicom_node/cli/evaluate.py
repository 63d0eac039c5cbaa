"""``dicom-node evaluate``: measure the ai steps against ground truth.

``evaluate`` has one nested subcommand per evaluation. Each is added by one
function ``add_<name>(evaluations)`` listed in :data:`EVALUATIONS`; that
function adds its parser to the nested ``evaluations`` sub-parsers and sets
``func`` to its ``run``. Adding ``retrieval`` is writing ``add_retrieval``
and appending it to the tuple.

``evaluate detection DIR`` reads every DICOM series under ``DIR`` and the
LUNA16-style ``annotations.csv`` beside them (or, with ``--lidc``, each
series' LIDC-IDRI readers' XML: nodules of 3 mm or more marked by 3 of the 4
readers, the other marks irrelevant findings); when lung masks
``masks/<SeriesInstanceUID>_lungs.mha`` are there (our phantom cohorts) it
also scores the lung segmentation. Candidates are found, scored by the
false-positive reduction network (``--fpr``, default the shipped one) and
those under the node's minimum diameter dropped, exactly as the node does;
the report reads the FROC and the node's operating point (false positives
and nodules reported per scan there). It prints a table (or JSON with
``--json``) and writes ``froc.png``, ``montage.png`` and ``metrics.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def add_subparser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``evaluate`` and its nested evaluations."""
    parser = subparsers.add_parser(
        "evaluate", help="measure lungs/nodules (and more) against ground truth"
    )
    evaluations = parser.add_subparsers(title="evaluations", metavar="WHAT")
    for add in EVALUATIONS:
        add(evaluations)

    def _usage(args: argparse.Namespace) -> int:
        parser.print_help()
        return 2

    parser.set_defaults(func=_usage)


# --------------------------------------------------------------------------- detection


def add_detection(evaluations: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``evaluate detection``."""
    parser = evaluations.add_parser(
        "detection",
        help="lung Dice, FROC/CPM and size classes on DICOM series with a LUNA16 annotations.csv",
    )
    parser.add_argument(
        "dir", type=Path, metavar="DIR", help="folder of DICOM series with annotations.csv"
    )
    parser.add_argument(
        "--out", type=Path, help="where the PNGs and metrics.json go (default DIR/evaluation)"
    )
    parser.add_argument(
        "--json", action="store_true", help="print the metrics as JSON instead of a table"
    )
    parser.add_argument(
        "--annotations", type=Path, help="annotations CSV (default DIR/annotations.csv)"
    )
    parser.add_argument(
        "--device", default=None, help="torch device (default cuda when present, else cpu)"
    )
    parser.add_argument(
        "--spacing",
        type=float,
        nargs=3,
        metavar=("Z", "Y", "X"),
        help="resample each series to this spacing (mm)",
    )
    parser.add_argument("--limit", type=int, help="evaluate only the first N series")
    parser.add_argument(
        "--min-diameter", type=float, default=3.0, help="smallest scored nodule, mm (3)"
    )
    parser.add_argument("--montage", type=int, default=40, help="most tiles in the montage (40)")
    parser.add_argument(
        "--lidc", action="store_true", help="truth from each series' LIDC-IDRI readers' XML"
    )
    node = parser.add_argument_group("The node's detector")
    node.add_argument("--fpr", type=Path, metavar="DIR", help="FPR model folder (default shipped)")
    node.add_argument(
        "--min-probability",
        type=float,
        help="operating point (default the FPR model card's; worker.min_nodule_probability)",
    )
    node.add_argument(
        "--report-min-diameter",
        type=float,
        default=4.0,
        help="smallest diameter the node reports, mm (4; worker.min_nodule_diameter_mm)",
    )
    parser.set_defaults(func=run_detection)


@dataclass
class _TileSource:
    """What a montage tile needs, kept small while the volume is gone."""

    image: Any
    diameter_mm: float
    confidence: float
    caption: str
    truth: bool


def _series_files(root: Path) -> dict[str, list[Path]]:
    """Series Instance UID -> its DICOM files under ``root`` (headers only read)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    series: dict[str, list[Path]] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if path.suffix.lower() in {".csv", ".json", ".mha", ".png", ".mhd", ".raw", ".txt", ".md"}:
            continue
        try:
            ds = pydicom.dcmread(
                path, stop_before_pixels=True, specific_tags=["SeriesInstanceUID", "Modality"]
            )
        except (InvalidDicomError, OSError):
            continue
        uid = str(ds.get("SeriesInstanceUID", ""))
        if uid and ds.get("Modality", "CT") == "CT":
            series.setdefault(uid, []).append(path)
    return series


def _lidc_marks(files: list[Path]) -> tuple[list[Any], list[Any]]:
    """LUNA16 nodules and other marks from the readers' XML beside a series."""
    from ai.evaluation.detection import Truth
    from ai.readers.lidc import luna16_marks, read_lidc_scan

    nodules, others = luna16_marks(read_lidc_scan(files[0].parent))
    return [Truth(c, d) for c, d in nodules], [Truth(c, d) for c, d in others]


def _evaluate_series(
    uid: str,
    files: list[Path],
    truths: list[Any],
    args: argparse.Namespace,
    device: str,
    fpr: Any,
    ignored: list[Any] | None = None,
) -> tuple[Any, list[_TileSource], float]:
    import numpy as np

    from ai.evaluation.detection import Detection, ScanResult, Truth, dice
    from ai.evaluation.figures import tile_from_volume
    from ai.fpr import score_candidates
    from ai.lungs import segment_lungs
    from ai.nodules import find_nodules
    from ai.volume import load_series, read_image, resample_like

    started = time.perf_counter()
    volume = load_series(files, spacing=tuple(args.spacing) if args.spacing else (1.0, 1.0, 1.0))
    mask = segment_lungs(volume, device=device)
    found = find_nodules(volume, mask, device=device)
    scored = score_candidates(fpr, volume, found, device=device)
    # what the node reports from: its minimum diameter, ranked by the network's probability
    candidates = sorted(
        (c for c in scored if c.diameter_mm >= args.report_min_diameter),
        key=lambda c: -(c.probability or 0.0),
    )
    seconds = time.perf_counter() - started
    lung_dice = None
    mask_path = args.dir / "masks" / f"{uid}_lungs.mha"
    if mask_path.exists():
        truth_mask = resample_like(read_image(mask_path), volume)
        lung_dice = dice(truth_mask.array > 0, mask.labels > 0)
    scan = ScanResult(
        series_instance_uid=uid,
        truths=tuple(Truth(t.center_xyz, t.diameter_mm) for t in truths),
        detections=tuple(
            Detection(c.center_xyz, float(c.probability or 0.0), c.diameter_mm) for c in candidates
        ),
        lung_dice=lung_dice,
        ignored=tuple(ignored or ()),
    )
    tiles = []
    short = uid[-8:]
    for t in truths:
        near = [
            c
            for c in candidates
            if np.linalg.norm(np.subtract(c.center_xyz, t.center_xyz)) <= t.diameter_mm / 2
        ]
        best = max((float(c.probability or 0.0) for c in near), default=-1.0)
        tile = tile_from_volume(volume, t.center_xyz, t.diameter_mm, "hit", "")
        tiles.append(
            _TileSource(tile.image, t.diameter_mm, best, f"{short} {t.diameter_mm:.1f}mm", True)
        )
    hit_any = [
        any(
            np.linalg.norm(np.subtract(c.center_xyz, t.center_xyz)) <= t.diameter_mm / 2
            for t in truths
        )
        for c in candidates
    ]
    for c, hit in list(zip(candidates, hit_any, strict=True)):
        if hit:
            continue
        tile = tile_from_volume(volume, c.center_xyz, c.diameter_mm, "fp", "")
        caption = f"{short} {c.diameter_mm:.1f}mm"
        probability = float(c.probability or 0.0)
        tiles.append(_TileSource(tile.image, c.diameter_mm, probability, caption, False))
        if sum(not s.truth for s in tiles) >= 3:
            break
    return scan, tiles, seconds


def _montage(sources: list[_TileSource], threshold: float, limit: int) -> bytes:
    from ai.evaluation.figures import Tile, montage_png

    truths = sorted((s for s in sources if s.truth), key=lambda s: s.confidence)
    misses = [s for s in truths if s.confidence < threshold]
    hits = [s for s in truths if s.confidence >= threshold]
    fps = sorted(
        (s for s in sources if not s.truth and s.confidence >= threshold),
        key=lambda s: -s.confidence,
    )
    share = max(1, limit // 3)
    chosen = misses[:share] + fps[:share]
    chosen += hits[: max(0, limit - len(chosen))]
    tiles = []
    for s in chosen:
        kind = "fp" if not s.truth else ("hit" if s.confidence >= threshold else "miss")
        conf = f" c{s.confidence:.2f}" if s.confidence >= 0 else ""
        tiles.append(Tile(s.image, kind, s.diameter_mm / 2 / (48.0 / 64) + 2.0, s.caption + conf))  # type: ignore[arg-type]
    return montage_png(tiles, title=f"detections at p >= {threshold:.2f}")


def _print_table(report: Any, seconds: list[float]) -> None:
    dice_text = (
        "n/a"
        if report.lung_dice_mean is None
        else f"{report.lung_dice_mean:.4f} (min {report.lung_dice_min:.4f})"
    )
    print(f"scans                        {report.n_scans}")
    print(f"lung Dice mean               {dice_text}")
    print(f"seconds per series (median)  {sorted(seconds)[len(seconds) // 2]:.1f}")
    print()
    header = "FP/scan      " + " ".join(f"{r:>6g}" for r in report.froc_all.rates) + "     CPM"
    print(header)
    for name, f in (("all >= min", report.froc_all), (">= 5 mm", report.froc_5mm)):
        cells = " ".join(f"{s:6.3f}" for s in f.at_rates)
        print(f"{name:12s} {cells}  {f.cpm:6.3f}   (n={f.n_truths})")
    print()
    print(f"sensitivity >= 5 mm at 4 FP/scan  {report.sensitivity_5mm_at_4fp:.3f}")
    err = report.median_abs_diameter_error_mm
    print(f"median |diameter error| (mm)      {'n/a' if err is None else f'{err:.2f}'}")
    point = report.operating_point
    if point is not None:
        sens = "n/a" if point.sensitivity is None else f"{point.sensitivity:.3f}"
        sens5 = "n/a" if point.sensitivity_5mm is None else f"{point.sensitivity_5mm:.3f}"
        print()
        print(f"operating point: probability >= {point.threshold:.3f}")
        fps = list(point.false_positives)
        print(f"  false positives per scan        {point.fps_per_scan:.2f}  {fps}")
        print(f"  nodules reported per scan       {list(point.reported)}")
        missed = f"({point.missed_5mm} missed >= 5 mm)"
        print(f"  sensitivity (>= min) / >= 5 mm  {sens} / {sens5}  {missed}")
        for miss in point.missed:
            x, y, z = miss.center_xyz
            near = (
                "no detection in the scan"
                if miss.nearest_mm is None
                else f"nearest detection {miss.nearest_mm:.1f} mm away "
                f"({miss.nearest_diameter_mm:.1f} mm, probability {miss.nearest_probability:.2f})"
            )
            print(
                f"    missed {miss.diameter_mm:.1f} mm at ({x:.1f}, {y:.1f}, {z:.1f}) in "
                f"...{miss.series_instance_uid[-8:]}: {miss.reason}; {near}"
            )
    where = "at the operating point" if point is not None else "at 4 FP/scan"
    print()
    print(f"class  diameter  nodules  found  sensitivity  median |error| mm   ({where})")
    for row in report.size_classes:
        sens = "   -" if row.sensitivity is None else f"{row.sensitivity:.3f}"
        e = (
            "   -"
            if row.median_abs_diameter_error_mm is None
            else f"{row.median_abs_diameter_error_mm:.2f}"
        )
        print(
            f"{row.size_class:5d}  {row.label:>8s}  {row.n:7d}  {row.found:5d}  "
            f"{sens:>11s}  {e:>8s}"
        )


def run_detection(args: argparse.Namespace) -> int:
    """Run ``evaluate detection``; 0 on success, 1 when nothing could be evaluated."""
    import torch

    from ai.errors import AIError
    from ai.evaluation.detection import evaluate_detection
    from ai.evaluation.figures import froc_png
    from ai.readers.luna16 import read_annotations
    from dicom_node.errors import NodeError
    from dicom_node.model import load_fpr

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        fpr = load_fpr(args.fpr)
        csv_path = args.annotations or args.dir / "annotations.csv"
        annotations = {} if args.lidc else read_annotations(csv_path)
    except (AIError, NodeError) as exc:
        print(f"dicom-node evaluate detection: {exc}", file=sys.stderr)
        return 1
    threshold = fpr.operating_point if args.min_probability is None else args.min_probability
    series = _series_files(args.dir)
    uids = sorted(series)[: args.limit] if args.limit else sorted(series)
    if not uids:
        print(
            f"dicom-node evaluate detection: no DICOM CT series under {args.dir}", file=sys.stderr
        )
        return 1
    scans, tiles, seconds = [], [], []
    for index, uid in enumerate(uids, start=1):
        try:
            truths, ignored = (
                _lidc_marks(series[uid]) if args.lidc else (annotations.get(uid, []), [])
            )
            scan, series_tiles, elapsed = _evaluate_series(
                uid, series[uid], truths, args, device, fpr, ignored
            )
        except AIError as exc:
            logger.warning("series %s skipped: %s", uid, exc)
            continue
        scans.append(scan)
        tiles.extend(series_tiles)
        seconds.append(elapsed)
        logger.info(
            "series %d/%d %s: %d detections in %.1f s",
            index,
            len(uids),
            uid,
            len(scan.detections),
            elapsed,
        )
    if not scans:
        print("dicom-node evaluate detection: no series could be evaluated", file=sys.stderr)
        return 1
    report = evaluate_detection(scans, min_diameter_mm=args.min_diameter, threshold=threshold)
    out = args.out or args.dir / "evaluation"
    out.mkdir(parents=True, exist_ok=True)
    (out / "froc.png").write_bytes(froc_png(report, title="FROC, dicom-node detection"))
    (out / "montage.png").write_bytes(_montage(tiles, threshold, args.montage))
    metrics = report.to_dict() | {
        "device": device,
        "seconds_per_series": seconds,
        "fpr_version": fpr.version,
        "report_min_diameter_mm": args.report_min_diameter,
        "series": [s.series_instance_uid for s in scans],
    }
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
    if args.json:
        print(json.dumps(metrics, indent=2))
    else:
        _print_table(report, seconds)
        print(f"\nwrote {out / 'froc.png'}, {out / 'montage.png'}, {out / 'metrics.json'}")
    return 0


from dicom_node.cli._evaluate_measurement import add_measurement  # noqa: E402 - after its helpers
from dicom_node.cli._evaluate_retrieval import add_retrieval  # noqa: E402 - after its helpers

#: One adder per nested evaluation (see the module docstring).
EVALUATIONS: tuple[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None], ...] = (
    add_detection,
    add_retrieval,
    add_measurement,
)
