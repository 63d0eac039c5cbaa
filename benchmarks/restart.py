"""Restart at archive scale: a node with 1 M indexed nodules in PostgreSQL, to its first answer.

Fills a PostgreSQL catalog (a server of its own, on a free port) with
``--nodules`` nodules, then times ``dicom-node serve --no-worker`` from the
process start to the first similarity C-FIND answered by dcmtk ``findscu``:

1. first start, no snapshot: the index reads every catalog row (what every
   start did before snapshots), then writes a snapshot;
2. stop (SIGTERM), ``--delta`` more nodules stored as other workers would
   (``NoduleCatalog.replace``: new series, and series processed again);
3. restart on the same data directory (``--restarts`` times): the snapshot
   plus the rows after it.

Target: step 3 within 10 s on 2 CPU cores. The wall time depends on what
else runs on the machine (the load average is printed beside it); the node's
CPU seconds up to the answer do not.

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
from tests.peers import PEER_ENV, free_port, postgresql_server, wait_for_port  # noqa: E402

#: The node's log lines when its index is loaded, and when it is saved.
LOADED = re.compile(r"similarity index of model \S+: (\d+) nodules from (.*) in ([\d.]+) s")
SAVED = re.compile(r"similarity index snapshot: (\d+) nodules in ([\d.]+) s")


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds a running process has used (Linux ``/proc``)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _first_answer(env: dict[str, str], data_dir: Path, folder: str) -> dict[str, object]:
    """Start the node; the seconds (wall and CPU) to its first non-empty answer for ``folder``."""
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
        wait_for_port(similarity_port, process=node, timeout=600)
        listening = time.perf_counter() - started
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
        cpu = _cpu_seconds(node.pid)
    finally:
        node.send_signal(signal.SIGTERM)  # stops after writing the index snapshot
        node.wait(300)
    text = log.read_text()
    loads = LOADED.findall(text)
    return {
        "seconds": seconds,
        "cpu": cpu,
        "listening": listening,
        "answers": answers,
        "load": loads[-1] if loads else None,
        "snapshot": SAVED.findall(text),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.restart", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--nodules", type=int, default=1_000_000)
    parser.add_argument("--delta", type=int, default=2000)
    parser.add_argument("--restarts", type=int, default=3, help="restarts timed (median shown)")
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
                "DICOM_NODE_ACCESS_AE_TITLES": "FINDSCU=similarity",  # findscu's own title
            }
            data_dir = root / "node"
            # The folder of a study of the archive (accession number A<i>).
            folder = f"SIM-A{len(study_uids) // 2}"
            first = _first_answer(env, data_dir, folder)
            # Rows other workers store while the node is down: new series and
            # series processed again (their old rows removed).
            rng = np.random.default_rng(5)
            for i in range(args.delta // 4):
                if i % 2:  # a series of the archive processed again: 4 rows out, 4 in
                    study_uid = study_uids[i]
                else:  # a new series of a new patient
                    study_uid = f"2.25.{len(study_uids) + i + 1}"
                series_uid = f"{study_uid}.1"
                catalog.intake.record_instance(
                    InstanceRecord(
                        study_uid, series_uid, f"{series_uid}.1", "1.2.840.10008.5.1.4.1.1.2",
                        "1.2.840.10008.1.2.1", "x", 1, "0" * 64, patient_id=f"Q{i}",
                        modality="CT",
                    )
                )  # fmt: skip
                catalog.nodules.replace(series_uid, version, random_nodules(rng, 4, dim=128))
            restarts = [_first_answer(env, data_dir, folder) for _ in range(args.restarts)]
            catalog.close()
    again = sorted(restarts, key=lambda run: float(run["seconds"]))[len(restarts) // 2]
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    print(
        f"\nnode start with {args.nodules:,} indexed nodules in PostgreSQL (catalog filled in "
        f"{populate_s:.0f} s), {os.cpu_count()} CPU cores; {load}\n"
    )
    print(
        f"{'start':<44} {'first answer s':>14} {'node CPU s':>10} {'listening s':>11} "
        f"{'index load s':>12}"
    )
    for label, run in (
        ("first: every catalog row (no snapshot)", first),
        (f"restart: snapshot + rows after it (median of {len(restarts)})", again),
    ):
        loaded = run["load"]
        print(
            f"{label:<44} {run['seconds']:>14.1f} {run['cpu']:>10.1f} {run['listening']:>11.1f} "
            f"{loaded[2] if loaded else '?':>12}"
        )
    print(
        "restarts, first answer s: "
        + ", ".join(f"{float(run['seconds']):.1f}" for run in restarts)
        + "; node CPU s: "
        + ", ".join(f"{float(run['cpu']):.1f}" for run in restarts)
    )
    for label, run in (("first", first), ("restart", again)):
        if run["load"]:
            count, how, _ = run["load"]
            print(f"{label}: {int(count):,} nodules from {how}")
        for count, seconds in run["snapshot"]:
            print(f"{label}: snapshot of {int(count):,} nodules written in {seconds} s")
    print(f"answers: {first['answers']} and {again['answers']} similar studies; target <= 10 s")
    return 0


def _model_version() -> str:
    """The shipped model's version: the one the node indexes."""
    from dicom_node.model import load_model

    model = load_model("")
    assert model is not None
    return model.version


if __name__ == "__main__":
    sys.exit(main())
