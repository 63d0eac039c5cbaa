"""Results delivered to a PACS (dcmtk storescp) exactly once, through downtime and restarts."""

from __future__ import annotations

import dataclasses

import pydicom
import pytest

from dicom_node.results.outbox import Outbox
from dicom_node.settings import OutboxSettings
from storage.catalog import DeliveryState
from tests.factories import keep_results
from tests.peers import free_port, start_storescp, wait_until

pytestmark = pytest.mark.integration


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_destination_down_then_up_gets_every_object_once(
    tmp_path, make_settings, start_node
) -> None:
    port = free_port()
    settings = make_settings(
        outbox={
            "destinations": [f"PACS@127.0.0.1:{port}"],
            "retry_initial_seconds": 5.0,
            "retry_max_seconds": 60.0,
        }
    )
    node = start_node(dataclasses.replace(settings, outbox=OutboxSettings()))  # its own outbox idle
    clock = Clock()
    outbox = Outbox(
        node.catalog.deliveries,
        settings.instances_dir,
        settings.outbox,
        "DICOM_NODE",
        clock=clock,
        timeout=5,
    )
    kept = keep_results(node.ingest, tmp_path / "source", 3)
    for result in kept:
        assert outbox.enqueue(result) == 1
        assert outbox.enqueue(result) == 0  # once

    # Down: every attempt fails and is rescheduled with a doubling wait.
    first = outbox.run_once()
    assert [state for _, state, _ in first] == [DeliveryState.PENDING] * 3
    assert outbox.run_once() == []  # not due yet
    clock.now += 5
    assert len(outbox.run_once()) == 3
    waits = {d.next_attempt_at - clock.now for d in node.catalog.deliveries.in_states()}
    assert waits == {10.0}

    # A restart: a new Outbox on the same catalog picks the rows up.
    outbox = Outbox(
        node.catalog.deliveries,
        settings.instances_dir,
        settings.outbox,
        "DICOM_NODE",
        clock=clock,
        timeout=5,
    )
    received_dir = tmp_path / "pacs"
    pacs = start_storescp(port, received_dir)
    try:
        clock.now += 10
        results = outbox.run_once()
        assert [state for _, state, _ in results] == [DeliveryState.DONE] * 3
        clock.now += 1000
        assert outbox.run_once() == []  # nothing is sent twice
    finally:
        pacs.terminate()
        pacs.wait()
    files = sorted(received_dir.iterdir())
    assert len(files) == 3
    assert sorted(pydicom.dcmread(f).SOPInstanceUID for f in files) == sorted(
        r.sop_instance_uid for r in kept
    )


def test_failure_status_is_not_retried_and_resend_requeues(
    tmp_path, make_settings, start_node
) -> None:
    # The destination is a second node whose disk floor refuses everything (0xA700).
    full = start_node(make_settings(data_dir=tmp_path / "full", storage={"min_free_mb": 2**40}))
    settings = make_settings(outbox={"destinations": [f"DICOM_NODE@127.0.0.1:{full.port}"]})
    node = start_node(dataclasses.replace(settings, outbox=OutboxSettings()))
    outbox = Outbox(
        node.catalog.deliveries, settings.instances_dir, settings.outbox, "DICOM_NODE", timeout=5
    )
    (result,) = keep_results(node.ingest, tmp_path / "source", 1)
    outbox.enqueue(result)
    ((_, state, error),) = outbox.run_once()
    assert state is DeliveryState.FAILED and "0xA700" in error
    assert outbox.run_once() == []
    assert node.catalog.deliveries.requeue() == 1
    assert [d.state for d in node.catalog.deliveries.in_states()] == [DeliveryState.PENDING]


def test_node_delivers_in_the_background(tmp_path, make_settings, start_node) -> None:
    port = free_port()
    received_dir = tmp_path / "pacs"
    pacs = start_storescp(port, received_dir)
    try:
        node = start_node(make_settings(outbox={"destinations": [f"PACS@127.0.0.1:{port}"]}))
        (result,) = keep_results(node.ingest, tmp_path / "source", 1)
        node.outbox.enqueue(result)
        wait_until(
            lambda: [d.state for d in node.catalog.deliveries.in_states()] == [DeliveryState.DONE],
            what="delivered by the outbox thread",
        )
    finally:
        pacs.terminate()
        pacs.wait()
    assert len(list(received_dir.iterdir())) == 1


def test_status_lists_failed_deliveries_and_resend_requeues(
    tmp_path, make_settings, start_node, capsys
) -> None:
    import json

    from dicom_node.cli import main

    port = free_port()  # nobody listens
    settings = make_settings(
        outbox={"destinations": [f"PACS@127.0.0.1:{port}"], "give_up_after_hours": 1e-9}
    )
    node = start_node(dataclasses.replace(settings, outbox=OutboxSettings()))
    outbox = Outbox(
        node.catalog.deliveries, settings.instances_dir, settings.outbox, "DICOM_NODE", timeout=5
    )
    (result,) = keep_results(node.ingest, tmp_path / "source", 1)
    outbox.enqueue(result)
    ((_, state, error),) = outbox.run_once()
    assert state is DeliveryState.FAILED and error.startswith("gave up after 1 attempts")
    assert main(["status", "--data-dir", str(settings.data_dir), "--json"]) == 0
    (delivery,) = json.loads(capsys.readouterr().out)["deliveries"]
    assert delivery["state"] == "failed" and delivery["sop_instance_uid"] == result.sop_instance_uid
    assert main(["resend", "--data-dir", str(settings.data_dir)]) == 0
    assert "1 deliveries queued again" in capsys.readouterr().out
    assert [d.state for d in node.catalog.deliveries.in_states()] == [DeliveryState.PENDING]
