"""``network.receivers``: child processes serving the main AE on the node's socket."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from storage.catalog import Catalog
from tests.factories import write_ct_series
from tests.peers import PEER_ENV, dcmtk, wait_until

pytestmark = pytest.mark.integration


def _children(pid: int) -> list[int]:
    """Process IDs of ``pid``'s children, whichever of its threads started them (Linux /proc)."""
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(p) for p in (task / "children").read_text().split()]
        except OSError:
            continue
    return sorted(found)


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"  # a zombie has exited


def _storescu(port: int, folder: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [dcmtk("storescu"), "-v", "-aec", "DICOM_NODE", "127.0.0.1", str(port), "+sd", str(folder)],
        env=PEER_ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_four_senders_over_two_receivers_each_instance_once(
    tmp_path, make_settings, start_node, caplog
) -> None:
    caplog.set_level(logging.INFO)
    folders = []
    for sender in range(4):
        folders.append(tmp_path / f"sender-{sender}")
        write_ct_series(folders[-1], 12, rows=64, columns=64)
    node = start_node(make_settings(network={"receivers": 2}))
    assert node.receivers is not None
    (child,) = node.receivers.pids
    wait_until(lambda: "receiver 1: serving the main AE" in caplog.text, what="receiver serving")

    senders = [_storescu(node.port, folder) for folder in folders]
    for sender in senders:
        _, stderr = sender.communicate(timeout=120)
        assert sender.returncode == 0, stderr
        assert stderr.count("Received Store Response (Success)") == 12, stderr

    # Every instance once, whichever process took it; the series complete.
    assert len(node.catalog.intake.instance_paths()) == 48
    assert len(node.catalog.workflow.summaries()) == 4
    node.stop()
    assert not _alive(child), "the receiver outlived its node"


def test_a_receiver_serves_alone_is_restarted_and_ends_with_its_node(
    tmp_path, node_process
) -> None:
    node = node_process({"DICOM_NODE_NETWORK_RECEIVERS": "3"})
    node.start()
    wait_until(lambda: len(_children(node.pid)) == 2, what="two receiver processes")
    wait_until(
        lambda: node.log.read_text().count(": serving the main AE") == 2,
        what="both receivers serving",
    )
    first, second = _children(node.pid)
    source = tmp_path / "series"
    write_ct_series(source, 10, rows=64, columns=64)

    # The node itself stopped: a receiver alone takes the association and
    # catalogs each instance before acknowledging it.
    os.kill(node.pid, signal.SIGSTOP)
    try:
        sender = _storescu(node.port, source)
        _, stderr = sender.communicate(timeout=120)
        catalog = Catalog(f"sqlite:///{node.data_dir / 'catalog.sqlite3'}", create=False)
        try:
            stored = len(catalog.intake.instance_paths())
        finally:
            catalog.close()
    finally:
        os.kill(node.pid, signal.SIGCONT)
    assert sender.returncode == 0, stderr
    assert stderr.count("Received Store Response (Success)") == 10
    assert stored == 10

    # A receiver killed mid-write: its partial file goes, another takes its place.
    partial = node.data_dir / "instances" / ".tmp" / socket.gethostname() / f"1.2.3.{first}.part"
    partial.write_bytes(b"partial")
    os.kill(first, signal.SIGKILL)
    wait_until(lambda: not partial.exists(), what="the killed receiver's partial file removed")
    wait_until(
        lambda: len(_children(node.pid)) == 2 and first not in _children(node.pid),
        what="the receiver started again",
    )
    assert "exited with status -9" in node.log.read_text()
    survivors = [*_children(node.pid)]
    assert second in survivors
    # node.json follows the restart; `dicom-node status` names the live receivers.
    wait_until(
        lambda: sorted(node.runtime().get("receiver_pids", [])) == survivors,
        what="node.json naming the receivers running now",
    )
    status = subprocess.run(
        [sys.executable, "-m", "dicom_node", "status", "--data-dir", str(node.data_dir)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert status.returncode == 0, status.stderr
    assert (
        f"receiver processes beside it (network.receivers): pids {', '.join(map(str, survivors))}"
        in status.stdout
    )

    # A node killed outright takes its receivers with it (their stdin closes).
    node.kill()
    wait_until(
        lambda: not any(_alive(pid) for pid in survivors), what="the receivers ending", timeout=30
    )
