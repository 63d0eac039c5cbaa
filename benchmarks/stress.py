"""The node's promises under abuse: one command, a table, bounded in time, loopback only.

Each row runs ``dicom-node serve`` (``--no-worker``: receiving, answering and
recovery are what is stressed, not the AI; ``delivery`` alone runs the worker
to make the results it delivers) in a process of its own on a
fresh data directory, attacks it from this process over loopback, and prints
the figure the promise is judged by:

=====================  ===========================================================
``sigkill``            SIGKILL at random moments during C-STOREs over parallel
                       associations, the node restarted each time and the senders
                       resending what was not acknowledged: acknowledged instances
                       lost, partial files and orphan files after the last start
``duplicates``         every instance sent several times over parallel
                       associations: catalog rows, files and series exactly once
``mutants``            valid files with truncations, bad lengths, bad UIDs and bad
                       VRs, sent byte for byte: crashes, responses, files kept
                       for failures
``pdu-lies``           A-ASSOCIATE-RQ PDUs announcing 4 GiB: connections closed
                       before the body is buffered, RSS growth
``idle-sockets``       silent TCP connections, then a normal sender: the seconds
                       to its association
``echo-rss``           short associations (C-ECHO), four senders of bare PDUs at a
                       time, RSS read every 10,000: RSS growth
``unknown-ae``         C-FIND on the main AE and the similarity AE from an unknown
                       AE, and what an AE without ``identities`` sees of others
``canary``             patient names and IDs of every instance sent (all rows), a
                       malformed C-FIND and the read-only commands: occurrences
                       in the node's logs
``disk-full``          the data directory on a tmpfs of its own (root only, else
                       skipped), filled past ``storage.min_free_mb`` and then to
                       ENOSPC: statuses past the floor (0xA7xx only), seconds
                       from space freed to the next Success (5 at most), partial
                       files, rows without file (``benchmarks/stress_limits.py``)
``deflate-bomb``       a dataset of zeros deflated a thousand to one, proposed as
                       Deflated Explicit VR LE, then its bytes under Explicit VR
                       LE: context rejected, status, files kept, RSS and peak RSS
``delivery``           a phantom cohort processed (worker, shipped model) into SRs
                       and montages for a destination that is down; SIGKILLs while
                       it is down and on receipts once dcmtk storescp is up:
                       objects delivered, receipts per SOP Instance UID, resends
                       after a lost acknowledgement, lost (``stress_delivery.py``)
=====================  ===========================================================

Bounded in time: each row waits on conditions with timeouts (a node start
300 s, processing 300 s a series, a delivery 300 s), never forever. The default
run (small sizes, every row) took 584 s on this project's 2 shared cores (load
average 7-10), two minutes of it the ``delivery`` row, which processes two
phantom series; ``--full`` runs issue 13's sizes (10,000 SIGKILLed C-STOREs,
100,000 C-ECHOs, eight phantom series).

Usage::

    python -m benchmarks.stress            # small sizes (584 s on 2 loaded CPUs)
    python -m benchmarks.stress --full     # the sizes of issue 13 (hours)
    python -m benchmarks.stress --rows disk-full,deflate-bomb,delivery
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pydicom.dataset import Dataset  # noqa: E402
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid  # noqa: E402
from pynetdicom import AE, _config  # noqa: E402
from pynetdicom.association import Association  # noqa: E402
from pynetdicom.sop_class import (  # type: ignore[attr-defined]  # noqa: E402
    StudyRootQueryRetrieveInformationModelFind,
    Verification,
)

from tests.factories import ct_slice  # noqa: E402
from tests.peers import free_port, wait_for_port  # noqa: E402

CANARY_NAME = "CANARYZEBRA^QUOKKA"
CANARY_ID = "CANARY0731ID"
CANARIES = ("CANARYZEBRA", "QUOKKA", CANARY_ID)
#: The AE the rows query with; granted what the row needs through the environment.
FINDER = "FINDER"
BROWSER = "BROWSER"


@dataclass
class Result:
    """One row of the table."""

    row: str
    figure: str
    passed: bool
    seconds: float = 0.0
    detail: dict[str, object] = field(default_factory=dict)
    skipped: bool = False
    """Not run here (the figure says why): neither a pass nor a failure."""


class NodeProcess:
    """``dicom-node serve`` on a data directory, restartable; ``--no-worker`` unless
    ``worker`` (the AI and results steps then run, from the shipped model)."""

    def __init__(
        self, data_dir: Path, logs: Path, access: str = "", *, worker: bool = False
    ) -> None:
        self.data_dir = data_dir
        self.logs = logs
        self.worker = worker
        self.port = free_port()
        self.similarity_port = free_port()
        self.env = {
            **os.environ,
            "DICOM_NODE_STORAGE_MIN_FREE_MB": "0",
            "DICOM_NODE_STORAGE_FSYNC": "false",
            "DICOM_NODE_SERIES_IDLE_SECONDS": "1",
            "DICOM_NODE_SIMILARITY_PORT": str(self.similarity_port),
            "DICOM_NODE_ACCESS_AE_TITLES": access,
        }
        self.popen: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None
        self.starts = 0

    def start(self) -> None:
        self.starts += 1
        self._log = (self.logs / f"{self.data_dir.name}-{self.starts}.out").open("wb")
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "dicom_node", "serve",
             *([] if self.worker else ["--no-worker"]), "--data-dir",
             str(self.data_dir), "--port", str(self.port), "--host", "127.0.0.1"],
            stdout=self._log, stderr=subprocess.STDOUT, env=self.env, cwd=REPO,
        )  # fmt: skip
        wait_for_port(self.similarity_port, process=self.popen, timeout=300)
        deadline = time.monotonic() + 120  # node.json is written once the node serves
        while time.monotonic() < deadline:
            try:
                if self.runtime().get("pid") == self.popen.pid:
                    return
            except (OSError, ValueError):
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.data_dir}: node.json not written by pid {self.popen.pid}")

    def kill(self) -> None:
        assert self.popen is not None
        self.popen.send_signal(signal.SIGKILL)
        self.popen.wait()
        self._close_log()

    def stop(self) -> int:
        assert self.popen is not None
        self.popen.send_signal(signal.SIGTERM)
        code = self.popen.wait(300)
        self._close_log()
        return code

    def _close_log(self) -> None:
        if self._log is not None:
            self._log.close()
            self._log = None

    def rss_mib(self) -> float:
        assert self.popen is not None
        for line in Path(f"/proc/{self.popen.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")

    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def runtime(self) -> dict[str, object]:
        data: dict[str, object] = json.loads((self.data_dir / "node.json").read_text())
        return data


@contextmanager
def running(node: NodeProcess) -> Iterator[NodeProcess]:
    node.start()
    try:
        yield node
    finally:
        if node.alive():
            node.stop()


def _series(
    count: int, per_series: int, seed: int, *, rows: int = 64, columns: int = 64
) -> list[Dataset]:
    """``count`` small CT instances (64 x 64) in series of ``per_series``, canary patient."""
    datasets = []
    study = generate_uid()
    series = generate_uid()
    for i in range(count):
        if i % per_series == 0:
            series = generate_uid()
        ds = ct_slice(i % per_series, study_instance_uid=study, series_instance_uid=series,
                      rows=rows, columns=columns, seed=seed + i)  # fmt: skip
        ds.PatientName, ds.PatientID = CANARY_NAME, CANARY_ID
        datasets.append(ds)
    return datasets


def _associate(
    port: int, calling: str = "PACS", contexts: tuple[str, ...] = (CTImageStorage,)
) -> Association:
    ae = AE(ae_title=calling)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    for context in contexts:
        ae.add_requested_context(context, ExplicitVRLittleEndian)
    return ae.associate("127.0.0.1", port, ae_title="DICOM_NODE")


def _sender(
    port: Callable[[], int],
    todo: list[Dataset],
    acknowledged: set[str],
    lock: threading.Lock,
    done: threading.Event,
) -> None:
    """Send ``todo`` over one association at a time, reconnecting after a kill, until all
    are acknowledged (a PACS retries what it got no Success for)."""
    pending = list(todo)
    while pending and not done.is_set():
        assoc = _associate(port())
        if not assoc.is_established:
            time.sleep(0.2)
            continue
        try:
            while pending:
                ds = pending[0]
                try:
                    status = assoc.send_c_store(ds)
                except RuntimeError:  # the association died under us
                    break
                if not status:
                    break  # killed: reconnect and send it again
                if int(status.Status) in (0x0000, 0xB000, 0xB006, 0xB007):
                    with lock:
                        acknowledged.add(str(ds.SOPInstanceUID))
                    pending.pop(0)
                else:
                    time.sleep(0.2)  # out of resources: retry it
                    break
        finally:
            if assoc.is_established:
                assoc.release()


def _instance_files(data_dir: Path) -> tuple[set[str], int]:
    """Relative paths of the instance files, and the partial files under ``.tmp``."""
    root = data_dir / "instances"
    files = {
        p.relative_to(root).as_posix()
        for p in root.rglob("*.dcm")
        if ".tmp" not in p.relative_to(root).parts
    }
    tmp = root / ".tmp"
    partial = sum(1 for p in tmp.rglob("*") if p.is_file()) if tmp.exists() else 0
    return files, partial


def _catalogued(data_dir: Path) -> dict[str, str]:
    from storage.catalog import Catalog

    catalog = Catalog(f"sqlite:///{data_dir / 'catalog.sqlite3'}", create=False)
    try:
        return catalog.intake.instance_paths()
    finally:
        catalog.close()


def row_sigkill(work: Path, logs: Path, instances: int, associations: int, kills: int) -> Result:
    started = time.perf_counter()
    node = NodeProcess(work / "sigkill", logs)
    datasets = _series(instances, 100, seed=1)
    acknowledged: set[str] = set()
    lock, done = threading.Lock(), threading.Event()
    shares = [datasets[i::associations] for i in range(associations)]
    node.start()
    threads = [
        threading.Thread(target=_sender, args=(lambda: node.port, share, acknowledged, lock, done))
        for share in shares
    ]
    for thread in threads:
        thread.start()
    rng = random.Random(13)
    recovered: list[object] = []
    for _ in range(kills):
        time.sleep(rng.uniform(0.5, 3.0))
        node.kill()
        node.start()
        recovered.append(node.runtime().get("recovery"))
    deadline = time.monotonic() + 1800
    for thread in threads:
        thread.join(max(1.0, deadline - time.monotonic()))
    done.set()
    node.stop()
    node.start()  # the start after the last run: what it finds
    after = node.runtime().get("recovery") or {}
    node.stop()
    paths = _catalogued(node.data_dir)
    files, partial = _instance_files(node.data_dir)
    lost = [uid for uid in acknowledged if uid not in paths]
    missing_files = [p for p in paths.values() if p not in files]
    orphans = len(files - set(paths.values()))
    ok = not lost and not missing_files and partial == 0 and orphans == 0
    return Result(
        "sigkill",
        f"{kills} kills, {len(acknowledged):,}/{instances:,} acknowledged over {associations} "
        f"associations: {len(lost)} acknowledged lost, {len(missing_files)} rows without file, "
        f"{partial} partial files, {orphans} orphans after start",
        ok,
        time.perf_counter() - started,
        {"recovery_at_each_start": recovered, "recovery_after": after},
    )


def row_duplicates(
    work: Path, logs: Path, instances: int, copies: int, associations: int
) -> Result:
    started = time.perf_counter()
    node = NodeProcess(work / "duplicates", logs)
    datasets = _series(instances, 100, seed=2)
    storm = [ds for ds in datasets for _ in range(copies)]
    random.Random(5).shuffle(storm)
    acknowledged: set[str] = set()
    lock, done = threading.Lock(), threading.Event()
    with running(node):
        threads = [
            threading.Thread(
                target=_sender,
                args=(lambda: node.port, storm[i::associations], acknowledged, lock, done),
            )
            for i in range(associations)
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    paths = _catalogued(node.data_dir)
    files, _ = _instance_files(node.data_dir)
    from storage.catalog import Catalog

    catalog = Catalog(f"sqlite:///{node.data_dir / 'catalog.sqlite3'}", create=False)
    try:
        series = len(catalog.workflow.summaries())
    finally:
        catalog.close()
    expected_series = -(-instances // 100)
    ok = len(paths) == instances and len(files) == instances and series == expected_series
    return Result(
        "duplicates",
        f"{instances:,} instances x {copies} over {associations} associations: {len(paths):,} "
        f"rows, {len(files):,} files, {series} series (of {expected_series})",
        ok,
        time.perf_counter() - started,
    )


_LONG_VRS = {b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR",
              b"UT", b"UV"}  # fmt: skip


def _element_starts(body: bytes) -> list[tuple[int, bool]]:
    """Offsets of the top-level elements of an Explicit VR Little Endian body up to the
    pixel data, each with whether its length is 32-bit."""
    starts, pos = [], 0
    while pos + 8 <= len(body):
        if body[pos : pos + 4] == b"\xe0\x7f\x10\x00":  # (7FE0,0010) Pixel Data
            break
        long_form = body[pos + 4 : pos + 6] in _LONG_VRS
        if long_form:
            (length,) = struct.unpack("<I", body[pos + 8 : pos + 12])
            size = 12 + length
        else:
            (length,) = struct.unpack("<H", body[pos + 6 : pos + 8])
            size = 8 + length
        if length == 0xFFFFFFFF:
            break  # undefined length: the walk ends here
        starts.append((pos, long_form))
        pos += size
    return starts


def _mutants(
    base: bytes, offset: int, count: int, seed: int, first: int = 0
) -> list[tuple[str, bytes]]:
    """Byte-level mutants of an encoded file: the file meta (up to ``offset``) kept, the
    header elements (not the pixel data) attacked; kinds in turn from the ``first``."""
    rng = random.Random(seed)
    body = base[offset:]
    elements = _element_starts(body)
    header_end = elements[-1][0] if elements else len(body)
    out = []
    kinds = ("truncate", "length", "uid", "vr", "garbage")
    for i in range(first, first + count):
        kind = kinds[i % len(kinds)]
        data = bytearray(body)
        at, long_form = rng.choice(elements)
        if kind == "truncate":
            data = data[: rng.randrange(1, len(data))]
        elif kind == "length":  # an element's length made a lie
            if long_form:
                data[at + 8 : at + 12] = struct.pack("<I", rng.choice([0xFFFFFFF0, 0x7FFFFFFF, 3]))
            else:
                data[at + 6 : at + 8] = struct.pack("<H", rng.choice([0xFFFF, 0xFFFE, 1, 3]))
        elif kind == "uid":  # letters inside the UIDs
            for _ in range(3):
                found = data.find(b"1.2.", rng.randrange(0, header_end))
                if 0 <= found < header_end:
                    data[found : found + 4] = b"A.B."
        elif kind == "vr":  # a VR replaced by one that is not a VR
            data[at + 4 : at + 6] = rng.choice([b"ZZ", b"\x00\x00", b"SQ", b"\xff\xff"])
        else:  # garbage over an element's header and value
            data[at : at + 16] = bytes(rng.randrange(256) for _ in range(16))
        out.append((kind, base[:offset] + bytes(data)))
    return out


def row_mutants(work: Path, logs: Path, count: int) -> Result:
    from pydicom.filewriter import dcmwrite
    from pynetdicom.dsutils import split_dataset

    started = time.perf_counter()
    node = NodeProcess(work / "mutants", logs)
    folder = work / "mutant-files"
    folder.mkdir()
    seeds = _series(5, 5, seed=3)
    files: list[tuple[str, Path]] = []
    for m in range(count):
        # A SOP Instance UID of its own: a mutant is judged for itself, never as a
        # resend of an instance already stored (0xB006).
        ds = seeds[m % len(seeds)]
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        path = folder / "seed.dcm"
        dcmwrite(path, ds, enforce_file_format=True)
        _, offset = split_dataset(path)
        ((kind, data),) = _mutants(path.read_bytes(), offset, 1, seed=m, first=m // len(seeds))
        mutant = folder / f"m{m}-{kind}.dcm"
        mutant.write_bytes(data)
        files.append((kind, mutant))
    statuses: dict[str, int] = {}
    no_answer = 0
    # Send the mutated files byte for byte, not decoded and encoded again.
    chunked, _config.STORE_SEND_CHUNKED_DATASET = _config.STORE_SEND_CHUNKED_DATASET, True
    successes: set[str] = set()
    with running(node):
        assoc = None
        for kind, path in files:
            if assoc is None or not assoc.is_established:
                assoc = _associate(node.port)
            try:
                status = assoc.send_c_store(path)
            except Exception:  # noqa: BLE001 - pynetdicom refusing to send it counts apart
                statuses["not sendable"] = statuses.get("not sendable", 0) + 1
                continue
            if not status:
                no_answer += 1
                continue
            code = int(status.Status)
            key = f"{kind} 0x{code:04X}"
            statuses[key] = statuses.get(key, 0) + 1
            if code in (0x0000, 0xB000, 0xB006, 0xB007):
                from pydicom import dcmread

                try:
                    successes.add(str(dcmread(path, stop_before_pixels=True).SOPInstanceUID))
                except Exception:  # noqa: BLE001 - accepted yet unreadable here: counted below
                    successes.add(path.name)
        if assoc is not None and assoc.is_established:
            assoc.release()
        alive = node.alive()
    _config.STORE_SEND_CHUNKED_DATASET = chunked
    stored, _ = _instance_files(node.data_dir)
    kept_for_failures = max(0, len(stored) - len(successes))
    ok = alive and no_answer == 0 and kept_for_failures == 0
    return Result(
        "mutants",
        f"{len(files)} mutants: node {'up' if alive else 'CRASHED'}, {no_answer} without a "
        f"response, statuses {dict(sorted(statuses.items()))}, {kept_for_failures} files kept "
        "for failures",
        ok,
        time.perf_counter() - started,
    )


def row_pdu_lies(work: Path, logs: Path, connections: int) -> Result:
    started = time.perf_counter()
    node = NodeProcess(work / "pdu-lies", logs)
    closed = 0
    with running(node):
        before = node.rss_mib()
        for _ in range(connections):
            with socket.create_connection(("127.0.0.1", node.port), timeout=10) as sock:
                # A-ASSOCIATE-RQ announcing 4 GiB - 16, then 1 MiB of its "body".
                sock.sendall(struct.pack(">BBI", 0x01, 0x00, 0xFFFFFFF0))
                try:
                    for _ in range(16):
                        sock.sendall(os.urandom(65536))
                    closed += sock.recv(1) in (b"", b"\x03", b"\x07")
                except (ConnectionResetError, BrokenPipeError):
                    closed += 1
                except TimeoutError:
                    pass  # still open 10 s later: not closed
        time.sleep(0.5)
        growth = node.rss_mib() - before
        alive = node.alive()
    ok = alive and closed == connections and growth < 64
    return Result(
        "pdu-lies",
        f"{connections} A-ASSOCIATE-RQ announcing 4 GiB: {closed} closed or rejected, RSS "
        f"{growth:+.1f} MiB",
        ok,
        time.perf_counter() - started,
    )


def row_idle_sockets(work: Path, logs: Path, sockets: int) -> Result:
    started = time.perf_counter()
    node = NodeProcess(work / "idle", logs)
    with running(node):
        idle = [socket.create_connection(("127.0.0.1", node.port)) for _ in range(sockets)]
        try:
            time.sleep(1.0)
            t = time.perf_counter()
            assoc = _associate(node.port, contexts=(Verification,))
            seconds = time.perf_counter() - t
            accepted = assoc.is_established
            if accepted:
                assoc.send_c_echo()
                assoc.release()
        finally:
            for s in idle:
                s.close()
    ok = accepted and seconds < 2.0
    return Result(
        "idle-sockets",
        f"{sockets} silent sockets, then a sender: {'accepted' if accepted else 'REFUSED'} in "
        f"{seconds:.2f} s",
        ok,
        time.perf_counter() - started,
    )


def _echo_pdus(calling: str = "PACS") -> tuple[bytes, bytes, bytes]:
    """A-ASSOCIATE-RQ (Verification, Implicit VR LE), the C-ECHO-RQ's P-DATA-TF and
    A-RELEASE-RQ, encoded once by pynetdicom's PDU classes."""
    from pynetdicom import PYNETDICOM_IMPLEMENTATION_UID
    from pynetdicom.dimse_messages import C_ECHO_RQ
    from pynetdicom.dimse_primitives import C_ECHO
    from pynetdicom.pdu import A_ASSOCIATE_RQ, A_RELEASE_RQ, P_DATA_TF
    from pynetdicom.pdu_primitives import (
        A_ASSOCIATE,
        A_RELEASE,
        ImplementationClassUIDNotification,
        MaximumLengthNotification,
    )
    from pynetdicom.presentation import build_context

    request = A_ASSOCIATE()
    request.application_context_name = "1.2.840.10008.3.1.1.1"
    request.calling_ae_title, request.called_ae_title = calling, "DICOM_NODE"
    context = build_context(Verification, ["1.2.840.10008.1.2"])
    context.context_id = 1
    request.presentation_context_definition_list = [context]
    length, implementation = MaximumLengthNotification(), ImplementationClassUIDNotification()
    length.maximum_length_received = 16384
    implementation.implementation_class_uid = PYNETDICOM_IMPLEMENTATION_UID
    request.user_information = [length, implementation]
    associate = A_ASSOCIATE_RQ()
    associate.from_primitive(request)
    echo = C_ECHO()
    echo.MessageID, echo.AffectedSOPClassUID = 1, Verification
    message = C_ECHO_RQ()
    message.primitive_to_message(echo)
    data = b""
    for primitive in message.encode_msg(1, 16384):
        pdu = P_DATA_TF()
        pdu.from_primitive(primitive)
        data += pdu.encode()
    release = A_RELEASE_RQ()
    release.from_primitive(A_RELEASE())
    return associate.encode(), data, release.encode()


