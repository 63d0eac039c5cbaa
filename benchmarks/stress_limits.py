"""Rows of ``benchmarks.stress`` about limits: a full disk and a deflate bomb.

``disk-full``     the node's data directory on a tmpfs of its own (root only: ``mount -t
                  tmpfs``), filled by a filler file and the sender's own stores until the
                  node refuses; every status past the floor ``storage.min_free_mb`` must be
                  0xA7xx, then the seconds from space freed to the next Success; then the
                  floor at 0, so the write itself hits ENOSPC: 0xA720 and no partial file.
                  Acknowledged instances all on disk and in the catalog, no row without its
                  file, no file without its row.
``deflate-bomb``  a dataset of zeros deflated a thousand to one, proposed as Deflated
                  Explicit VR Little Endian (the presentation context must be rejected:
                  CONFORMANCE.md 2.1), then its bytes sent under Explicit VR Little Endian
                  (malformed data: a status, nothing kept); the node's RSS and peak RSS.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
import zlib
from io import BytesIO
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomFileLike
from pydicom.filewriter import write_dataset, write_file_meta_info
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
)
from pynetdicom import AE, _config
from pynetdicom.association import Association

from benchmarks.stress import (
    NodeProcess,
    Result,
    _associate,
    _catalogued,
    _instance_files,
    _series,
    running,
)

#: A 0xA7xx status: Refused, out of resources (PS3.4 B.2.3).
_OUT_OF_RESOURCES = range(0xA700, 0xA800)
_ENOSPC_STATUS = 0xA720
#: The issue's bound: a C-STORE succeeds again within this many seconds of space freed.
RESUME_LIMIT_S = 5.0
RSS_LIMIT_MIB = 64.0


def mount_tmpfs(path: Path, mib: int) -> str | None:
    """Mount a tmpfs of ``mib`` MiB on ``path``; None when mounted, else why not."""
    if os.geteuid() != 0:
        return "needs root to mount a tmpfs"
    path.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={mib}m", "tmpfs", str(path)],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        return f"needs root to mount a tmpfs (mount: {done.stderr.strip()[:100]})"
    return None


def unmount(path: Path) -> None:
    if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _fill(path: Path, leave: int) -> int:
    """A filler file taking all free space of ``path``'s filesystem but ``leave`` bytes."""
    size = max(0, shutil.disk_usage(path.parent).free - leave)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        if size:
            os.posix_fallocate(fd, 0, size)
    finally:
        os.close(fd)
    return size


def _status(assoc: Association, ds: Dataset) -> int:
    """The C-STORE status, -1 when there was no answer."""
    status = assoc.send_c_store(ds)
    return int(status.Status) if status else -1


def _send_all(port: int, datasets: list[Dataset]) -> tuple[list[int], int]:
    """Each dataset's C-STORE status over one association, and how many C-STOREs had no
    answer within the DIMSE timeout: as a PACS would, the sender then associates again
    and sends that instance again."""
    statuses: list[int] = []
    unanswered = 0
    assoc = _associate(port)
    try:
        for ds in datasets:
            status = _status(assoc, ds)
            while status == -1 and unanswered < 10:
                unanswered += 1
                assoc = _associate(port)
                status = _status(assoc, ds)
            statuses.append(status)
    finally:
        if assoc.is_established:
            assoc.release()
    return statuses, unanswered


def _until_stored(port: int, ds: Dataset, freed_at: float, limit: float) -> float:
    """Send ``ds`` again and again until Success; seconds since ``freed_at`` (inf: never)."""
    assoc = _associate(port)
    try:
        while time.perf_counter() - freed_at < limit * 4:
            status = _status(assoc, ds)
            if status == 0x0000:
                return time.perf_counter() - freed_at
            if status == -1:  # no answer: the association was aborted
                assoc = _associate(port)
            else:
                time.sleep(0.05)
        return float("inf")
    finally:
        if assoc.is_established:
            assoc.release()


