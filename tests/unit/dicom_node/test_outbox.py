"""The outbox's policy (backoff, give-up, failure, warning, lost association) with a fake SCU."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from dicom_node.net.scu import Outgoing, SendReport, StoreResponse
from dicom_node.results.outbox import Outbox
from dicom_node.settings import Destination, OutboxSettings
from storage.catalog import DeliveryState, GeneratedResult
from tests.factories import generated_result

PACS = Destination.parse("PACS@pacs.example:104")
SUCCESS = StoreResponse(0x0000, "Success")
NO_RESPONSE = StoreResponse(None, None, "no response (timeout or abort)")


class FakeSCU:
    """Answers each send with the next scripted report; records what was sent."""

    def __init__(self, *reports: SendReport) -> None:
        self.reports = list(reports)
        self.sent: list[list[str]] = []

    def send(
        self, destination: Destination, objects: Sequence[Outgoing], on_response=None
    ) -> SendReport:
        assert destination == PACS
        self.sent.append([o.sop_instance_uid for o in objects])
        report = self.reports.pop(0)
        for position, response in enumerate(report.responses):
            on_response(position, response)
        return report


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def _outbox(catalog, root: Path, scu: FakeSCU, clock: Clock, **settings) -> Outbox:
    values = {"destinations": (PACS,), "retry_initial_seconds": 10.0, "retry_max_seconds": 60.0}
    return Outbox(
        catalog.deliveries,
        root,
        OutboxSettings(**(values | settings)),
        "DICOM_NODE",
        scu=scu,
        clock=clock,
    )


def _results(root: Path, count: int) -> list[GeneratedResult]:
    results = [generated_result(index + 1) for index in range(count)]
    for result in results:
        (root / result.relative_path).parent.mkdir(parents=True, exist_ok=True)
        (root / result.relative_path).write_bytes(b"DICM")
    return results


def test_backoff_doubles_up_to_the_cap_then_delivers_once(catalog, tmp_path) -> None:
    clock = Clock()
    refused = SendReport("no association (destination down?)", ())
    scu = FakeSCU(*[refused] * 4, SendReport(None, (SUCCESS, SUCCESS)))
    outbox = _outbox(catalog, tmp_path, scu, clock)
    for result in _results(tmp_path, 2):
        assert outbox.enqueue(result) == 1
    waits = []
    for _ in range(4):
        assert {state for _, state, _ in outbox.run_once()} == {DeliveryState.PENDING}
        assert outbox.run_once() == []  # nothing due before the wait is over
        (wait,) = {d.next_attempt_at - clock.now for d in catalog.deliveries.in_states()}
        waits.append(wait)
        clock.now += wait
    assert waits == [10.0, 20.0, 40.0, 60.0]
    assert [state for _, state, _ in outbox.run_once()] == [DeliveryState.DONE] * 2
    clock.now += 3600
    assert outbox.run_once() == []  # never sent twice
    assert scu.sent == [["1.2.99.1", "1.2.99.2"]] * 5


def test_gives_up_after_the_configured_hours(catalog, tmp_path) -> None:
    clock = Clock()
    scu = FakeSCU(SendReport("association rejected", ()), SendReport("association rejected", ()))
    outbox = _outbox(catalog, tmp_path, scu, clock, give_up_after_hours=1.0)
    (result,) = _results(tmp_path, 1)
    outbox.enqueue(result)
    ((_, state, error),) = outbox.run_once()
    assert state is DeliveryState.PENDING and "association rejected" in error
    clock.now += 3601
    ((_, state, error),) = outbox.run_once()
    assert state is DeliveryState.FAILED
    assert error == "gave up after 2 attempts: PACS@pacs.example:104: association rejected"


def test_failure_is_final_warning_is_done_and_a_lost_association_is_retried(
    catalog, tmp_path
) -> None:
    clock = Clock()
    answers = (
        StoreResponse(0xA700, "Failure", "out of resources"),
        StoreResponse(0xB000, "Warning"),
        NO_RESPONSE,
    )  # and the fourth object never sent: the association broke
    outbox = _outbox(catalog, tmp_path, FakeSCU(SendReport(None, answers)), clock)
    for result in _results(tmp_path, 4):
        outbox.enqueue(result)
    outcome = [(state, error) for _, state, error in outbox.run_once()]
    assert outcome == [
        (DeliveryState.FAILED, "PACS@pacs.example:104 answered 0xA700 out of resources"),
        (DeliveryState.DONE, "warning 0xB000"),
        (DeliveryState.PENDING, "PACS@pacs.example:104: no response (timeout or abort)"),
        (DeliveryState.PENDING, "PACS@pacs.example:104: association lost"),
    ]
    assert catalog.deliveries.requeue() == 1  # the failed one, for dicom-node resend


def test_missing_file_and_removed_destination_fail_without_sending(catalog, tmp_path) -> None:
    clock = Clock()
    scu = FakeSCU()
    outbox = _outbox(catalog, tmp_path, scu, clock)
    first, second = _results(tmp_path, 2)
    outbox.enqueue(first)
    (tmp_path / first.relative_path).unlink()
    catalog.deliveries.enqueue("OLD@gone:104", second, now=clock.now)
    outcome = sorted((state, error) for _, state, error in outbox.run_once())
    assert outcome == [
        (DeliveryState.FAILED, "destination OLD@gone:104 is no longer configured"),
        (DeliveryState.FAILED, f"file {first.relative_path} is missing"),
    ]
    assert scu.sent == []