def _read_pdu(sock: socket.socket) -> tuple[int, bytes]:
    """One whole PDU: its type and body."""

    def exactly(n: int) -> bytes:
        buffer = b""
        while len(buffer) < n:
            chunk = sock.recv(n - len(buffer))
            if not chunk:
                raise ConnectionError("closed by the node")
            buffer += chunk
        return buffer

    kind, _, length = struct.unpack(">BBI", exactly(6))
    return kind, exactly(length)


#: (0000,0900) Status = 0x0000 (Success) in an Implicit VR LE command set.
_STATUS_SUCCESS = struct.pack("<HHIH", 0x0000, 0x0900, 2, 0x0000)


def _raw_echo(port: int, pdus: tuple[bytes, bytes, bytes]) -> bool:
    """Associate, C-ECHO, release over a bare socket: True when each step succeeded.

    pynetdicom's own SCU spends more time per association than the node does
    (its threads and polling); bare PDUs let the node be what is measured.
    """
    associate, echo, release = pdus
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.sendall(associate)
        if _read_pdu(sock)[0] != 0x02:  # A-ASSOCIATE-AC
            return False
        sock.sendall(echo)
        kind, body = _read_pdu(sock)
        ok = kind == 0x04 and _STATUS_SUCCESS in body  # P-DATA-TF, C-ECHO-RSP Success
        sock.sendall(release)
        return ok and _read_pdu(sock)[0] == 0x06  # A-RELEASE-RP


