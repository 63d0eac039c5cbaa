"""Ingest throughput: dcmtk ``storescu`` → our node, dcmtk ``storescp`` and Orthanc.

One run, same machine, same series (300 slices of 512×512 CT, about 157 MB,
Explicit VR Little Endian), every peer with ``TCP_NODELAY=1``, sent by one
``storescu`` and by four at once (each a quarter of the slices, one
association each, as a PACS forwarding several studies does). Prints the
median of ``--repeat`` runs per receiver and sender count: slices/s, MB/s and
the ratio to Orthanc (fsync of each file on, SQLite index). Our node runs
once as one receiving process and once with ``network.receivers`` processes
(``--receivers``, default 2: the cores here). Orthanc 1.10.1 promises
less than we do: it writes the file in place and ``fdatasync``s it, without a
directory fsync, and its SQLite index runs in WAL mode with
``synchronous=NORMAL`` (the commit is not fsynced); we fsync the file before
its rename, then the directory beside a WAL commit with ``synchronous=FULL``.

Usage::

    python -m benchmarks.ingest [--slices 300] [--repeat 3] [--senders 1,4] [--receivers 2]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.factories import write_ct_series  # noqa: E402
from tests.peers import PEER_ENV, free_port, wait_for_port, wait_until  # noqa: E402


@contextmanager
def _process(
    args: list[str],
    port: int,
    env: dict[str, str],
    log: Path,
    ready: Callable[[], bool] = lambda: True,
) -> Iterator[None]:
    with log.open("wb") as handle:
        proc = subprocess.Popen(args, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=REPO)
    try:
        wait_for_port(port, process=proc, timeout=60)
        wait_until(ready, timeout=60, what=f"{args[0]} ready")
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextmanager
def storescp(work: Path) -> Iterator[tuple[int, str]]:
    port, out = free_port(), work / "storescp"
    out.mkdir()
    with _process(
        ["/usr/bin/storescp", "-od", str(out), "-aet", "STORESCP", str(port)],
        port,
        PEER_ENV,
        work / "storescp.log",
    ):
        yield port, "STORESCP"


@contextmanager
def orthanc(work: Path) -> Iterator[tuple[int, str]]:
    port, http = free_port(), free_port()
    config = work / "orthanc.json"
    config.write_text(
        json.dumps(
            {
                "Name": "bench",
                "StorageDirectory": str(work / "orthanc-db"),
                "IndexDirectory": str(work / "orthanc-db"),
                "DicomAet": "ORTHANC",
                "DicomPort": port,
                "HttpPort": http,
                "RemoteAccessAllowed": False,
                "DicomCheckCalledAet": False,
                "DicomAlwaysAllowStore": True,
                "StorageCompression": False,
                "SyncStorageArea": True,
                "Plugins": [],
            }
        )
    )
    with _process(["/usr/sbin/Orthanc", str(config)], port, PEER_ENV, work / "orthanc.log"):
        yield port, "ORTHANC"


ORTHANC = "Orthanc (fsync, SQLite index)"

_BARE_SCP = """
import sys
from pathlib import Path
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
out = Path(sys.argv[2])
def handle(event):
    (out / (event.request.AffectedSOPInstanceUID + ".dcm")).write_bytes(event.encoded_dataset())
    return 0
