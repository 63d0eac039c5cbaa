"""``dicom-node worker``: a process that only processes, claiming series from the catalog."""

from __future__ import annotations

import argparse
import dataclasses
import logging
import sys
from typing import TYPE_CHECKING, Any

from dicom_node.cli._common import add_settings_arguments, run_node, settings_from_args

if TYPE_CHECKING:
    from dicom_node.app import Node

logger = logging.getLogger(__name__)


def add_subparser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "worker",
        help="process completed series from a shared catalog (no DICOM listening)",
        description="Claim completed series from the catalog, run the AI and results steps on "
        "them and store what they find; as many as wanted, on other machines (with a GPU) "
        "sharing the node's PostgreSQL catalog and instance files (storage.catalog_url, "
        "storage.instances_dir). A worker that stops loses its series to the others after "
        "worker.lease_seconds. Stop with SIGTERM or SIGINT: running steps finish first.",
    )
    add_settings_arguments(parser)
    parser.add_argument(
        "--threads", type=int, metavar="N", help="worker threads (default worker.threads)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    if settings is None:
        return 2
    if args.threads is not None:
        if args.threads < 1:
            print("dicom-node worker: --threads must be at least 1", file=sys.stderr)
            return 2
        settings = dataclasses.replace(
            settings, worker=dataclasses.replace(settings.worker, threads=args.threads)
        )
    if settings.worker.threads < 1:
        print("dicom-node worker: worker.threads is 0; nothing would run", file=sys.stderr)
        return 2
    from dicom_node.processing.jobs import RecordingStep

    if not settings.catalog_url.startswith("postgresql"):
        logger.warning(
            "the catalog is SQLite: workers on other machines need a PostgreSQL catalog "
            "(storage.catalog_url); this worker shares the file with processes of this machine"
        )

    def _has_model(node: Node) -> str | None:
        if any(isinstance(step, RecordingStep) for step in node.steps):
            return "no hashing model (worker.model_dir)"
        return None

    return run_node(settings, listen=False, check=_has_model)
