"""``dicom-node backfill``: make an archive's prior CT studies searchable, resumably.

Examples::

    dicom-node backfill --orthanc http://127.0.0.1:8042/ --since 2024-01-01 --until 2024-12-31
    dicom-node backfill --orthanc http://orthanc:8042/ --window 22:00-06:00 --max-mb-per-s 20
    dicom-node backfill --pacs PACS@10.0.0.5:104 --since -7 --index-only
    dicom-node backfill --pacs PACS@10.0.0.5:104 --since -1 --move-destination DICOM_NODE
    dicom-node backfill --orthanc http://127.0.0.1:8042/ --since 2024-01-01 --dry-run

Beside a running ``dicom-node serve`` on the same data directory the
backfill hands every instance to it over DICOM (C-STORE, or the PACS's
C-MOVE); with no node running it runs one in its own process, without
listening (unless ``--move-destination`` needs it to).
Exit status: 0 done, 1 some studies failed (the next run retries them),
2 bad arguments or settings, 3 stopped (SIGTERM, SIGINT; the next run resumes).
"""

from __future__ import annotations

import argparse
import datetime
import logging
import signal
import sys
import threading
from typing import TYPE_CHECKING, Any

from dicom_node.cli._common import add_settings_arguments, settings_from_args

if TYPE_CHECKING:
    from dicom_node.backfill.pacing import OffPeakWindow
    from dicom_node.backfill.run import BackfillOptions, DayEstimate, Summary
    from dicom_node.settings import Settings

logger = logging.getLogger(__name__)

EXIT_FAILED, EXIT_USAGE, EXIT_STOPPED = 1, 2, 3


def parse_day(text: str, *, today: datetime.date | None = None) -> datetime.date:
    """``YYYY-MM-DD``, ``YYYYMMDD``, ``today``, ``yesterday`` or ``-N`` (N days ago)."""
    today = today or datetime.date.today()
    value = text.strip().lower()
    if value == "today":
        return today
    if value == "yesterday":
        return today - datetime.timedelta(days=1)
    if value.startswith("-") and value[1:].isdigit():
        return today - datetime.timedelta(days=int(value[1:]))
    for form in ("%Y-%m-%d", "%Y%m%d"):
        try:
            return datetime.datetime.strptime(value, form).date()
        except ValueError:
            continue
    raise argparse.ArgumentTypeError(
        f"{text!r} is not a date (YYYY-MM-DD, YYYYMMDD, today, yesterday or -N days)"
    )


