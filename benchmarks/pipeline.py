"""Completion → indexed: seconds for one 512×512×300 phantom series through the node's worker.

The series is written as DICOM (or taken from ``--dicom DIR``, e.g. the real
LIDC-IDRI-0001 scan) and stored in a node's instance store and catalog first
(not timed); then the timed part is exactly what the worker does when the
series completes: read the files, qualify, load the HU volume, lungs,
candidates, false-positive reduction, ROIs, codes, the registration image,
catalog rows, index. Uses the shipped hashing model when there is one, else
an untrained one of the default size (same cost). The machine's load average
is printed with the figures (shared machines).

Usage::

    python -m benchmarks.pipeline [--matrix 512] [--slices 300] [--device auto]
    python -m benchmarks.pipeline --dicom ../shared/data/LIDC-IDRI-0001/...
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
        "--dicom", type=Path, help="a folder holding one DICOM series to use instead"
    )
    args = parser.parse_args(argv)

    import dataclasses

    import pydicom
    import torch

    from ai.hashing.model import HashNet, HashNetConfig
    from ai.phantom import ScanGeometry, write_cohort
    from dicom_node.model import LoadedModel, load_model
    from dicom_node.processing import run_series
    from dicom_node.settings import load_settings
    from dicom_node.similarity import SimilarityIndex
    from dicom_node.worker import AIProcessor, resolve_device
    from dicom_node.ingest import Ingest
    from dicom_node.outbox import Outbox
    from dicom_node.reporting import Reporter
    from dicom_node.similarity import PrivacyPolicy
    from storage.catalog import Catalog, DeliveryState, SeriesState
    from tests.conftest import PEER_ENV, free_port, wait_for_port
    from storage.instances import InstanceStore

    device = resolve_device(args.device)
    with tempfile.TemporaryDirectory(prefix="dicom-node-pipeline-") as tmp:
        root = Path(tmp)
        geometry = ScanGeometry(
            matrix=args.matrix, pixel_mm=args.pixel_mm, slice_mm=args.slice_mm, slices=args.slices
        )
        if args.dicom is not None:
            files = sorted(p for p in args.dicom.rglob("*.dcm") if p.is_file())
        else:
            write_cohort(
                root / "cohort",
                patients=1,
                seed=args.seed,
                studies_per_patient=1,
                geometry=geometry,
            )
            files = sorted((root / "cohort" / "dicom").rglob("*.dcm"))
        load_before = os.getloadavg()
        settings = load_settings(environ={}, overrides={"data_dir": root / "node"})
        settings = dataclasses.replace(
            settings,
            storage=dataclasses.replace(settings.storage, min_free_mb=0),
            worker=dataclasses.replace(settings.worker, device=device),
        )
        store = InstanceStore(settings.instances_dir, min_free_bytes=0)
        catalog = Catalog(settings.catalog_url)
        ingest = Ingest(store, catalog)
        for path in files:
            ds = pydicom.dcmread(path)
            ingest.receive(
                ds,
                path.read_bytes(),
                transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
                affected_sop_class_uid=str(ds.SOPClassUID),
                affected_sop_instance_uid=str(ds.SOPInstanceUID),
            )
        (series_uid,) = [s.series_instance_uid for s in catalog.summaries()]
        model = load_model("")
        if model is None:
            torch.manual_seed(0)
            net = HashNet(HashNetConfig()).eval()
            model = LoadedModel(net, {"version": "untrained-default", "config": {}}, root)
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
        outbox = Outbox(
            catalog,
            settings.instances_dir,
            dataclasses.replace(settings.outbox, destinations=(f"PACS@127.0.0.1:{pacs_port}",)),
            settings.ae_title,
        )
        index = SimilarityIndex(catalog, model.version)
        policy = PrivacyPolicy(settings.privacy, root / "privacy.key")
        reporter = Reporter(
            catalog, store, ingest, outbox, index, model, policy, ae_title=settings.ae_title
        )
        processor = AIProcessor(settings, store, catalog, model, index, reporter=reporter)
        catalog.transition(series_uid, SeriesState.COMPLETE)
        try:
            started = time.perf_counter()
            outcome = run_series(catalog, processor, series_uid)
            total = time.perf_counter() - started
            delivered = time.perf_counter()
            results = outbox.run_once()
            delivery_s = time.perf_counter() - delivered
        finally:
            pacs.terminate()
            pacs.wait()
        steps = processor.last_timings
        load_after = os.getloadavg()
        rows = ds.Rows if args.dicom is not None else args.matrix
        catalog.close()
        acknowledged = sum(state is DeliveryState.DONE for _, state, _ in results)
    print(
        f"\ncompletion -> indexed, {len(files)} slices {rows}x{rows}, device {device}, "
        f"torch threads {torch.get_num_threads()}, model {model.version}\n"
        f"load average (1 min) before {load_before[0]:.1f}, after {load_after[0]:.1f} "
        f"on {os.cpu_count()} CPUs\n"
    )
    print(f"{'step':<34} {'seconds':>8}")
    labels = {
        "read": "read DICOM, HU volume at 1 mm",
        "lungs": "lungs",
        "nodules": "nodule candidates",
        "fpr": "false-positive reduction",
        "rois": "ROIs",
        "codes": "hash codes (encoding)",
        "registration": "registration image",
        "store": "catalog rows + index",
    }
    for name, label in labels.items():
        print(f"{label:<34} {steps.get(name, float('nan')):>8.2f}")
    indexed = total - steps.get("report", 0.0)
    print(f"{'completion -> indexed':<34} {indexed:>8.2f}")
    print(f"{'SR + key images built and kept':<34} {steps.get('report', float('nan')):>8.2f}")
    print(
        f"{'C-STORE to storescp, acknowledged':<34} {delivery_s:>8.2f}   ({acknowledged} objects)"
    )
    print(f"{'indexed -> SR acknowledged':<34} {steps.get('report', 0.0) + delivery_s:>8.2f}")
    print(f"{'total':<34} {total + delivery_s:>8.2f}")
    print(
        f"\noutcome: {outcome.state.value if outcome else 'not claimed'} ({outcome.reason if outcome else ''})"
    )
    print(
        json.dumps(
            {
                "indexed_s": round(indexed, 2),
                "delivery_s": round(delivery_s, 3),
                "load_average": [round(load_before[0], 2), round(load_after[0], 2)],
                **{k: round(v, 2) for k, v in steps.items()},
            }
        )
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
