"""``dicom-node serve``: run the node until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from typing import Any

from dicom_node.cli._common import add_settings_arguments, settings_from_args

logger = logging.getLogger(__name__)


def add_subparser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "serve",
        help="run the DICOM node (Verification and Storage SCP, series processing)",
        description="Run the DICOM node on the embedded default (SQLite, local files) "
        "or what the settings say.",
    )
    add_settings_arguments(parser, network=True)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args, check_paths=True)
    if settings is None:
        return 2
    from storage.errors import DataDirectoryInUse, StorageError
    from storage.lock import DataDirectoryLock

    # Before the heavy imports and the model: a second node fails at once.
    lock = DataDirectoryLock(settings.data_dir)
    try:
        lock.acquire()
    except DataDirectoryInUse as exc:
        print(f"dicom-node: cannot start: {exc}", file=sys.stderr)
        return 1
    from dicom_node.cli._logging import add_log_file, log_file

    path = log_file(settings)
    if path is not None:
        add_log_file(
            path, max_bytes=settings.logging.max_mb * 2**20, backups=settings.logging.backups
        )
    from dicom_node.app import Node
    from dicom_node.errors import NodeError

    stop = threading.Event()

    def _request_stop(signum: int, _frame: object) -> None:
        logger.info("signal %d received; stopping", signum)
        stop.set()

    signal.signal(signal.SIGTERM, _request_stop)
    signal.signal(signal.SIGINT, _request_stop)
    try:
        node = Node(settings, lock=lock)
        node.start()
    except (OSError, StorageError, NodeError) as exc:
        lock.release()
        print(f"dicom-node: cannot start: {exc}", file=sys.stderr)
        return 1
    try:
        stop.wait()
    finally:
        node.stop()
    return 0