def add_subparser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "backfill",
        help="index the prior CT studies of an archive (Orthanc REST or any PACS over DIMSE)",
        description="Make the prior CT studies of an archive searchable: fetch what the node "
        "lacks, day by day, resumably; results stay in the node unless --send-results.",
    )
    add_settings_arguments(parser)
    source = parser.add_argument_group("Archive")
    which = source.add_mutually_exclusive_group(required=True)
    which.add_argument(
        "--orthanc",
        metavar="URL",
        help="Orthanc REST root, http(s)://[user:password@]host:port/ (or credentials in ~/.netrc)",
    )
    which.add_argument("--pacs", metavar="AE@HOST:PORT", help="any PACS, by C-FIND and C-GET")
    source.add_argument(
        "--move-destination",
        metavar="AE",
        help="--pacs: retrieve by C-MOVE to this AE (the node's; the PACS knows its address) "
        "instead of C-GET",
    )
    source.add_argument(
        "--find-limit",
        type=int,
        metavar="N",
        help="--pacs: the PACS returns at most N matches without saying so; split such answers",
    )
    source.add_argument(
        "--calling-ae",
        metavar="AE",
        help="our AE title towards the PACS and the node (default ae_title)",
    )
    scope = parser.add_argument_group("What")
    scope.add_argument(
        "--since", type=parse_day, metavar="DAY", help="first StudyDate (default: whole archive)"
    )
    scope.add_argument(
        "--until", type=parse_day, metavar="DAY", help="last StudyDate (default today)"
    )
    scope.add_argument(
        "--index-only",
        action="store_true",
        help="keep codes, measurements and thumbnails, drop the instance files once processed",
    )
    scope.add_argument(
        "--send-results",
        action="store_true",
        help="send the SR and key images of backfilled series to outbox.destinations "
        "(default: keep them here)",
    )
    scope.add_argument(
        "--recheck", action="store_true", help="list the days an earlier run finished again"
    )
    scope.add_argument(
        "--dry-run",
        action="store_true",
        help="say what would be fetched and how much; fetch nothing",
    )
    pace = parser.add_argument_group("Pace")
    pace.add_argument(
        "--max-parallel", type=int, default=4, metavar="N", help="transfers at once (4)"
    )
    pace.add_argument("--max-mb-per-s", type=float, metavar="MB", help="bandwidth limit (none)")
    pace.add_argument(
        "--window", metavar="HH:MM-HH:MM", help="run only in this time of day, e.g. 22:00-06:00"
    )
    parser.add_argument(
        "--no-wait",
        action="store_true",
        help="end after fetching, without waiting for the processing of the fetched series",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    if settings is None:
        return EXIT_USAGE
    from dicom_node.backfill.pacing import OffPeakWindow
    from dicom_node.backfill.run import BackfillOptions

    if args.move_destination and not args.pacs:
        print("dicom-node: --move-destination goes with --pacs", file=sys.stderr)
        return EXIT_USAGE
    try:
        window = OffPeakWindow.parse(args.window) if args.window else None
        options = BackfillOptions(
            since=args.since,
            until=args.until,
            index_only=args.index_only,
            send_results=args.send_results,
            recheck=args.recheck,
        )
        if args.until and not args.since:
            raise ValueError("--until needs --since (or leave both out for the whole archive)")
    except ValueError as exc:
        print(f"dicom-node: {exc}", file=sys.stderr)
        return EXIT_USAGE
    stop = threading.Event()

    def _request_stop(signum: int, _frame: object) -> None:
        logger.info("signal %d received: finishing the transfers in flight, then stopping", signum)
        stop.set()

    previous = {sig: signal.signal(sig, _request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        return _backfill(args, settings, stop, window, options)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _backfill(
    args: argparse.Namespace,
    settings: Settings,
    stop: threading.Event,
    window: OffPeakWindow | None,
    options: BackfillOptions,
) -> int:
    from dicom_node.backfill import open_backfill
    from dicom_node.backfill.pacing import Pacing
    from dicom_node.errors import ArchiveError, HandoffError, SettingsError

    pacing = Pacing(
        window=window,
        max_bytes_per_second=(args.max_mb_per_s or 0) * 1e6 or None,
        stop=stop,
    )
    try:
        with open_backfill(
            settings,
            orthanc=args.orthanc,
            pacs=args.pacs,
            pacing=pacing,
            options=options,
            max_parallel=args.max_parallel,
            move_destination=args.move_destination,
            find_limit=args.find_limit,
            calling_ae_title=args.calling_ae,
            dry_run=args.dry_run,
        ) as session:
            if args.dry_run:
                return _print_estimate(session.estimate())
            summary = session.run(wait=not args.no_wait)
    except (ArchiveError, HandoffError, SettingsError) as exc:
        print(f"dicom-node: backfill: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except ValueError as exc:  # a malformed --orthanc URL
        print(f"dicom-node: {exc}", file=sys.stderr)
        return EXIT_USAGE
    _print_summary(summary)
    if summary.stopped:
        return EXIT_STOPPED
    return EXIT_FAILED if summary.studies_failed else 0


def _print_estimate(days: list[DayEstimate]) -> int:
    def line(date: str, studies: int, instances: int, to_fetch: int, mb: float | None) -> str:
        size = "?" if mb is None else f"{mb:.1f}"
        return f"{date:<10}  {studies:>7}  {instances:>12}  {to_fetch:>8}  {size:>8}"

    print(f"{'study date':<10}  {'studies':>7}  {'CT instances':>12}  {'to fetch':>8}  {'MB':>8}")
    for day in days:
        print(line(day.study_date, day.studies, day.ct_instances, day.to_fetch, day.megabytes))
    sizes = [d.megabytes for d in days]
    total = None if any(m is None for m in sizes) else sum(m or 0.0 for m in sizes)
    print(
        line(
            "total",
            sum(d.studies for d in days),
            sum(d.ct_instances for d in days),
            sum(d.to_fetch for d in days),
            total,
        )
    )
    print("(dry run: nothing fetched; MB '?': a PACS does not tell sizes over DIMSE)")
    return 0


def _print_summary(summary: Summary) -> None:
    s = summary.seconds
    hours = (s["list"] + s["fetch"]) / 3600
    rate = summary.studies / hours if hours > 0 else 0.0
    print(
        f"backfill: {summary.studies} studies visited ({summary.studies_failed} failed), "
        f"{summary.studies_done_before} done by earlier runs; "
        f"{summary.instances_fetched} instances fetched ({summary.bytes_fetched / 1e6:.1f} MB), "
        f"{summary.instances_known} already held; {summary.series_released} series released "
        f"(index only)"
    )
    print(
        f"time: list {s['list']:.1f} s, fetch {s['fetch']:.1f} s (hand-over {s['handoff']:.1f} s "
        f"summed over transfers), processing wait {s['wait']:.1f} s; {rate:.0f} studies/h"
    )
    if summary.incomplete_windows:
        print(
            "warning: the archive capped these windows even split to a minute; studies may be "
            f"missing: {', '.join(summary.incomplete_windows)}"
        )
    if summary.stopped:
        print("stopped: run the same command again to go on")
