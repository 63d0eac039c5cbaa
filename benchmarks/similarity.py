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

from benchmarks._archive import VERSION, populate  # noqa: E402
from tests.peers import PEER_ENV  # noqa: E402


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
            environ={"DICOM_NODE_ACCESS_AE_TITLES": "FINDSCU=similarity"},  # findscu's own title
            overrides={"data_dir": root / "node", "port": 0, "host": "127.0.0.1"},
        )
        settings = dataclasses.replace(
            settings,
            similarity=dataclasses.replace(settings.similarity, port=0),
            storage=dataclasses.replace(settings.storage, min_free_mb=0),
        )
        catalog = Catalog(settings.catalog_url)
        started = time.perf_counter()
        study_uids = populate(catalog, args.nodules)
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