def row_echo_rss(
    work: Path, logs: Path, associations: int, senders: int = 4, every: int = 10_000
) -> Result:
    """``associations`` short associations from ``senders`` threads; RSS after each ``every``.

    The RSS at each checkpoint is printed to stderr as it is read, so a run cut
    short still says how far it got and how the node's memory went.
    """
    started = time.perf_counter()
    node = NodeProcess(work / "echo", logs)
    pdus = _echo_pdus()
    failures = 0
    lock = threading.Lock()

    def send(count: int) -> None:
        nonlocal failures
        for _ in range(count):
            try:
                ok = _raw_echo(node.port, pdus)
            except OSError:
                ok = False
            if not ok:
                with lock:
                    failures += 1

    checkpoints: list[tuple[int, float]] = []
    with running(node):
        send(200)  # warm-up: caches, thread pools
        before = node.rss_mib()
        done = 0
        while done < associations:
            batch = min(every, associations - done)
            shares = [batch // senders + (i < batch % senders) for i in range(senders)]
            threads = [threading.Thread(target=send, args=(n,)) for n in shares]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            done += batch
            checkpoints.append((done, node.rss_mib() - before))
            print(
                f"echo-rss: {done:,} associations, {failures} failed, RSS "
                f"{checkpoints[-1][1]:+.1f} MiB, {time.perf_counter() - started:.0f} s",
                file=sys.stderr,
                flush=True,
            )
        growth = checkpoints[-1][1]
        peak = max(g for _, g in checkpoints)
    ok = failures == 0 and growth < 50
    return Result(
        "echo-rss",
        f"{associations:,} C-ECHO associations ({senders} at a time): {failures} failed, RSS "
        f"{growth:+.1f} MiB (highest at a checkpoint {peak:+.1f} MiB)",
        ok,
        time.perf_counter() - started,
    )


def _find(
    port: int, ae_title: str, calling: str, keys: dict[str, str]
) -> tuple[str, list[Dataset]]:
    ae = AE(ae_title=calling)
    ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind)
    assoc = ae.associate("127.0.0.1", port, ae_title=ae_title)
    if not assoc.is_established:
        return "association rejected", []
    query = Dataset()
    for keyword, value in keys.items():
        setattr(query, keyword, value)
    answers, final = [], "no response"
    try:
        for status, identifier in assoc.send_c_find(
            query, StudyRootQueryRetrieveInformationModelFind
        ):
            if not status:
                break
            code = int(status.Status)
            if code in (0xFF00, 0xFF01) and identifier is not None:
                answers.append(identifier)
            else:
                final = f"0x{code:04X}"
    finally:
        assoc.release()
    return final, answers


