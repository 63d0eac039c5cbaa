"""``dicom-node evaluate measurement``: diameters, volume and texture on real nodules.

Reads a folder laid out like ``lidc-nodules`` (``nodules.csv`` + NIfTI crops
and the readers' consensus masks, see :mod:`ai.readers.lidc_crops`), measures
every nodule as the node does (:func:`ai.evaluation.measurement.measure_crop`)
and compares it with the readers' mask. ``--folds`` keeps the patients of
some folds of :func:`ai.readers.lidc_crops.patient_folds` (``k=5``, seed 0):
the segmentation was tuned on folds 0-3, so fold 4 is the honest figure.
Prints a table (or ``--json``) and writes ``measurement.png`` and
``measurement.json`` (per nodule).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

__all__ = ["add_measurement"]

logger = logging.getLogger(__name__)


def add_measurement(evaluations: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``evaluate measurement``."""
    parser = evaluations.add_parser(
        "measurement",
        help="diameter, long axis, volume and texture of real nodules against the readers' masks",
    )
    parser.add_argument(
        "--nodules",
        type=Path,
        required=True,
        metavar="DIR",
        help="folder with nodules.csv, image/ and mask/ (the lidc-nodules layout)",
    )
    parser.add_argument(
        "--folds",
        type=int,
        nargs="+",
        metavar="F",
        help="only the patients of these folds (0-4; the defaults were tuned on 0-3)",
    )
    parser.add_argument("--limit", type=int, help="only the first N nodules (after --folds)")
    parser.add_argument("--device", default="cpu", help="torch device of the blob filter (cpu)")
    parser.add_argument(
        "--out", type=Path, default=Path("measurement-evaluation"), help="where the files go"
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    parser.set_defaults(func=run_measurement)


def _cell(value: float | None, fmt: str = "{:.2f}") -> str:
    return "-" if value is None else fmt.format(value)


def _print_table(report: Any, seconds: float, n: int) -> None:
    print(f"nodules {n} measured in {seconds:.0f} s")
    print()
    header = (
        f"{'group':>12s}  {'n':>4s}  {'found':>5s}  {'|d err| mm':>10s}  {'bias mm':>8s}"
        f"  {'|long axis err| mm':>18s}  {'|vol err| %':>11s}"
    )
    print(header)
    for row in (report.overall, *report.size_classes, *report.textures):
        print(
            f"{row.label:>12s}  {row.n:4d}  {row.found:5d}  "
            f"{_cell(row.median_abs_diameter_error_mm):>10s}"
            f"  {_cell(row.median_diameter_bias_mm):>8s}"
            f"  {_cell(row.median_abs_long_axis_error_mm):>18s}"
            f"  {_cell(row.median_abs_volume_error_pct, '{:.0f}'):>11s}"
        )
    print("\n(medians; size classes by the readers' equivalent diameter)")
    print("\ntexture, readers (rows) against the node (columns):")
    names = list(report.texture_confusion)
    print(f"{'':>14s}" + "".join(f"{name:>14s}" for name in names))
    for name in names:
        counts = report.texture_confusion[name]
        print(f"{name:>14s}" + "".join(f"{counts[other]:14d}" for other in names))


def run_measurement(args: argparse.Namespace) -> int:
    """Run ``evaluate measurement``; 0 on success, 1 when nothing could be measured."""
    from ai.errors import AIError
    from ai.evaluation.figures import measurement_png
    from ai.evaluation.measurement import measure_crop, summarise_measurements
    from ai.readers.lidc_crops import patient_folds, read_nodule_table

    try:
        nodules = read_nodule_table(args.nodules)
    except AIError as exc:
        print(f"dicom-node evaluate measurement: {exc}", file=sys.stderr)
        return 1
    if args.folds:
        folds = patient_folds(n.patient_id for n in nodules)
        nodules = [n for n in nodules if folds[n.patient_id] in set(args.folds)]
    if args.limit:
        nodules = nodules[: args.limit]
    if not nodules:
        print("dicom-node evaluate measurement: no nodules selected", file=sys.stderr)
        return 1
    started = time.perf_counter()
    measurements = []
    for index, nodule in enumerate(nodules, start=1):
        try:
            measurements.append(measure_crop(nodule, device=args.device))
        except AIError as exc:
            logger.warning("%s/%s skipped: %s", nodule.patient_id, nodule.nodule_id, exc)
        if index % 50 == 0:
            logger.info("%d/%d nodules", index, len(nodules))
    seconds = time.perf_counter() - started
    if not measurements:
        print("dicom-node evaluate measurement: nothing could be measured", file=sys.stderr)
        return 1
    report = summarise_measurements(measurements)
    args.out.mkdir(parents=True, exist_ok=True)
    folds_text = f"folds {' '.join(map(str, args.folds))}" if args.folds else "all folds"
    png = measurement_png(measurements, title=f"real LIDC nodules, {folds_text}")
    (args.out / "measurement.png").write_bytes(png)
    summary = report.to_dict() | {"folds": args.folds, "seconds": seconds}
    per_nodule = [asdict(m) for m in measurements]
    (args.out / "measurement.json").write_text(
        json.dumps({"summary": summary, "nodules": per_nodule}, indent=1)
    )
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        _print_table(report, seconds, len(measurements))
        print(f"\nwrote {args.out / 'measurement.png'}, {args.out / 'measurement.json'}")
    return 0
