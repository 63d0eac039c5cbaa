from __future__ import annotations

import socket

import pytest

from storage.errors import InstanceConflict, InsufficientStorage, UnsafeUIDError
from storage.instances import InstanceStore, PutOutcome
from storage.uids import instance_relative_path, is_valid_uid, validate_uid


@pytest.mark.parametrize("uid", ["1.2.840.10008.5.1.4.1.1.2", "0", "1.0.3", "2." + "1" * 62])
def test_valid_uids(uid) -> None:
    assert is_valid_uid(uid) and validate_uid(uid) == uid


@pytest.mark.parametrize(
    ("uid", "message"),
    [
        ("", "missing or empty"),
        (None, "missing or empty"),
        ("1.2.abc", "not a valid UID"),
        ("../etc/passwd", "not a valid UID"),
        ("1..2", "not a valid UID"),
        ("1.02", "not a valid UID"),
        ("1.2.", "not a valid UID"),
        ("1.2\x00", "not a valid UID"),
        ("1." + "2" * 64, "maximum 64"),
    ],
)
def test_unsafe_uids_are_refused(uid, message) -> None:
    assert not is_valid_uid(uid)
    with pytest.raises(UnsafeUIDError, match=message):
        validate_uid(uid, "SOPInstanceUID")


def test_path_is_made_only_from_validated_uids() -> None:
    assert instance_relative_path("1.2", "1.2.3", "1.2.3.4").as_posix() == "1.2/1.2.3/1.2.3.4.dcm"
    with pytest.raises(UnsafeUIDError):
        instance_relative_path("1.2", "..", "1.2.3.4")


def test_put_identical_and_conflicting(tmp_path) -> None:
    store = InstanceStore(tmp_path)
    first = store.put("1.2", "1.2.3", "1.2.3.4", b"DICM-content")
    assert first.outcome is PutOutcome.STORED
    path = store.path_of(first.relative_path)
    mtime = path.stat().st_mtime_ns
    again = store.put("1.2", "1.2.3", "1.2.3.4", b"DICM-content")
    assert again.outcome is PutOutcome.IDENTICAL and path.stat().st_mtime_ns == mtime
    with pytest.raises(InstanceConflict, match="kept the first"):
        store.put("1.2", "1.2.3", "1.2.3.4", b"other content")
    assert path.read_bytes() == b"DICM-content"


def test_free_space_floor_leaves_nothing_behind(tmp_path) -> None:
    store = InstanceStore(tmp_path, min_free_bytes=2**62)
    with pytest.raises(InsufficientStorage):
        store.put("1.2", "1.2.3", "1.2.3.4", b"x" * 100)
    assert [p for p in tmp_path.rglob("*") if p.is_file()] == []


def test_recover_removes_this_hosts_partial_files_only(tmp_path) -> None:
    store = InstanceStore(tmp_path)
    here = tmp_path / ".tmp" / socket.gethostname()
    (here / "abc.part").write_bytes(b"half")
    # Another machine writing to the same shared root: its write is in progress.
    (tmp_path / ".tmp" / "other-host").mkdir()
    (tmp_path / ".tmp" / "other-host" / "def.part").write_bytes(b"half")
    assert InstanceStore(tmp_path).recover() == 1
    assert not list(here.iterdir())
    assert store.recover() == 0
    assert (tmp_path / ".tmp" / "other-host" / "def.part").exists()
