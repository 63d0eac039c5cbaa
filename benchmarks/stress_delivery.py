"""The ``delivery`` row of ``benchmarks.stress``: results delivered exactly once across SIGKILLs.

The node (``dicom-node serve`` with its worker and the shipped model) receives
a phantom cohort from dcmtk ``storescu``, processes it and keeps a
similar-case SR and a key-image montage per study (the real way results reach
the outbox) for a destination that is down. It is SIGKILLed and restarted
with them pending; then the destination, dcmtk ``storescp +uf`` (one file per
receipt), comes up, and the node is SIGKILLed again the moment a new receipt
appears, so some kills fall between the destination's answer and the commit
of that answer. At the end every object must have been received, and an
object must never be received again after its acknowledgement was committed
(read from the catalog after each kill); a second receipt is a resend after
a lost acknowledgement only when a kill falls between the two receipts.
"""

from __future__ import annotations

import itertools
import os
import random
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import pydicom

from benchmarks.stress import NodeProcess, Result
from tests.peers import dcmtk, free_port, run_peer, start_storescp, wait_until

if TYPE_CHECKING:
    from storage.catalog import Catalog

DESTINATION = "PACS"


def _catalog(data_dir: Path) -> Catalog:
    from storage.catalog import Catalog

    return Catalog(f"sqlite:///{data_dir / 'catalog.sqlite3'}", create=False)


def _deliveries(data_dir: Path) -> dict[str, tuple[str, int]]:
    """SOP Instance UID -> (state, attempts) of every delivery row not superseded."""
    catalog = _catalog(data_dir)
    try:
        return {
            d.sop_instance_uid: (d.state.value, d.attempts)
            for d in catalog.deliveries.in_states()
            if d.state.value != "superseded"
        }
    finally:
        catalog.close()


def _settled_series(data_dir: Path) -> int:
    """Series that reached the end of processing (reported, skipped or failed)."""
    from storage.catalog import SeriesState

    catalog = _catalog(data_dir)
    try:
        return len(
            catalog.workflow.series_in_states(
                [SeriesState.REPORTED, SeriesState.SKIPPED, SeriesState.FAILED]
            )
        )
    finally:
        catalog.close()


def _receipts(folder: Path, *, complete: bool = True) -> list[tuple[str, float]]:
    """(SOP Instance UID, modification time) of every file storescp wrote, oldest first;
    with ``complete`` False, a file still being written is left out."""
    out = []
    for path in folder.iterdir():
        if path.is_file():
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
            except Exception:  # noqa: BLE001 - storescp writing it at this moment
                if complete:
                    raise
                continue
            out.append((str(ds.SOPInstanceUID), path.stat().st_mtime))
    return sorted(out, key=lambda r: r[1])


def _file_count(folder: Path) -> int:
    return sum(1 for _ in os.scandir(folder))


