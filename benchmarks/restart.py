"""Restart at archive scale: a node with 1 M indexed nodules in PostgreSQL, to its first answer.

Fills a PostgreSQL catalog (a server of its own, on a free port) with
``--nodules`` nodules, then times ``dicom-node serve --no-worker`` from the
process start to the first similarity C-FIND answered by dcmtk ``findscu``:

1. first start, no snapshot: the index reads every catalog row (what every
   start did before snapshots), then writes a snapshot;
2. stop (SIGTERM), ``--delta`` more nodules stored as other workers would
   (``NoduleCatalog.replace``: new series, and series processed again);
3. restart on the same data directory: the snapshot plus the rows after it.

Target: step 3 within 10 s on 2 CPU cores.

Usage::

    python -m benchmarks.restart [--nodules 1000000] [--delta 2000]
"""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks._archive import populate  # noqa: E402
from tests.peers import PEER_ENV, free_port, postgresql_server  # noqa: E402

#: The node's log line when its index is loaded.
LOADED = re.compile(r"similarity index of model \S+: (\d+) nodules from (.*) in ([\d.]+) s")


def _first_answer(env: dict[str, str], data_dir: Path, folder: str) -> tuple[float, int, str]:
    """Start the node; seconds to the first non-empty answer for ``folder``, its size, the log."""
    port, similarity_port = free_port(), free_port()
    log = data_dir.parent / f"node-{similarity_port}.log"
    started = time.perf_counter()
    with log.open("wb") as handle:
        node = subprocess.Popen(
            [sys.executable, "-m", "dicom_node", "serve", "--no-worker", "--data-dir",
             str(data_dir), "--port", str(port), "--host", "127.0.0.1"],
            stdout=handle,
            stderr=subprocess.STDOUT,
            env={**env, "DICOM_NODE_SIMILARITY_PORT": str(similarity_port)},
            cwd=REPO,
        )  # fmt: skip
    try:
        answers = 0
        with tempfile.TemporaryDirectory() as out:
            while answers == 0:
                if node.poll() is not None:
                    raise RuntimeError(f"the node exited: {log.read_text()[-2000:]}")
                subprocess.run(
                    ["/usr/bin/findscu", "-S", "-aec", "DICOM_NODE_SIM", "-X", "-od", out,
                     "-k", "QueryRetrieveLevel=STUDY", "-k", f"PatientID={folder}",
                     "-k", "StudyInstanceUID", "127.0.0.1", str(similarity_port)],
                    env=PEER_ENV,
                    capture_output=True,
                    text=True,
                )  # fmt: skip
                answers = len(list(Path(out).glob("rsp*.dcm")))
                if answers == 0:
                    time.sleep(0.05)  # not listening yet, or 0xC310 while loading
        seconds = time.perf_counter() - started
    finally:
        node.send_signal(signal.SIGTERM)  # stops after writing the index snapshot
        node.wait(300)
    return seconds, answers, log.read_text()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.restart", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--nodules", type=int, default=1_000_000)
    parser.add_argument("--delta", type=int, default=2000)
    args = parser.parse_args(argv)

    import numpy as np

    from storage.catalog import Catalog, InstanceRecord
    from tests.factories import random_nodules

    with tempfile.TemporaryDirectory(prefix="dicom-node-restart-") as tmp:
        root = Path(tmp)
        (root / "pg").mkdir()
        with postgresql_server(root / "pg") as url:
            catalog = Catalog(url)
            started = time.perf_counter()
            version = _model_version()  # the node indexes the shipped model's nodules
            study_uids = populate(catalog, args.nodules, model_version=version)
            populate_s = time.perf_counter() - started
            env = {
                **os.environ,
                "DICOM_NODE_STORAGE_CATALOG_URL": url,
                "DICOM_NODE_STORAGE_MIN_FREE_MB": "0",
                "DICOM_NODE_WORKER_MODEL_DIR": "",
            }
            data_dir = root / "node"
            # The folder of a study of the archive (accession number A<i>).
            folder = f"SIM-A{len(study_uids) // 2}"
            full_s, full_n, full_log = _first_answer(env, data_dir, folder)
            # Rows other workers store while the node is down: new series and
            # series processed again (their old rows removed).
            rng = np.random.default_rng(5)
            for i in range(args.delta // 4):
                series_uid = f"2.25.9{i}.1"
                catalog.intake.record_instance(
                    InstanceRecord(
                        f"2.25.9{i}", series_uid, f"{series_uid}.1", "1.2.840.10008.5.1.4.1.1.2",
                        "1.2.840.10008.1.2.1", "x", 1, "0" * 64, patient_id=f"Q{i}",
                        modality="CT",
                    )
                )  # fmt: skip
                catalog.nodules.replace(series_uid, version, random_nodules(rng, 4, dim=128))
            restart_s, restart_n, restart_log = _first_answer(env, data_dir, folder)
            catalog.close()
    loaded, first = (LOADED.findall(text) for text in (restart_log, full_log))
    print(
        f"\nnode restart with {args.nodules:,} nodules of the archive in PostgreSQL "
        f"(catalog filled in {populate_s:.0f} s), 2 CPU cores\n"
    )
    print(f"{'start':<46} {'to first answer s':>18} {'index load':>30}")
    print(f"{'first start: every catalog row (no snapshot)':<46} {full_s:>18.1f} "
          f"{(first[-1][2] + ' s') if first else '?':>30}")  # fmt: skip
    print(f"{'restart: snapshot + rows after it':<46} {restart_s:>18.1f} "
          f"{(loaded[-1][2] + ' s') if loaded else '?':>30}")  # fmt: skip
    if loaded:
        print(f"\nrestart index: {loaded[-1][0]} nodules from {loaded[-1][1]}")
    print(f"answers: {full_n} and {restart_n} similar studies; target: restart <= 10 s")
    return 0


def _model_version() -> str:
    """The shipped model's version: the one the node indexes."""
    from dicom_node.model import load_model

    model = load_model("")
    assert model is not None
    return model.version


if __name__ == "__main__":
    sys.exit(main())
