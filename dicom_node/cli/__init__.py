"""The ``dicom-node`` command.

Each subcommand is a module in this package exposing
``add_subparser(subparsers) -> None``; the subparser it adds calls
``set_defaults(func=run)`` where ``run(args: argparse.Namespace) -> int``.
Modules are discovered, so adding a subcommand is adding a file. Subcommand
modules import heavy dependencies (torch, SimpleITK, pynetdicom) inside
``run`` so that ``dicom-node --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys
from collections.abc import Sequence

from dicom_node import __version__

logger = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    """Return the top-level parser with every discovered subcommand."""
    parser = argparse.ArgumentParser(
        prog="dicom-node",
        description="DICOM node for lung-nodule similar-case retrieval.",
    )
    parser.add_argument("--version", action="version", version=f"dicom-node {__version__}")
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    verbosity.add_argument("-d", "--debug", action="store_true", help="debug output")
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        add = getattr(module, "add_subparser", None)
        if add is not None:
            add(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; return the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    func = getattr(args, "func", None)
    if func is None:
        parser.print_help()
        return 2
    from dicom_node.cli._logging import configure_logging

    level = logging.INFO
    if args.quiet:
        level = logging.WARNING
    elif args.debug:
        level = logging.DEBUG
    configure_logging(level)
    from dicom_node.errors import NodeError
    from storage.errors import StorageError

    try:
        return int(func(args))
    except KeyboardInterrupt:
        return 130
    except (NodeError, StorageError) as exc:
        print(f"dicom-node: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
