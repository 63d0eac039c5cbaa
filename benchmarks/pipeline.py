"""Completion -> indexed for one series, step by step; series/hour for one and two workers.

Part 1, one 512x512x300 phantom series through the node's worker, in
process: the series is written as DICOM and stored in a node's instance store
and catalog first (not timed); then the timed part is exactly what a worker
does when the series completes: the job runner's AI step (read the headers,
qualify, read the pixel data into the HU volume, lungs, nodules, ROIs, codes,
catalog rows, index) and its results step (SR and key images kept, queued),
then one outbox pass to storescu. Uses the shipped hashing model.

Part 2, throughput: ``--series`` such series (other patients) received into a
PostgreSQL catalog (a server of its own) and a shared instance folder, then
processed by ``dicom-node worker`` processes, timed from the moment every
series is marked complete (the workers already started and idle) until every
one is reported: one worker without and with read-ahead, and two workers
(the cores shared between them).

Usage::

    python -m benchmarks.pipeline [--matrix 512] [--slices 300] [--device auto] [--series 4]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.pipeline", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--matrix", type=int, default=512)
    parser.add_argument("--pixel-mm", type=float, default=0.7)
    parser.add_argument("--slice-mm", type=float, default=1.25)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--seed", type=int, default=101)
    parser.add_argument(
        "--series", type=int, default=4, help="series for the throughput part (0: skip it)"
    )
    args = parser.parse_args(argv)

    import dataclasses

    import torch

    from ai.phantom import ScanGeometry, write_cohort
    from dicom_node.app import Node
    from dicom_node.intake.series import complete_idle_series
    from dicom_node.processing.analysis import resolve_device
    from dicom_node.settings import Destination, load_settings
    from storage.catalog import DeliveryState
    from tests.factories import receive_files
    from tests.peers import PEER_ENV, free_port, wait_for_port

    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory(prefix="dicom-node-pipeline-") as tmp:
        root = Path(tmp)
        geometry = ScanGeometry(
            matrix=args.matrix, pixel_mm=args.pixel_mm, slice_mm=args.slice_mm, slices=args.slices
        )
        write_cohort(
            root / "cohort",
            patients=max(1, args.series),
            seed=args.seed,
            studies_per_patient=1,
            geometry=geometry,
        )
        by_series: dict[str, list[Path]] = {}
        for path in sorted((root / "cohort" / "dicom").rglob("*.dcm")):
            by_series.setdefault(path.parent.as_posix(), []).append(path)
        files = next(iter(by_series.values()))
        # The PACS: dcmtk storescp; the results go to it through the outbox.
        pacs_port = free_port()
        (root / "pacs").mkdir()
        pacs = subprocess.Popen(
            ["/usr/bin/storescp", "-od", str(root / "pacs"), "-aet", "PACS", str(pacs_port)],
            env=PEER_ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_for_port(pacs_port, process=pacs)
        settings = load_settings(environ={}, overrides={"data_dir": root / "node"})
        settings = dataclasses.replace(
            settings,
            storage=dataclasses.replace(settings.storage, min_free_mb=0),
            worker=dataclasses.replace(settings.worker, device=device),
            outbox=dataclasses.replace(
                settings.outbox, destinations=(Destination("PACS", "127.0.0.1", pacs_port),)
            ),
        )
        node = Node(settings)  # the shipped model (or none: then nothing is indexed)
        receive_files(node.ingest, files)
        (series_uid,) = complete_idle_series(node.catalog, 0)
        version = node.steps[0].version
        try:
            started = time.perf_counter()
            job = node.runner.run(series_uid)
            total = time.perf_counter() - started
            delivered = time.perf_counter()
            results = node.outbox.run_once()
            delivery_s = time.perf_counter() - delivered
        finally:
            pacs.terminate()
            pacs.wait()
            node.catalog.close()
        steps = job.timings if job is not None else {}
        outcome = job.outcome if job is not None else None
        acknowledged = sum(state is DeliveryState.DONE for _, state, _ in results)
        rows = _throughput(root, list(by_series.values()), device) if args.series else []
    print(
        f"\ncompletion -> indexed, {len(files)} slices {args.matrix}x{args.matrix}, device {device}, "
        f"torch threads {torch.get_num_threads()}, model {version}\n"
    )
    print(f"{'step':<34} {'seconds':>8}")
    labels = {
        "read": "read DICOM, HU volume at 1 mm",
        "lungs": "lungs",
        "nodules": "nodules",
        "rois": "ROIs",
        "codes": "hash codes (encoding)",
        "store": "catalog rows + index",
    }
    for name, label in labels.items():
        print(f"{label:<34} {steps.get(name, float('nan')):>8.2f}")
    indexed = total - steps.get("results", 0.0)
    print(f"{'completion -> indexed':<34} {indexed:>8.2f}")
    print(f"{'SR + key images built and kept':<34} {steps.get('results', float('nan')):>8.2f}")
    print(
        f"{'C-STORE to storescp, acknowledged':<34} {delivery_s:>8.2f}   ({acknowledged} objects)"
    )
    print(f"{'indexed -> SR acknowledged':<34} {steps.get('results', 0.0) + delivery_s:>8.2f}")
    print(f"{'total':<34} {total + delivery_s:>8.2f}")
    print(
        f"\noutcome: {outcome.state.value if outcome else 'not claimed'} ({outcome.reason if outcome else ''})"
    )
    print(
        json.dumps(
            {
                "indexed_s": round(indexed, 2),
                "delivery_s": round(delivery_s, 3),
                **{k: round(v, 2) for k, v in steps.items()},
            }
        )
    )
    if rows:
        print(
            f"\nthroughput: {args.series} series of {len(files)} slices, dicom-node worker "
            f"processes on {os.cpu_count()} CPU cores, PostgreSQL catalog, device {device}\n"
        )
        print(f"{'workers':<44} {'seconds':>8} {'series/hour':>12}")
        for label, seconds, _ in rows:
            print(f"{label:<44} {seconds:>8.1f} {args.series / seconds * 3600:>12.0f}")
        print("\nlast run's outcomes:\n  " + "\n  ".join(rows[-1][2]))
        print(
            json.dumps(
                {label: round(args.series / seconds * 3600, 1) for label, seconds, _ in rows}
            )
        )
    return 0


#: (label, worker processes, read ahead)
CONFIGURATIONS = (
    ("1 worker, read-ahead off", 1, False),
    ("1 worker, read-ahead on", 1, True),
    ("2 workers, read-ahead on", 2, True),
)


def _throughput(
    root: Path, series_files: list[list[Path]], device: str
) -> list[tuple[str, float, list[str]]]:
    """Seconds to process every series, per configuration of worker processes."""
    from dicom_node.intake.ingest import Ingest
    from storage.catalog import Catalog, SeriesState
    from storage.instances import InstanceStore
    from tests.factories import receive_files
    from tests.peers import postgresql_server, wait_until

    (root / "pg").mkdir()
    shared = root / "shared-instances"
    rows = []
    with postgresql_server(root / "pg") as url:
        catalog = Catalog(url)
        ingest = Ingest(InstanceStore(shared), catalog)
        for files in series_files:
            receive_files(ingest, files)
        uids = catalog.workflow.series_in_states([SeriesState.RECEIVING])
        done = (SeriesState.REPORTED, SeriesState.SKIPPED, SeriesState.FAILED)
        cores = os.cpu_count() or 1
        for label, count, read_ahead in CONFIGURATIONS:
            catalog.workflow.requeue(uids, list(SeriesState), send_results=False, reason="bench")
            for uid in uids:  # not claimable until the clock starts
                catalog.workflow.transition(uid, SeriesState.RECEIVING)
            env = {
                **os.environ,
                "DICOM_NODE_STORAGE_CATALOG_URL": url,
                "DICOM_NODE_STORAGE_INSTANCES_DIR": str(shared),
                "DICOM_NODE_STORAGE_MIN_FREE_MB": "0",
                "DICOM_NODE_WORKER_DEVICE": device,
                "DICOM_NODE_WORKER_POLL_SECONDS": "0.5",
                "DICOM_NODE_WORKER_READ_AHEAD": "true" if read_ahead else "false",
                "OMP_NUM_THREADS": str(max(1, cores // count)),
            }
            logs = [root / f"{label[:9].replace(' ', '-')}-{i}.log" for i in range(count)]
            workers = []
            for i, log in enumerate(logs):
                with log.open("wb") as handle:
                    workers.append(
                        subprocess.Popen(
                            [
                                sys.executable,
                                "-m",
                                "dicom_node",
                                "worker",
                                "--data-dir",
                                str(root / f"worker-{label[:1]}-{i}"),
                            ],
                            stdout=handle,
                            stderr=subprocess.STDOUT,
                            env=env,
                            cwd=REPO,
                        )  # fmt: skip
                    )
            try:
                wait_until(
                    lambda logs=logs: all(
                        "similarity index of model" in p.read_text() for p in logs
                    ),
                    timeout=300,
                    what="workers started",
                )
                started = time.perf_counter()
                now = time.time()
                for uid in uids:
                    catalog.workflow.complete(uid, idle_before=now, now=now)
                wait_until(
                    lambda: all(catalog.workflow.series_state(u)[0] in done for u in uids),
                    timeout=3600,
                    what="every series processed",
                )
                seconds = time.perf_counter() - started
            finally:
                for worker in workers:
                    worker.terminate()
                for worker in workers:
                    worker.wait(120)
            reasons = [str(catalog.workflow.series_state(u)[1]) for u in uids]
            rows.append((label, seconds, reasons))
        catalog.close()
    return rows


if __name__ == "__main__":
    sys.exit(main())