def row_unknown_ae(work: Path, logs: Path) -> Result:
    from benchmarks._archive import populate
    from dicom_node.model import model_version
    from storage.catalog import Catalog

    started = time.perf_counter()
    data_dir = work / "unknown-ae"
    data_dir.mkdir()
    version = model_version("")
    assert version is not None, "the shipped model is missing"
    catalog = Catalog(f"sqlite:///{data_dir / 'catalog.sqlite3'}")
    study_uids = set(populate(catalog, 400, model_version=version))
    catalog.close()
    node = NodeProcess(data_dir, logs, access=f"{BROWSER}=similarity")
    keys = {"QueryRetrieveLevel": "STUDY", "PatientID": "SIM-A10", "PatientName": "",
            "StudyInstanceUID": "", "AccessionNumber": ""}  # fmt: skip
    with running(node):
        main_status, _ = _find(node.port, "DICOM_NODE", "STRANGER", {**keys, "PatientID": "*"})
        sim_status, _ = _find(node.similarity_port, "DICOM_NODE_SIM", "STRANGER", keys)
        deadline = time.monotonic() + 120
        browse_status, answers = "", list[Dataset]()
        while time.monotonic() < deadline and not answers:
            browse_status, answers = _find(node.similarity_port, "DICOM_NODE_SIM", BROWSER, keys)
            if not answers:
                time.sleep(0.5)  # 0xC310 while the index loads
    leaked = [
        a
        for a in answers
        if str(a.get("PatientName", "")).startswith("Name^")
        or str(a.get("PatientID", "")).startswith("P")
        or str(a.get("StudyInstanceUID", "")) in study_uids
        or str(a.get("AccessionNumber", ""))
    ]
    ok = (
        main_status == "association rejected"
        and sim_status == "association rejected"
        and bool(answers)
        and not leaked
    )
    return Result(
        "unknown-ae",
        f"unknown AE: C-FIND main {main_status}, C-FIND similarity {sim_status}; AE without "
        f"identities: {len(answers)} similar studies, {len(leaked)} with a name, ID, accession "
        "or real UID",
        ok,
        time.perf_counter() - started,
    )


