"""Options shared by subcommands that read the node's settings."""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from dicom_node.errors import SettingsError
from dicom_node.settings import Settings, load_settings

if TYPE_CHECKING:
    from dicom_node.app import Node
    from storage.catalog import Catalog

logger = logging.getLogger(__name__)


def add_settings_arguments(parser: argparse.ArgumentParser, *, network: bool = False) -> None:
    """Add ``--config`` and ``--data-dir`` (and the network flags when asked)."""
    group = parser.add_argument_group("Configuration")
    group.add_argument("--config", type=Path, metavar="FILE", help="TOML settings file")
    group.add_argument("--data-dir", type=Path, metavar="DIR", help="data directory")
    if network:
        net = parser.add_argument_group("Network Options")
        net.add_argument("--port", type=int, help="TCP port to listen on (default 11112)")
        net.add_argument(
            "--host", help="address to listen on (default 127.0.0.1; 0.0.0.0 = every interface)"
        )
        net.add_argument("--ae-title", help="our AE title (default DICOM_NODE)")


def settings_from_args(args: argparse.Namespace, *, check_paths: bool = False) -> Settings | None:
    """Load settings from the parsed flags; print the error and return None if invalid.

    Only ``serve`` passes ``check_paths``: it creates the data directory.
    Every other command works on an existing one and creates nothing.
    """
    overrides = {
        "data_dir": getattr(args, "data_dir", None),
        "port": getattr(args, "port", None),
        "host": getattr(args, "host", None),
        "ae_title": getattr(args, "ae_title", None),
    }
    try:
        return load_settings(args.config, overrides=overrides, check_paths=check_paths)
    except SettingsError as exc:
        print(f"dicom-node: configuration error: {exc}", file=sys.stderr)
        return None


@contextmanager
def open_catalog(settings: Settings) -> Iterator[Catalog]:
    """The existing catalog of ``settings``, closed on exit (never a new one).

    Raises
    ------
    CatalogError
        There is no catalog there (``dicom-node`` prints the message).
    """
    from storage.catalog import Catalog

    catalog = Catalog(settings.catalog_url, create=False)
    try:
        yield catalog
    finally:
        catalog.close()


def run_node(
    settings: Settings, *, listen: bool, check: Callable[[Node], str | None] | None = None
) -> int:
    """Start a node (``listen``: serving; else as a worker), run it until SIGTERM or SIGINT.

    A serving node takes the data directory's lock first, before the heavy
    imports and the model, so a second one fails at once; it logs to the
    data directory's log file as well as stderr. A worker shares the data
    directory (or its catalog and instance files) with the node holding it.

    Parameters
    ----------
    check : callable, optional
        Given the built node before it starts; a message returned refuses the start.

    Returns
    -------
    int
        The exit status: 0 after a clean stop, 1 when it could not start.
    """
    from storage.errors import StorageError
    from storage.lock import DataDirectoryLock

    name = "dicom-node" if listen else "dicom-node worker"
    lock = None
    if listen:
        lock = DataDirectoryLock(settings.data_dir)
        try:
            lock.acquire()
        except StorageError as exc:
            print(f"{name}: cannot start: {exc}", file=sys.stderr)
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
        logger.info("signal %d received; stopping after the steps running now", signum)
        stop.set()

    signal.signal(signal.SIGTERM, _request_stop)
    signal.signal(signal.SIGINT, _request_stop)
    try:
        node = Node(settings, lock=lock, exclusive=listen)
        refusal = check(node) if check is not None else None
        if refusal is not None:
            node.catalog.close()
            if lock is not None:
                lock.release()
            print(f"{name}: {refusal}", file=sys.stderr)
            return 1
        node.start(listen=listen, only_workers=not listen)
    except (OSError, StorageError, NodeError) as exc:
        if lock is not None:
            lock.release()
        print(f"{name}: cannot start: {exc}", file=sys.stderr)
        return 1
    try:
        stop.wait()
    finally:
        node.stop()
    return 0
