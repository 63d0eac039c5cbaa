"""One node per data directory; bind errors name the port; read-only commands create nothing."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from storage.catalog import Catalog, SeriesState
from tests.factories import write_ct_series
from tests.integration.conftest import REPO
from tests.peers import dcmtk, free_port, run_peer, wait_until

pytestmark = pytest.mark.integration


def _serve(data_dir, port: int, *extra: str, env: dict[str, str] | None = None):
    """``dicom-node serve`` expected to fail: its completed process."""
    return subprocess.run(
        [sys.executable, "-m", "dicom_node", "serve", "--data-dir", str(data_dir)]
        + ["--port", str(port), "--host", "127.0.0.1", *extra],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env=env,
    )


def test_second_node_on_a_data_directory_fails_and_the_first_is_untouched(
    tmp_path, node_process
) -> None:
    first = node_process(
        env={"DICOM_NODE_WORKER_THREADS": "0", "DICOM_NODE_SERIES_IDLE_SECONDS": "0"}
    )
    first.start()
    paths = write_ct_series(tmp_path / "s", 3)
    stored = run_peer(
        [dcmtk("storescu"), "-aec", "DICOM_NODE", "127.0.0.1", str(first.port), *map(str, paths)]
    )
    assert stored.returncode == 0, stored.stderr
    catalog = Catalog(f"sqlite:///{first.data_dir / 'catalog.sqlite3'}", create=False)
    (series,) = catalog.workflow.summaries()
    uid = series.series_instance_uid
    wait_until(lambda: catalog.workflow.series_state(uid)[0] is SeriesState.COMPLETE)
    # What a second node's recovery would destroy: a series being processed and
    # an instance being written by the first node.
    catalog.workflow.transition(uid, SeriesState.PROCESSING)
    in_flight = first.data_dir / "instances" / ".tmp" / "1.2.3.4.999.part"
    in_flight.write_bytes(b"half an instance")
    runtime = (first.data_dir / "node.json").read_text()

    second = _serve(first.data_dir, free_port())
    assert second.returncode == 1
    assert f"is in use by pid {first.pid}" in second.stderr, second.stderr
    assert str(first.data_dir.resolve()) in second.stderr

    assert catalog.workflow.series_state(uid)[0] is SeriesState.PROCESSING
    assert in_flight.read_bytes() == b"half an instance"
    assert (first.data_dir / "node.json").read_text() == runtime
    echo = run_peer([dcmtk("echoscu"), "-aec", "DICOM_NODE", "127.0.0.1", str(first.port)])
    assert echo.returncode == 0 and first.process.poll() is None
    catalog.close()
    # The first node logs to its data directory as well as to stderr.
    log = (first.data_dir / "logs" / "dicom-node.log").read_text()
    assert f"listening as DICOM_NODE on 127.0.0.1:{first.port}" in log


@pytest.mark.parametrize("taken", ["main", "similarity"])
def test_a_port_in_use_is_named_with_its_ae(tmp_path, taken) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        main_port = port if taken == "main" else free_port()
        env = {
            **os.environ,
            "DICOM_NODE_SIMILARITY_PORT": str(port if taken == "similarity" else 0),
        }
        failed = _serve(tmp_path / "data", main_port, env=env)
    assert failed.returncode == 1
    title = "DICOM_NODE" if taken == "main" else "DICOM_NODE_SIM"
    assert f"cannot listen as {title} on 127.0.0.1:{port}" in failed.stderr, failed.stderr
    # It stopped before recovering or processing anything, and left the directory free.
    record = json.loads((tmp_path / "data" / "node.lock").read_text())
    assert record["stopped_at"] is not None


@pytest.mark.parametrize("command", [["status"], ["similar", "--study", "1.2.3"], ["reindex"]])
def test_commands_on_a_directory_without_a_node_create_nothing(tmp_path, command) -> None:
    from dicom_node.cli import main

    empty = tmp_path / "not-a-node"
    empty.mkdir()
    assert main([*command, "--data-dir", str(empty / "dicom-node-data")]) == 1
    assert list(empty.iterdir()) == []
