"""``dicom-node serve``: run the node until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from dicom_node.cli._common import add_settings_arguments, run_node, settings_from_args


def add_subparser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="run the DICOM node (Verification and Storage SCP, series processing)",
        description="Run the DICOM node on the embedded default (SQLite, local files) "
        "or what the settings say.",
    )
    add_settings_arguments(parser, network=True)
    parser.add_argument(
        "--no-worker",
        action="store_true",
        help="receive and answer only; `dicom-node worker` processes do the processing "
        "(the same as worker.threads = 0)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    if settings is None:
        return 2
    if args.no_worker:
        settings = dataclasses.replace(
            settings, worker=dataclasses.replace(settings.worker, threads=0)
        )
    return run_node(settings, listen=True)
