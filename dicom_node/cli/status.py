"""``dicom-node status``: studies with their series and states, and the node's results."""

from __future__ import annotations

import argparse
import json
import os
import time
from collections import defaultdict
from typing import Any

from dicom_node.cli._common import add_settings_arguments, open_catalog, settings_from_args
from dicom_node.settings import Settings


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
    from dicom_node.net.similarity import folder_id
    from storage.catalog import DeliveryState, JobState

    with open_catalog(settings) as catalog:
        rows = catalog.workflow.summaries()
        generated = catalog.intake.generated_results(current_only=True)
        deliveries = catalog.deliveries.in_states()
        accessions = {}
        for uid in dict.fromkeys(r.study_instance_uid for r in rows):
            study = catalog.intake.study(uid)
            accessions[uid] = study.accession_number if study is not None else None
        running = {
            job.series_instance_uid: job
            for job in catalog.workflow.jobs_in_states([JobState.RUNNING])
        }
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
    delivered: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for delivery in deliveries:
        delivered[delivery.sop_instance_uid].append(
            {"destination": delivery.destination, "state": delivery.state.value}
        )
    result_records = [
        {
            "study_instance_uid": r.study_instance_uid,
            "series_instance_uid": r.series_instance_uid,
            "sop_instance_uid": r.sop_instance_uid,
            "sop_class_uid": r.sop_class_uid,
            "kind": r.kind.value,
            "source_series_instance_uid": r.source_series_instance_uid,
            "model_version": r.model_version,
            "revision": r.revision,
            "created_at": r.created_at,
            "deliveries": delivered[r.sop_instance_uid],
        }
        for r in generated
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
            "accession_number": accessions[row.study_instance_uid],
            # PatientID of the study's similar-case folder on the similarity AE
            "similar_folder": folder_id(row.study_instance_uid, accessions[row.study_instance_uid]),
        }
        job = running.get(row.series_instance_uid)
        if job is not None:  # which worker (host:pid:…) runs which step, and its lease
            record["job"] = {
                "step": job.step,
                "worker": job.worker,
                "attempts": job.attempts,
                "lease_expires_at": job.lease_expires_at,
            }
        if args.show_phi:
            record["patient_name"] = row.patient_name
            record["patient_id"] = row.patient_id
        records.append(record)
    unfinished = [
        d
        for d in delivery_records
        if d["state"] in (DeliveryState.PENDING.value, DeliveryState.FAILED.value)
    ]
    node = _node_record(settings)
    if args.json:
        print(
            json.dumps(
                {
                    "node": node,
                    "series": records,
                    "results": result_records,
                    "deliveries": unfinished,
                },
                indent=2,
            )
        )
        return 0
    print(_node_lines(node))
    print(
        _table(records, result_records, show_phi=args.show_phi)
        if records
        else "no studies received yet"
    )
    if unfinished:
        print(
            f"\n{len(unfinished)} deliveries pending or failed "
            "(dicom-node resend queues failed ones again):"
        )
        for d in unfinished:
            print(
                f"  {d['state']:<8} {d['destination']:<28} attempts {d['attempts']:<3} "
                f"{d['sop_instance_uid']}  {d['last_error'] or ''}"
            )
    return 0


def _node_record(settings: Settings) -> dict[str, Any]:
    """The node itself: running or not, its log file, what its last start recovered."""
    from dicom_node.cli._logging import log_file
    from storage.lock import read_record

    record = read_record(settings.data_dir)
    running = record is not None and not record.clean and _alive(record.pid)
    runtime: dict[str, Any] = {}
    try:
        runtime = json.loads((settings.data_dir / "node.json").read_text())
    except (OSError, ValueError):
        pass
    path = log_file(settings)
    return {
        "data_dir": str(settings.data_dir.resolve()),
        "running_pid": record.pid if running and record is not None else None,
        "log_file": None if path is None else str(path.resolve()),
        "last_start": runtime.get("recovery"),
        "receiver_pids": sorted(
            pid for pid in runtime.get("receiver_pids", []) if running and _alive(pid)
        ),
    }


def _alive(pid: int | None) -> bool:
    if pid is None:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _node_lines(node: dict[str, Any]) -> str:
    state = f"running (pid {node['running_pid']})" if node["running_pid"] else "not running"
    lines = [f"node {state}; data {node['data_dir']}; log {node['log_file'] or '(stderr only)'}"]
    if node["receiver_pids"]:
        pids = ", ".join(map(str, node["receiver_pids"]))
        lines.append(f"receiver processes beside it (network.receivers): pids {pids}")
    start = node["last_start"]
    if start:
        lines.append(
            f"last start recovered: {start['partial_files_removed']} partial file(s) removed, "
            f"{start['orphans_catalogued']} orphan file(s) catalogued, "
            f"{start['orphans_removed']} removed"
        )
    return "\n".join(lines) + "\n"


_KIND_LABELS = {"similarity-sr": "similar-case SR", "key-images": "key images"}


def _result_line(result: dict[str, Any], series_numbers: dict[str, Any]) -> str:
    sent = (
        ", ".join(f"{d['destination']} {d['state']}" for d in result["deliveries"])
        or "kept here (no destination)"
    )
    source = series_numbers.get(result["source_series_instance_uid"])
    revision = f" revision {result['revision']}" if result["revision"] > 1 else ""
    return (
        f"  result  {_KIND_LABELS.get(result['kind'], result['kind'])}{revision} "
        f"(series #{source}), model {result['model_version']}: {sent}    "
        f"{result['sop_instance_uid']}"
    )


def _table(records: list[dict[str, Any]], results: list[dict[str, Any]], *, show_phi: bool) -> str:
    columns = ["study_date", "modality", "series_number", "instance_count", "state", "reason"]
    headers = ["date", "mod", "series#", "images", "state", "reason"]
    if show_phi:
        columns = ["patient_name", "patient_id", *columns]
        headers = ["patient", "id", *headers]
    by_study: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for result in results:
        by_study[result["study_instance_uid"]].append(result)
    series_numbers = {r["series_instance_uid"]: r["series_number"] for r in records}
    body: list[list[str]] = []
    study = None
    for record in records:
        if record["study_instance_uid"] != study:
            if study is not None:
                body += [[_result_line(r, series_numbers)] for r in by_study[study]]
            study = record["study_instance_uid"]
            accession = record["accession_number"] or "(none)"
            body.append(
                [f"study {study}  accession {accession}  similar cases: {record['similar_folder']}"]
            )
        ago = time.time() - record["last_received_at"]
        cells = ["" if record[c] is None else str(record[c]) for c in columns]
        cells[columns.index("reason")] = (record["reason"] or "") + (
            f" (last image {ago:.0f} s ago)" if record["state"] == "receiving" else ""
        )
        if "job" in record:
            job = record["job"]
            left = (job["lease_expires_at"] or 0.0) - time.time()
            cells[columns.index("reason")] = (
                f"{job['step']} on {job['worker']}, attempt {job['attempts']}, "
                + (f"lease {left:.0f} s left" if left > 0 else f"lease ran out {-left:.0f} s ago")
            )
        body.append(["  " + cells[0], *cells[1:], f"  {record['series_instance_uid']}"])
    if study is not None:
        body += [[_result_line(r, series_numbers)] for r in by_study[study]]
    widths = [max(len(h), *(len(r[i]) for r in body if len(r) > 1)) for i, h in enumerate(headers)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + "    series UID"]
    for row in body:
        if len(row) == 1:
            lines.append(row[0])
        else:
            lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)) + row[-1])
    return "\n".join(lines)