def row_disk_full(work: Path, logs: Path, slices: int, mib: int, headroom: int) -> Result:
    """Fill a tmpfs under the node past its floor, then to ENOSPC; free it each time."""
    started = time.perf_counter()
    mount = work / "disk-full"
    why = mount_tmpfs(mount, mib)
    if why is not None:
        return Result("disk-full", f"skipped: {why}", False, skipped=True)
    floor_mib = 8
    node = NodeProcess(mount, logs)
    node.env["DICOM_NODE_STORAGE_MIN_FREE_MB"] = str(floor_mib)
    filler = mount / "filler"
    datasets = _series(slices, 100, seed=21, rows=256, columns=256)
    size = len(datasets[0].PixelData) + 2048  # a slice on disk, roughly
    acknowledged: set[str] = set()
    try:
        # 1. The floor: room for ``headroom`` slices above it, then every store refused.
        with running(node):
            _fill(filler, floor_mib * 2**20 + headroom * size)
            statuses, unanswered = _send_all(node.port, datasets)
            acknowledged |= {
                str(ds.SOPInstanceUID) for ds, s in zip(datasets, statuses, strict=True) if s == 0
            }
            first_refusal = next(
                (i for i, s in enumerate(statuses) if s in _OUT_OF_RESOURCES), len(statuses)
            )
            past = statuses[first_refusal:]
            not_refused = sum(s not in _OUT_OF_RESOURCES for s in past)
            refused_codes = sorted({f"0x{s:04X}" for s in past})
            filler.unlink()
            freed = time.perf_counter()
            resumed = _until_stored(node.port, datasets[first_refusal], freed, RESUME_LIMIT_S)
            later, unanswered_later = _send_all(node.port, datasets[first_refusal:])
            unanswered += unanswered_later
            acknowledged |= {
                str(ds.SOPInstanceUID)
                for ds, s in zip(datasets[first_refusal:], later, strict=True)
                if s == 0
            }
            stored_after = sum(s == 0 for s in later)
        # 2. No floor: the write itself meets ENOSPC.
        node.env["DICOM_NODE_STORAGE_MIN_FREE_MB"] = "0"
        extra = _series(5, 5, seed=41, rows=256, columns=256)
        with running(node):
            rows_before = len(_catalogued(mount))
            _fill(filler, size // 2)
            enospc, unanswered_full = _send_all(node.port, extra)
            _, partial_at_enospc = _instance_files(mount)
            rows_at_enospc = len(_catalogued(mount)) - rows_before
            filler.unlink()
            freed = time.perf_counter()
            resumed_enospc = _until_stored(node.port, extra[0], freed, RESUME_LIMIT_S)
            enospc_later, unanswered_later = _send_all(node.port, extra)
            unanswered += unanswered_full + unanswered_later
            acknowledged |= {
                str(ds.SOPInstanceUID) for ds, s in zip(extra, enospc_later, strict=True) if s == 0
            }
            alive = node.alive()
        paths = _catalogued(mount)
        files, partial = _instance_files(mount)
    finally:
        if node.alive():
            node.kill()
        for log in (mount / "logs").glob("*"):  # searched for canaries with the others
            shutil.copy(log, logs / f"disk-full-node-{log.name}")
        unmount(mount)
    lost = sorted(acknowledged - set(paths))
    without_file = [p for p in paths.values() if p not in files]
    orphans = len(files - set(paths.values()))
    enospc_codes = sorted({f"0x{s:04X}" for s in enospc})
    ok = (
        alive
        and first_refusal < len(statuses)
        and not_refused == 0
        and resumed <= RESUME_LIMIT_S
        and stored_after == len(later)
        and all(s == _ENOSPC_STATUS for s in enospc)
        and partial_at_enospc == 0
        and rows_at_enospc == 0
        and resumed_enospc <= RESUME_LIMIT_S
        and all(s == 0 for s in enospc_later)
        and not lost
        and not without_file
        and partial == 0
        and orphans == 0
    )
    return Result(
        "disk-full",
        f"tmpfs {mib} MiB, floor {floor_mib} MiB: {first_refusal} of {slices} stored, then "
        f"{len(past)} refused {refused_codes}, {not_refused} other statuses past the floor; "
        f"space freed: stored again after {resumed:.2f} s, {stored_after}/{len(later)} of the "
        f"refused stored; floor 0, disk full: {len(enospc)} C-STOREs {enospc_codes}, "
        f"{partial_at_enospc} partial files, {rows_at_enospc} rows; freed: stored again after "
        f"{resumed_enospc:.2f} s; {len(lost)} acknowledged lost, {len(without_file)} rows "
        f"without file, {orphans} files without row; {unanswered} C-STOREs without an answer "
        "in 30 s (sent again)",
        ok,
        time.perf_counter() - started,
    )


def deflate_bomb(inflated: int) -> tuple[Dataset, bytes]:
    """A CT dataset whose Pixel Data is ``inflated`` bytes of zeros, and its deflated
    Explicit VR Little Endian encoding (PS3.5 A.5), made without holding the zeros."""
    (ds,) = _series(1, 1, seed=31)
    del ds.PixelData
    header = BytesIO()
    fp = DicomFileLike(header)
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, ds)
    pixel = b"\xe0\x7f\x10\x00OW\x00\x00" + inflated.to_bytes(4, "little")
    deflater = zlib.compressobj(9, zlib.DEFLATED, -15)
    out = [deflater.compress(header.getvalue() + pixel)]
    chunk = bytes(2**20)
    for _ in range(inflated // len(chunk)):
        out.append(deflater.compress(chunk))
    out.append(deflater.compress(bytes(inflated % len(chunk))))
    out.append(deflater.flush())
    return ds, b"".join(out)


def _part10(path: Path, ds: Dataset, syntax: str, body: bytes) -> Path:
    """A Part 10 file of ``body`` as it is, its file meta naming ``syntax``."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = syntax
    with path.open("wb") as handle:
        handle.write(b"\x00" * 128 + b"DICM")
        write_file_meta_info(DicomFileLike(handle), meta, enforce_standard=True)
        handle.write(body)
    return path


def _peak_mib(node: NodeProcess) -> float:
    assert node.popen is not None
    for line in Path(f"/proc/{node.popen.pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")


def row_deflate_bomb(work: Path, logs: Path, inflated_mib: int) -> Result:
    started = time.perf_counter()
    ds, bomb = deflate_bomb(inflated_mib * 2**20)
    folder = work / "deflate-bomb-files"
    folder.mkdir()
    deflated = _part10(folder / "bomb-deflated.dcm", ds, DeflatedExplicitVRLittleEndian, bomb)
    plain = _part10(folder / "bomb-as-explicit.dcm", ds, ExplicitVRLittleEndian, bomb)
    node = NodeProcess(work / "deflate-bomb", logs)
    chunked, _config.STORE_SEND_CHUNKED_DATASET = _config.STORE_SEND_CHUNKED_DATASET, True
    try:
        with running(node):
            rss, peak = node.rss_mib(), _peak_mib(node)
            ae = AE(ae_title="PACS")
            ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
            ae.add_requested_context(CTImageStorage, DeflatedExplicitVRLittleEndian)
            ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
            assoc = ae.associate("127.0.0.1", node.port, ae_title="DICOM_NODE")
            deflated_accepted = any(
                c.transfer_syntax[0] == DeflatedExplicitVRLittleEndian
                for c in assoc.accepted_contexts
            )
            answers = []
            for path in (deflated, plain):
                try:
                    status = assoc.send_c_store(path)
                    answers.append(f"0x{int(status.Status):04X}" if status else "no response")
                except ValueError:  # no accepted presentation context for its syntax
                    answers.append("no context")
            if assoc.is_established:
                assoc.release()
            rss_growth, peak_growth = node.rss_mib() - rss, _peak_mib(node) - peak
            alive = node.alive()
    finally:
        _config.STORE_SEND_CHUNKED_DATASET = chunked
    files, partial = _instance_files(node.data_dir)
    growth = max(rss_growth, peak_growth)
    ok = (
        alive
        and not deflated_accepted
        and answers[0] == "no context"
        and answers[1] not in ("no response", "no context", "0x0000")
        and not files
        and partial == 0
        and growth < RSS_LIMIT_MIB
    )
    return Result(
        "deflate-bomb",
        f"{len(bomb) // 1024:,} KiB inflating to {inflated_mib:,} MiB: deflated context "
        f"{'ACCEPTED' if deflated_accepted else 'rejected'} ({answers[0]}); its bytes as "
        f"Explicit VR LE: {answers[1]}; {len(files)} files kept; RSS {rss_growth:+.1f} MiB, "
        f"peak {peak_growth:+.1f} MiB",
        ok,
        time.perf_counter() - started,
    )