def row_canary(work: Path, logs: Path) -> Result:
    """Failure paths with canaries, then every log of every row searched for them."""
    started = time.perf_counter()
    node = NodeProcess(work / "canary", logs, access=f"{FINDER}=find+identities")
    with running(node), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pydicom's about the bad UID set on purpose
        ds = _series(3, 3, seed=9)
        bad = ds[1]
        bad.SOPInstanceUID = "1.2.CANARY0731ID"  # a UID that is not one, with the canary
        assoc = _associate(node.port)
        statuses = []
        for d in ds:
            try:
                status = assoc.send_c_store(d)
                statuses.append(int(status.Status) if status else -1)
            except (ValueError, AttributeError):  # pynetdicom would not send the bad UID
                statuses.append(-2)
        assoc.release()
        queries = [
            ("DICOM_NODE", FINDER, {"QueryRetrieveLevel": "STUDY", "PatientName": CANARY_NAME,
                                    "PatientBirthDate": "CANARY0731ID"}),  # malformed date
            ("DICOM_NODE", FINDER, {"QueryRetrieveLevel": "STUDY", "PatientID": CANARY_ID}),
            ("DICOM_NODE", "STRANGER", {"QueryRetrieveLevel": "STUDY", "PatientID": CANARY_ID}),
            ("DICOM_NODE_SIM", FINDER, {"QueryRetrieveLevel": "STUDY", "PatientID": CANARY_ID}),
        ]  # fmt: skip
        for ae_title, calling, keys in queries:
            port = node.port if ae_title == "DICOM_NODE" else node.similarity_port
            _find(port, ae_title, calling, keys)
        commands = [
            ["status"], ["status", "--json"], ["similar", "--study", str(ds[0].StudyInstanceUID)],
            ["reindex"], ["resend"],
        ]  # fmt: skip
        for command in commands:
            with (logs / f"cli-{command[0]}.out").open("ab") as out:
                subprocess.run(
                    [sys.executable, "-m", "dicom_node", *command, "--data-dir",
                     str(node.data_dir)],
                    stdout=subprocess.DEVNULL, stderr=out, env=node.env, cwd=REPO,
                )  # fmt: skip
    return Result(
        "canary",
        f"C-STORE statuses {[f'0x{s:04X}' for s in statuses]}, {len(queries)} C-FINDs, "
        f"{len(commands)} commands",
        True,
        time.perf_counter() - started,
    )


