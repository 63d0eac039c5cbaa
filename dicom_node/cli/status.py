"""``dicom-node status``: studies and series with their states."""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from dicom_node.cli._common import add_settings_arguments, open_catalog, settings_from_args


def add_subparser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "status", help="show received studies and series with their processing state"
    )
    add_settings_arguments(parser)
    parser.add_argument("--json", action="store_true", help="machine-readable output (stable keys)")
    parser.add_argument(
        "--show-phi", action="store_true", help="include patient names and IDs (off by default)"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    settings = settings_from_args(args)
    if settings is None:
        return 2
    from storage.catalog import DeliveryState

    with open_catalog(settings) as catalog:
        rows = catalog.summaries()
        deliveries = catalog.deliveries([DeliveryState.PENDING, DeliveryState.FAILED])
    delivery_records = [
        {
            "sop_instance_uid": d.sop_instance_uid,
            "sop_class_uid": d.sop_class_uid,
            "destination": d.destination,
            "state": d.state.value,
            "attempts": d.attempts,
            "next_attempt_at": d.next_attempt_at,
            "last_error": d.last_error,
        }
        for d in deliveries
    ]
    records = []
    for row in rows:
        record: dict[str, Any] = {
            "study_instance_uid": row.study_instance_uid,
            "series_instance_uid": row.series_instance_uid,
            "study_date": row.study_date,
            "modality": row.modality,
            "series_number": row.series_number,
            "series_description": row.series_description,
            "instance_count": row.instance_count,
            "state": row.state.value,
            "reason": row.reason,
            "last_received_at": row.last_received_at,
        }
        if args.show_phi:
            record["patient_name"] = row.patient_name
            record["patient_id"] = row.patient_id
        records.append(record)
    if args.json:
        print(json.dumps({"series": records, "deliveries": delivery_records}, indent=2))
        return 0
    print(_table(records, show_phi=args.show_phi) if records else "no studies received yet")
    if delivery_records:
        print(
            f"\n{len(delivery_records)} deliveries pending or failed (dicom-node resend queues failed ones again):"
        )
        for d in delivery_records:
            print(
                f"  {d['state']:<8} {d['destination']:<28} attempts {d['attempts']:<3} "
                f"{d['sop_instance_uid']}  {d['last_error'] or ''}"
            )
    return 0


def _table(records: list[dict[str, Any]], *, show_phi: bool) -> str:
    columns = ["study_date", "modality", "series_number", "instance_count", "state", "reason"]
    headers = ["date", "mod", "series#", "images", "state", "reason"]
    if show_phi:
        columns = ["patient_name", "patient_id", *columns]
        headers = ["patient", "id", *headers]
    lines = []
    study = None
    body: list[list[str]] = []
    for record in records:
        if record["study_instance_uid"] != study:
            study = record["study_instance_uid"]
            body.append([f"study {study}"])
        ago = time.time() - record["last_received_at"]
        cells = ["" if record[c] is None else str(record[c]) for c in columns]
        cells[columns.index("reason")] = (record["reason"] or "") + (
            f" (last image {ago:.0f} s ago)" if record["state"] == "receiving" else ""
        )
        body.append(["  " + cells[0], *cells[1:], f"  {record['series_instance_uid']}"])
    widths = [max(len(h), *(len(r[i]) for r in body if len(r) > 1)) for i, h in enumerate(headers)]
    lines.append("  ".join(h.ljust(w) for h, w in zip(headers, widths)) + "    series UID")
    for row in body:
        if len(row) == 1:
            lines.append(row[0])
        else:
            lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths)) + row[-1])
    return "\n".join(lines)
