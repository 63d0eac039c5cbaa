"""``dicom-node resend``: queue failed (or delivered) results again for their destinations."""

from __future__ import annotations

import argparse
from typing import Any

from dicom_node.cli._common import add_settings_arguments, open_catalog, settings_from_args


def add_subparser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "resend",
        help="queue failed deliveries of results (SR, key images) again",
        description="Put failed outbox deliveries back to pending; a running node sends them "
        "within seconds.",
    )
    add_settings_arguments(parser)
    parser.add_argument(
        "sop_instance_uids",
        nargs="*",
        metavar="SOP_INSTANCE_UID",
        help="only these objects (default: every failed delivery)",
    )
    parser.add_argument(
        "--include-delivered",
        action="store_true",
        help="also send again what was already delivered",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    if settings is None:
        return 2
    with open_catalog(settings) as catalog:
        count = catalog.deliveries.requeue(
            sop_instance_uids=args.sop_instance_uids or None, include_done=args.include_delivered
        )
    print(f"{count} deliveries queued again")
    return 0