def canaries_in_logs(work: Path, logs: Path) -> dict[str, int]:
    """Occurrences of the canary names and IDs in every log of the rows, by file."""
    found: dict[str, int] = {}
    candidates = list(logs.glob("*")) + list(work.glob("*/logs/*"))
    for path in candidates:
        if path.is_file():
            text = path.read_text(errors="replace")
            count = sum(text.count(c) for c in CANARIES)
            if count:
                found[str(path.relative_to(path.parents[1]))] = count
    return found


SIZES = {
    # row: (small, full)
    "sigkill": ((2000, 20, 3), (10_000, 20, 10)),
    "duplicates": ((300, 5, 20), (1000, 5, 20)),
    "mutants": ((100,), (500,)),
    "pdu-lies": ((20,), (100,)),
    "idle-sockets": ((500,), (500,)),
    "echo-rss": ((2000,), (100_000,)),
    # slices of 256 x 256, tmpfs MiB, slices of room above the floor
    "disk-full": ((60, 32, 10), (400, 96, 150)),
    "deflate-bomb": ((256,), (2048,)),  # MiB of zeros inflated
    # patients, studies each, SIGKILLs with the destination down, SIGKILLs while it delivers
    "delivery": ((2, 1, 2, 2), (4, 2, 5, 5)),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--full", action="store_true", help="the sizes of issue 13 (hours)")
    parser.add_argument("--rows", default="", help="comma-separated rows to run (default all)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--keep", type=Path, help="work here and keep it (default: a temp dir)")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")  # pydicom's about the invalid values sent on purpose
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4096)), hard))
    size = {row: sizes[1 if args.full else 0] for row, sizes in SIZES.items()}
    from benchmarks.stress_delivery import row_delivery
    from benchmarks.stress_limits import row_deflate_bomb, row_disk_full

    rows: dict[str, Callable[[Path, Path], Result]] = {
        "sigkill": lambda work, logs: row_sigkill(work, logs, *size["sigkill"]),
        "duplicates": lambda work, logs: row_duplicates(work, logs, *size["duplicates"]),
        "mutants": lambda work, logs: row_mutants(work, logs, *size["mutants"]),
        "pdu-lies": lambda work, logs: row_pdu_lies(work, logs, *size["pdu-lies"]),
        "idle-sockets": lambda work, logs: row_idle_sockets(work, logs, *size["idle-sockets"]),
        "echo-rss": lambda work, logs: row_echo_rss(work, logs, *size["echo-rss"]),
        "unknown-ae": row_unknown_ae,
        "canary": row_canary,
        "disk-full": lambda work, logs: row_disk_full(work, logs, *size["disk-full"]),
        "deflate-bomb": lambda work, logs: row_deflate_bomb(work, logs, *size["deflate-bomb"]),
        "delivery": lambda work, logs: row_delivery(work, logs, *size["delivery"]),
    }
    wanted = [r for r in args.rows.split(",") if r] or list(rows)
    unknown = [r for r in wanted if r not in rows]
    if unknown:
        parser.error(f"unknown rows {unknown}; choose from {', '.join(rows)}")
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="dicom-node-stress-") as tmp:
        base = args.keep or Path(tmp)
        work, logs = base / "work", base / "logs"
        work.mkdir()
        logs.mkdir()
        for name in wanted:
            print(f"running {name} ...", file=sys.stderr, flush=True)
            try:
                results.append(rows[name](work, logs))
            except Exception as exc:  # noqa: BLE001 - a row that breaks is a failed row
                results.append(Result(name, f"ERROR {exc.__class__.__name__}: {exc}", False))
        if "canary" in wanted:
            found = canaries_in_logs(work, logs)
            canary = next(r for r in results if r.row == "canary")
            canary.figure += f"; canaries in logs: {sum(found.values())} {found or ''}"
            canary.passed = canary.passed and not found
    print(f"\n{'row':<13} {'pass':<5} {'s':>6}  figure")
    for r in results:
        mark = "skip" if r.skipped else "yes" if r.passed else "NO"
        print(f"{r.row:<13} {mark:<5} {r.seconds:>6.0f}  {r.figure}")
    if args.json:
        args.json.write_text(json.dumps([r.__dict__ for r in results], indent=2, default=str))
    return 0 if all(r.passed or r.skipped for r in results) else 1


if __name__ == "__main__":
    # The rows in benchmarks.stress_limits and stress_delivery import this module by its
    # name: run that one, not a second copy of it as __main__.
    from benchmarks.stress import main as _main

    sys.exit(_main())
