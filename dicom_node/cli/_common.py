"""Options shared by subcommands that read the node's settings."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from dicom_node.errors import SettingsError
from dicom_node.settings import Settings, load_settings

if TYPE_CHECKING:
    from storage.catalog import Catalog


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


def settings_from_args(
    args: argparse.Namespace, *, check_paths: bool = False
) -> Settings | None:
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
