"""One node per data directory: the lock, who holds it, and how the last node ended."""

from __future__ import annotations

import os

import pytest

from storage.errors import DataDirectoryInUse
from storage.lock import DataDirectoryLock


def test_second_holder_fails_at_once_naming_the_pid(tmp_path) -> None:
    first = DataDirectoryLock(tmp_path / "data")
    first.acquire()
    second = DataDirectoryLock(tmp_path / "data")
    with pytest.raises(DataDirectoryInUse, match=f"is in use by pid {os.getpid()}"):
        second.acquire()
    assert not second.held and first.held
    first.release()
    second.acquire()  # free again
    second.release()


def test_the_lock_file_tells_how_the_last_node_ended(tmp_path) -> None:
    lock = DataDirectoryLock(tmp_path)
    lock.acquire()
    assert lock.previous is None and lock.unscanned_since is None  # first start
    started = lock._started_at
    # A killed node never releases: the kernel drops its lock, the record stays.
    lock._handle.close()
    lock._handle = None

    after_kill = DataDirectoryLock(tmp_path)
    after_kill.acquire()
    assert after_kill.previous is not None and not after_kill.previous.clean
    assert after_kill.unscanned_since == started
    after_kill.release()  # a start that failed before scanning passes the time on

    again = DataDirectoryLock(tmp_path)
    again.acquire()
    assert again.previous is not None and again.previous.clean
    assert again.unscanned_since == started
    again.mark_scanned()
    again.release()

    clean = DataDirectoryLock(tmp_path)
    clean.acquire()
    assert clean.previous is not None and clean.previous.clean
    assert clean.unscanned_since is None
    clean.release()
