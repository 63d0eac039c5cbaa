"""``dicom-node reindex``: process the archive again (after installing a new model)."""

from __future__ import annotations

import argparse
from typing import Any

from dicom_node.cli._common import add_settings_arguments, open_catalog, settings_from_args

STATES = ("indexed", "reported", "failed", "skipped", "reference")


def add_subparser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "reindex",
        help="queue processed series again, e.g. after setting a new hashing model",
        description="Put processed series back to 'complete'; the running node (or the next one "
        "started) processes them with its configured model. Nodules of each model version are "
        "kept apart, so the old version's stay searchable until you drop them.",
    )
    add_settings_arguments(parser)
    parser.add_argument(
        "--send-results",
        action="store_true",
        help="send the results this makes to outbox.destinations (default: keep them in the "
        "node; a result whose content did not change is never sent again)",
    )
    parser.add_argument(
        "--states",
        default="indexed,reported,failed,reference",
        help=f"comma-separated series states to queue again (from {', '.join(STATES)}; "
        "default indexed,reported,failed,reference; a reference series, imported with "
        "import-crops, has its given nodules encoded again, never detected)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    if settings is None:
        return 2
    from storage.catalog import SeriesState

    wanted = [s.strip() for s in args.states.split(",") if s.strip()]
    unknown = [s for s in wanted if s not in STATES]
    if unknown:
        print(
            f"dicom-node reindex: unknown state(s) {', '.join(unknown)}; choose from {', '.join(STATES)}"
        )
        return 2
    states = [SeriesState(s) for s in wanted]
    with open_catalog(settings) as catalog:
        uids = catalog.workflow.series_in_states(states)
        moved = catalog.workflow.requeue(
            uids,
            states,
            send_results=args.send_results,
            reason="queued again by dicom-node reindex",
        )
    sending = (
        "changed results will be sent"
        if args.send_results
        else "results are kept in the node, not sent (--send-results sends changed ones)"
    )
    print(
        f"{moved} series queued for processing; running workers pick them up within "
        f"worker.poll_seconds ({settings.worker.poll_seconds:g} s); {sending}"
    )
    return 0
