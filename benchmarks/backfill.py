"""Backfill from Orthanc: studies per hour on this machine, and where the time goes.

An Orthanc started with the deploy/orthanc/ configuration holds a phantom
archive (chest CT studies written by ``ai.phantom``; not timed). Then three
phases, each timed on its own so that they do not blur into each other:

1. **download**: every CT instance file fetched over REST, ``--max-parallel``
   at a time, and dropped (what the network and Orthanc give);
2. **fetch**: ``dicom-node backfill --orthanc`` with the node's worker off:
   listing, download and ingest (validation, fsync, catalog), ingest summed
   over the transfer threads;
3. **processing**: the node's worker on the backfilled series (the AI step
   and the results step, from the jobs table), until every series is settled.

Prints one table; studies/hour counts all three phases one after the other,
as a backfill into an idle node does.

Usage::

    python -m benchmarks.backfill [--studies 4] [--matrix 512] [--max-parallel 4]
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.backfill", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--studies", type=int, default=4, help="studies (2 per patient)")
    parser.add_argument("--matrix", type=int, default=512)
    parser.add_argument("--pixel-mm", type=float, default=0.7)
    parser.add_argument("--slice-mm", type=float, default=1.25)
    parser.add_argument("--max-parallel", type=int, default=4)
    parser.add_argument("--seed", type=int, default=23)
    args = parser.parse_args(argv)

    from ai.phantom import ScanGeometry, write_cohort
    from dicom_node.app import Node
    from dicom_node.backfill import open_backfill
    from dicom_node.backfill.pacing import Pacing
    from dicom_node.backfill.run import BackfillOptions
    from dicom_node.settings import settings_from_table
    from storage.catalog import SeriesState
    from tests.orthanc import start_orthanc

    with tempfile.TemporaryDirectory(prefix="dicom-node-bench-backfill-") as tmp:
        root = Path(tmp)
        geometry = ScanGeometry(matrix=args.matrix, pixel_mm=args.pixel_mm, slice_mm=args.slice_mm)
        patients = max(1, (args.studies + 1) // 2)
        write_cohort(
            root / "cohort",
            patients=patients,
            seed=args.seed,
            studies_per_patient=2 if args.studies > 1 else 1,
            geometry=geometry,
        )
        files = sorted((root / "cohort" / "dicom").rglob("*.dcm"))
        megabytes = sum(p.stat().st_size for p in files) / 1e6
        orthanc = start_orthanc(root / "orthanc", lua=False)
        try:
            orthanc.upload(files)
            studies = orthanc.get("studies")

            # 1. download only
            session = orthanc.session()
            instance_ids = orthanc.get("instances")
            started = time.perf_counter()
            with ThreadPoolExecutor(args.max_parallel) as pool:
                sizes = pool.map(
                    lambda i: len(session.get(f"{orthanc.url}instances/{i}/file").content),
                    instance_ids,
                )
                assert sum(sizes) > 0
            download = time.perf_counter() - started

            # 2. fetch: backfill into a node whose worker is off
            table = {
                "data_dir": str(root / "node"),
                "host": "127.0.0.1",
                "port": 0,
                "similarity": {"port": -1},
                "storage": {"min_free_mb": 0},
                "worker": {"threads": 0},
            }
            settings = settings_from_table(table, "benchmark")
            with open_backfill(
                settings,
                orthanc=orthanc.url_with_credentials,
                pacing=Pacing(stop=threading.Event()),
                options=BackfillOptions(),
                max_parallel=args.max_parallel,
            ) as run:
                summary = run.run(wait=False)
            fetch = summary.seconds["list"] + summary.seconds["fetch"]

            # 3. processing: the node's worker on what was fetched
            settings = settings_from_table({**table, "worker": {"threads": 1}}, "benchmark")
            node = Node(settings)
            started = time.perf_counter()
            node.start(listen=False)
            try:
                settled = (SeriesState.REPORTED, SeriesState.SKIPPED, SeriesState.FAILED)
                while any(s.state not in settled for s in node.catalog.workflow.summaries()):
                    time.sleep(0.5)
                processing = time.perf_counter() - started
                states = [s.state.value for s in node.catalog.workflow.summaries()]
                steps: dict[str, float] = {}
                with node.catalog.engine.connect() as connection:
                    for step, seconds in connection.exec_driver_sql(
                        "SELECT step, SUM(finished_at - started_at) FROM jobs GROUP BY step"
                    ):
                        steps[str(step)] = float(seconds or 0.0)
            finally:
                node.stop()
        finally:
            orthanc.stop()

    count = len(studies)
    total = fetch + processing
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    print(
        f"\nbackfill from Orthanc (REST) on {os.cpu_count()} CPUs (load average {load}), "
        f"{datetime.date.today()}: "
        f"{count} studies, {len(files)} instances, {megabytes:.0f} MB "
        f"({args.matrix}x{args.matrix}, {args.slice_mm} mm slices), "
        f"--max-parallel {args.max_parallel}\n"
    )
    print(f"{'phase':<44} {'seconds':>8} {'s/study':>8} {'studies/h':>10}")

    def line(name: str, seconds: float) -> None:
        print(f"{name:<44} {seconds:>8.1f} {seconds / count:>8.1f} {count / seconds * 3600:>10.0f}")

    line("1. download only (REST, parallel)", download)
    line("2. fetch: list + download + ingest", fetch)
    print(f"{'     of which ingest, summed over threads':<44} {summary.seconds['handoff']:>8.1f}")
    line("3. processing (worker, 1 thread)", processing)
    for step, seconds in sorted(steps.items()):
        print(f"{'     step ' + step:<44} {seconds:>8.1f} {seconds / count:>8.1f}")
    line("backfill into an idle node (2 + 3)", total)
    print(
        f"\nseries states: {', '.join(sorted(set(states)))}; fetched {summary.instances_fetched} "
        f"instances, {summary.bytes_fetched / 1e6:.0f} MB"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