def row_delivery(
    work: Path, logs: Path, patients: int, studies: int, kills_down: int, kills_up: int
) -> Result:
    from ai.phantom import TEST_GEOMETRY, write_cohort

    started = time.perf_counter()
    cohort = work / "delivery-cohort"
    write_cohort(
        cohort, patients=patients, seed=11, studies_per_patient=studies,
        geometry=TEST_GEOMETRY, anatomy_scale=0.6,
    )  # fmt: skip
    series_expected = patients * studies
    port = free_port()  # nothing listens there yet: the destination is down
    received = work / "delivery-pacs"
    received.mkdir()
    node = NodeProcess(work / "delivery", logs, worker=True)
    node.env.update(
        {
            "DICOM_NODE_OUTBOX_DESTINATIONS": f"{DESTINATION}@127.0.0.1:{port}",
            "DICOM_NODE_OUTBOX_RETRY_INITIAL_SECONDS": "0.5",
            "DICOM_NODE_OUTBOX_RETRY_MAX_SECONDS": "1",
            "DICOM_NODE_QUALIFICATION_MIN_LUNG_VOLUME_ML": "100",  # the small phantoms' lungs
        }
    )
    rng = random.Random(17)
    restarts: list[float] = []  # when each node after a SIGKILL was started
    done_at_kill: list[tuple[set[str], Counter[str]]] = []
    storescp: subprocess.Popen[bytes] | None = None

    def kill_and_restart() -> None:
        node.kill()
        states = _deliveries(node.data_dir)
        done = {uid for uid, (state, _) in states.items() if state == "done"}
        counts = Counter(uid for uid, _ in _receipts(received, complete=False))
        done_at_kill.append((done, counts))
        restarts.append(time.time())
        node.start()

    try:
        node.start()
        sent = run_peer(
            [dcmtk("storescu"), "-aec", "DICOM_NODE", "+sd", "+r", "127.0.0.1",
             str(node.port), str(cohort / "dicom")],
            timeout=600,
        )  # fmt: skip
        if sent.returncode != 0:
            raise RuntimeError(f"storescu failed: {sent.stderr[-500:]}")
        wait_until(
            lambda: _settled_series(node.data_dir) >= series_expected,
            timeout=300 * series_expected,
            what="every series processed",
        )
        processed_s = time.perf_counter() - started
        expected = set(_deliveries(node.data_dir))
        # Destination down: the node keeps trying; SIGKILLed between its attempts.
        for _ in range(kills_down):
            tried = sum(a for _, a in _deliveries(node.data_dir).values())
            wait_until(
                lambda t=tried: sum(a for _, a in _deliveries(node.data_dir).values()) > t,
                timeout=120,
                what="a delivery attempt to the destination that is down",
            )
            time.sleep(rng.uniform(0.0, 1.0))
            kill_and_restart()
        pending_before_up = sum(s == "pending" for s, _ in _deliveries(node.data_dir).values())
        # Destination up: SIGKILL the node as soon as a new receipt appears.
        storescp = start_storescp(port, received, ae_title=DESTINATION, unique_files=True)
        up_kills = 0
        for _ in range(kills_up):
            count = _file_count(received)
            if len(expected) and all(s == "done" for s, _ in _deliveries(node.data_dir).values()):
                break  # everything delivered before this kill: nothing left to interrupt
            deadline = time.monotonic() + 120
            while _file_count(received) == count and time.monotonic() < deadline:
                time.sleep(0.001)
            kill_and_restart()
            up_kills += 1
        wait_until(
            lambda: all(s == "done" for s, _ in _deliveries(node.data_dir).values()),
            timeout=300,
            what="every delivery done",
        )
        final = _deliveries(node.data_dir)
        node.stop()
    finally:
        if node.alive():
            node.kill()
        if storescp is not None:
            storescp.terminate()
            storescp.wait()
    receipts = _receipts(received)
    per_uid = Counter(uid for uid, _ in receipts)
    # A receipt after the kill whose catalog already held the object's acknowledgement.
    after_ack = sum(
        max(0, per_uid[uid] - before[uid]) for done, before in done_at_kill for uid in done
    )
    # Second receipts: a resend after a lost acknowledgement when a restart after a
    # SIGKILL lies between them (the first may be written after the kill, before the restart).
    times: dict[str, list[float]] = {}
    for uid, mtime in receipts:
        times.setdefault(uid, []).append(mtime)
    lost_ack_resends = unexplained = 0
    for stamps in times.values():
        for first, second in itertools.pairwise(stamps):
            if any(first <= r <= second for r in restarts):
                lost_ack_resends += 1
            else:
                unexplained += 1
    lost = sorted(uid for uid in expected if per_uid[uid] == 0)
    not_done = sorted(uid for uid, (state, _) in final.items() if state != "done")
    strangers = sorted(set(per_uid) - expected)
    ok = (
        bool(expected)
        and _settled_series(node.data_dir) == series_expected
        and pending_before_up == len(expected)
        and not lost
        and not not_done
        and not strangers
        and after_ack == 0
        and unexplained == 0
    )
    return Result(
        "delivery",
        f"{series_expected} series processed ({processed_s:.0f} s) into {len(expected)} objects "
        f"for a destination down: {kills_down} SIGKILLs while it was down, {up_kills} on a "
        f"receipt once up; {len(set(per_uid) & expected)}/{len(expected)} delivered, "
        f"{len(receipts)} receipts, max {max(per_uid.values(), default=0)} per SOP Instance "
        f"UID, {lost_ack_resends} resent with the same UID after a lost acknowledgement, "
        f"{after_ack} resent after an acknowledgement was recorded, {unexplained} other "
        f"duplicates, {len(lost)} lost",
        ok,
        time.perf_counter() - started,
        {"restarts": restarts, "receipts": receipts},
    )
