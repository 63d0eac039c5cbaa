"""``dicom-node import-crops``: public nodule crops as a reference library in the node."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from dicom_node.cli._common import add_settings_arguments, settings_from_args


def add_subparser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "import-crops",
        help="store LIDC-IDRI nodule crops as reference studies, their nodules given and indexed",
        description="Each crop of DIR (laid out like lidc-nodules: nodules.csv, image/, mask/) "
        "becomes a CT series of its patient's reference study in the node's data directory, "
        "stored as a C-STORE would store it; its nodule is the readers' (centre, mask, ratings), "
        "encoded with the node's hashing model and indexed, never detected. Importing again "
        "writes nothing. A running node on the same data directory sees the crops within "
        "index.poll_seconds; a node started later loads them.",
    )
    add_settings_arguments(parser)
    parser.add_argument(
        "--nodules", type=Path, required=True, metavar="DIR", help="the crops (nodules.csv ...)"
    )
    parser.add_argument(
        "--exclude-patient",
        action="append",
        default=[],
        metavar="ID",
        help="leave this patient's crops out (repeatable), e.g. the patient a demo queries with",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args, check_paths=True)
    if settings is None:
        return 2
    from ai.errors import ReaderError
    from dicom_node.intake.ingest import Ingest
    from dicom_node.intake.reference import import_crops
    from dicom_node.model import load_model
    from dicom_node.processing.analysis import resolve_device
    from storage.catalog import Catalog
    from storage.instances import InstanceStore

    model = load_model(settings.worker.model_dir)
    if model is None:
        print("dicom-node import-crops: no hashing model to encode with", file=sys.stderr)
        return 1
    store = InstanceStore(
        settings.instances_dir,
        min_free_bytes=settings.storage.min_free_mb * 2**20,
        fsync=settings.storage.fsync,
    )
    catalog = Catalog(settings.catalog_url)
    device = resolve_device(settings.worker.device)
    model.net.to(device)
    try:
        report = import_crops(
            str(args.nodules),
            ingest=Ingest(store, catalog),
            catalog=catalog,
            model=model,
            device=device,
            exclude_patients=set(args.exclude_patient),
            progress=not args.no_progress,
        )
        total = catalog.reference.series_count()
    except ReaderError as exc:
        print(f"dicom-node import-crops: {exc}", file=sys.stderr)
        return 1
    finally:
        catalog.close()
    print(
        f"{report.imported} crops imported ({report.instances} new instances), "
        f"{report.unchanged} already indexed for model {model.version}, "
        f"{report.excluded} excluded, {len(report.skipped)} left out; "
        f"{total} reference series in the catalog"
    )
    for line in report.skipped:
        print(f"  left out: {line}")
    return 0