ae = AE("BARE")
ae.maximum_pdu_size = 262144
for cx in AllStoragePresentationContexts:
    ae.add_supported_context(cx.abstract_syntax, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
ae.start_server(("127.0.0.1", int(sys.argv[1])), evt_handlers=[(evt.EVT_C_STORE, handle)])
"""


@contextmanager
def bare_pynetdicom(work: Path) -> Iterator[tuple[int, str]]:
    port, out = free_port(), work / "bare"
    out.mkdir()
    with _process(
        [sys.executable, "-c", _BARE_SCP, str(port), str(out)],
        port,
        dict(os.environ),
        work / "bare.log",
    ):
        yield port, "BARE"


def node(fsync: bool, receivers: int = 1) -> Callable[[Path], object]:
    @contextmanager
    def _node(work: Path) -> Iterator[tuple[int, str]]:
        port = free_port()
        env = {
            **os.environ,
            "DICOM_NODE_SERIES_IDLE_SECONDS": "3600",
            "DICOM_NODE_SIMILARITY_PORT": "-1",
            "DICOM_NODE_STORAGE_MIN_FREE_MB": "0",
            "DICOM_NODE_STORAGE_FSYNC": "true" if fsync else "false",
            "DICOM_NODE_NETWORK_RECEIVERS": str(receivers),
        }

        def _serving() -> bool:  # written once every receiving process serves
            return (work / "node" / "node.json").exists()

        args = [
            sys.executable,
            "-m",
            "dicom_node",
            "-q",
            "serve",
            "--data-dir",
            str(work / "node"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ]
        with _process(args, port, env, work / "node.log", ready=_serving):
            yield port, "DICOM_NODE"

    return _node


def _send(parts: list[Path], port: int, aec: str) -> float:
    """Wall seconds for one ``storescu`` per folder in ``parts``, all at once."""
    started = time.perf_counter()
    senders = [
        subprocess.Popen(
            ["/usr/bin/storescu", "-aec", aec, "127.0.0.1", str(port), "+sd", str(part)],
            env=PEER_ENV,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for part in parts
    ]
    errors = [(p.wait(), p.stderr.read() if p.stderr else "") for p in senders]
    elapsed = time.perf_counter() - started
    for code, stderr in errors:
        if code != 0 or "Failed" in stderr:
            raise RuntimeError(f"storescu to {aec} failed:\n{stderr[-2000:]}")
    return elapsed


def _split(series: Path, root: Path, n: int) -> list[Path]:
    """``n`` folders of hard links sharing out the series' files round-robin."""
    if n == 1:
        return [series]
    parts = [root / f"{series.name}-{n}-{i}" for i in range(n)]
    for part in parts:
        part.mkdir()
    for i, path in enumerate(sorted(series.iterdir())):
        os.link(path, parts[i % n] / path.name)
    return parts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--matrix", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--senders", default="1,4", help="parallel storescu counts (default 1,4)")
    parser.add_argument(
        "--receivers",
        type=int,
        default=2,
        help="network.receivers of the multi-process row (default 2, the cores here)",
    )
    parser.add_argument(
        "--only", default="", help="comma list of receiver name prefixes (default: all)"
    )
    args = parser.parse_args(argv)
    counts = [int(c) for c in args.senders.split(",")]
    load_before = os.getloadavg()[0]

    with tempfile.TemporaryDirectory(prefix="dicom-node-bench-") as tmp:
        root = Path(tmp)
        series = root / "series"
        write_ct_series(series, args.slices, rows=args.matrix, columns=args.matrix)
        megabytes = sum(p.stat().st_size for p in series.iterdir()) / 1e6
        split = {n: _split(series, root, n) for n in counts}
        receivers: list[tuple[str, Callable[[Path], object]]] = [
            ("dcmtk storescp (no fsync, no database)", storescp),
        ]
        if Path("/usr/sbin/Orthanc").exists():
            receivers.append((ORTHANC, orthanc))
        receivers += [
            ("bare pynetdicom SCP (raw bytes, no fsync)", bare_pynetdicom),
            ("dicom-node (fsync, catalog)", node(fsync=True)),
            ("dicom-node (fsync off)", node(fsync=False)),
            (
                f"dicom-node, {args.receivers} receiving processes (fsync, catalog)",
                node(fsync=True, receivers=args.receivers),
            ),
        ]
        if args.only:
            wanted = tuple(w.strip() for w in args.only.split(","))
            receivers = [r for r in receivers if r[0].startswith(wanted) or r[0] == ORTHANC]
        results: dict[tuple[str, int], float] = {}
        for name, receiver in receivers:
            for n in counts:
                times = []
                for attempt in range(args.repeat):
                    work = root / f"run-{len(results)}-{attempt}"
                    work.mkdir()
                    with receiver(work) as (port, aec):  # type: ignore[attr-defined]
                        times.append(_send(split[n], port, aec))
                    shutil.rmtree(work, ignore_errors=True)
                results[name, n] = statistics.median(times)
                print(
                    f"  {name}, {n} sender(s): {args.slices / results[name, n]:.0f} slices/s",
                    flush=True,
                )

    print(
        f"\nstorescu -> receiver, {args.slices} slices {args.matrix}x{args.matrix}, "
        f"{megabytes:.0f} MB, median of {args.repeat}, TCP_NODELAY=1, {os.cpu_count()} CPUs, "
        f"load average {load_before:.1f} -> {os.getloadavg()[0]:.1f} (the ratios compare "
        "receivers of the same run)\n"
    )
    print("| receiver | senders | seconds | slices/s | MB/s | x Orthanc |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for (name, n), seconds in results.items():
        reference = results.get((ORTHANC, n))
        ratio = f"{reference / seconds:.2f}" if reference else "–"
        print(
            f"| {name} | {n} | {seconds:.2f} | {args.slices / seconds:.0f} | "
            f"{megabytes / seconds:.0f} | {ratio} |"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
