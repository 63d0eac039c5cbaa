"""Completion → indexed: seconds for one 512×512×300 phantom series through the node's worker.

The series is written as DICOM and stored in a node's instance store and
catalog first (not timed); then the timed part is exactly what the worker
does when the series completes: the job runner's AI step (read the headers,
qualify, read the pixel data into the HU volume, lungs, nodules, ROIs, codes,
catalog rows, index) and its results step (SR and key images kept, queued),
then one outbox pass to storescp. Uses the shipped hashing model.

Usage::

    python -m benchmarks.pipeline [--matrix 512] [--slices 300] [--device auto]
"""

from __future__ import annotations

import argparse
import json
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
            root / "cohort", patients=1, seed=args.seed, studies_per_patient=1, geometry=geometry
        )
        files = sorted((root / "cohort" / "dicom").rglob("*.dcm"))
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
