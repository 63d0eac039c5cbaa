"""C-FIND similarity response time at archive scale (default 1 M indexed nodules).

Builds a catalog with ``--nodules`` nodules (4 per study, 2 studies per
patient, random 3 × 64-bit codes in 200 clusters, 128-d embeddings), starts a
node with the similarity AE, and times real dcmtk ``findscu`` queries for
random index studies' folders, end to end (association, search, catalog
look-ups, responses). Also the in-process answer time without the network.

Usage::

    python -m benchmarks.similarity [--nodules 1000000] [--queries 30]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.peers import PEER_ENV  # noqa: E402

VERSION = "bench-model"


def _populate(catalog, n_nodules: int, seed: int = 0) -> list[str]:
    import numpy as np
    import sqlalchemy as sa
    from tqdm import tqdm

    from storage.catalog.schema import nodules, series, studies

    rng = np.random.default_rng(seed)
    centres = rng.integers(0, 2, (200, 192), dtype=np.uint8)
    emb_centres = rng.normal(size=(200, 128)).astype(np.float32)
    n_studies = n_nodules // 4
    study_uids = [f"2.25.{i + 1}" for i in range(n_studies)]
    now = time.time()
    chunk = 50_000
    with catalog.engine.begin() as connection:
        for start in tqdm(
            range(0, n_studies, chunk), desc="studies", unit_scale=chunk, leave=False
        ):
            rows = [
                {
                    "study_instance_uid": study_uids[i],
                    "patient_id": f"P{i // 2}",
                    "patient_name": f"Name^{i // 2}",
                    "study_date": f"20{10 + i % 15:02d}0101",
                    "accession_number": f"A{i}",
                    "created_at": now,
                }
                for i in range(start, min(n_studies, start + chunk))
            ]
            connection.execute(studies.insert(), rows)
            connection.execute(
                series.insert(),
                [
                    {
                        "series_instance_uid": r["study_instance_uid"] + ".1",
                        "study_instance_uid": r["study_instance_uid"],
                        "modality": "CT",
                        "state": "indexed",
                        "instance_count": 300,
                        "first_received_at": now,
                        "last_received_at": now,
                        "state_changed_at": now,
                    }
                    for r in rows
                ],
            )
    with catalog.engine.begin() as connection:
        for start in tqdm(range(0, n_nodules, chunk), desc="nodules", unit="rows", leave=False):
            stop = min(n_nodules, start + chunk)
            cluster = rng.integers(0, 200, stop - start)
            bits = centres[cluster] ^ (rng.random((stop - start, 192)) < 0.08).astype(np.uint8)
            codes = np.packbits(bits, axis=1)
            emb = emb_centres[cluster] + rng.normal(0, 0.3, (stop - start, 128)).astype(np.float32)
            size = (cluster % 7 + 1).astype(int)
            rows = []
            for j, n in enumerate(range(start, stop)):
                study = study_uids[n // 4]
                rows.append(
                    {
                        "series_instance_uid": study + ".1",
                        "study_instance_uid": study,
                        "model_version": VERSION,
                        "nodule_index": n % 4,
                        "center_x": 0.0,
                        "center_y": 0.0,
                        "center_z": 0.0,
                        "diameter_mm": 10.0,
                        "long_axis_mm": 11.0,
                        "volume_mm3": 520.0,
                        "mean_hu": 20.0,
                        "peak_hu": 60.0,
                        "texture": "solid",
                        "laterality": "left",
                        "confidence": 0.9,
                        "size_class": int(size[j]),
                        "predicted_size_class": int(size[j]),
                        "predicted_texture": "solid",
                        "shallow": codes[j, :8].tobytes(),
                        "middle": codes[j, 8:16].tobytes(),
                        "deep": codes[j, 16:].tobytes(),
                        "embedding": emb[j].tobytes(),
                        "thumbnail": None,
                        "created_at": now,
                    }
                )
            connection.execute(nodules.insert(), rows)
    _ = sa
    return study_uids


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.similarity", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--nodules", type=int, default=1_000_000)
    parser.add_argument("--queries", type=int, default=30)
    args = parser.parse_args(argv)

    import dataclasses
    import random

    from dicom_node.app import Node
    from dicom_node.net.similarity import FolderQuery, folder_id
    from dicom_node.processing.jobs import RecordingStep
    from dicom_node.retrieval.similar import SimilarityIndex
    from dicom_node.settings import load_settings
    from storage.catalog import Catalog

    with tempfile.TemporaryDirectory(prefix="dicom-node-sim-bench-") as tmp:
        root = Path(tmp)
        settings = load_settings(
            environ={}, overrides={"data_dir": root / "node", "port": 0, "host": "127.0.0.1"}
        )
        settings = dataclasses.replace(
            settings,
            similarity=dataclasses.replace(settings.similarity, port=0),
            storage=dataclasses.replace(settings.storage, min_free_mb=0),
        )
        catalog = Catalog(settings.catalog_url)
        started = time.perf_counter()
        study_uids = _populate(catalog, args.nodules)
        populate_s = time.perf_counter() - started
        index = SimilarityIndex(catalog, VERSION)
        started = time.perf_counter()
        ntotal = index.index.ntotal
        build_s = time.perf_counter() - started
        node = Node(settings, steps=[RecordingStep()], similarity_index=index)
        node.start()
        try:
            rng = random.Random(1)
            chosen = [rng.choice(study_uids) for _ in range(args.queries)]
            folders = [folder_id(uid, f"A{int(uid.rsplit('.', 1)[1]) - 1}") for uid in chosen]
            in_process, over_dicom, counts = [], [], []
            for folder in folders:
                t = time.perf_counter()
                _, _, similar = node.similarity.answer(FolderQuery(None, folder, ()))
                in_process.append(time.perf_counter() - t)
                counts.append(len(similar))
            for folder in folders:
                t = time.perf_counter()
                result = subprocess.run(
                    [
                        "/usr/bin/findscu",
                        "-S",
                        "-aec",
                        settings.similarity.ae_title,
                        "-k",
                        "QueryRetrieveLevel=STUDY",
                        "-k",
                        f"PatientID={folder}",
                        "-k",
                        "StudyInstanceUID",
                        "-k",
                        "StudyDescription",
                        "127.0.0.1",
                        str(node.similarity_port),
                    ],
                    env=PEER_ENV,
                    capture_output=True,
                    text=True,
                )
                over_dicom.append(time.perf_counter() - t)
                assert result.returncode == 0, result.stderr
        finally:
            node.stop()
            catalog.close()

    def p(values: list[float], q: float) -> float:
        return sorted(values)[min(len(values) - 1, int(round(q * (len(values) - 1))))] * 1000

    print(
        f"\nsimilarity C-FIND over {ntotal:,} indexed nodules (3 x 64-bit codes, 128-d embeddings), "
        f"{args.queries} queries, 10 studies per folder\n"
    )
    print(
        f"catalog populated in {populate_s:.0f} s; index built from the catalog in {build_s:.1f} s\n"
    )
    print(f"{'path':<44} {'p50 ms':>8} {'p99 ms':>8}")
    print(
        f"{'in process (search + catalog look-ups)':<44} {p(in_process, 0.5):>8.1f} {p(in_process, 0.99):>8.1f}"
    )
    print(
        f"{'findscu round trip (incl. process start)':<44} {p(over_dicom, 0.5):>8.1f} {p(over_dicom, 0.99):>8.1f}"
    )
    print(
        f"\nmedian studies per answer: {statistics.median(counts):.0f}; target: 100 ms on 2 CPU cores"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
