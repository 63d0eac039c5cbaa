"""The outbox: durable delivery of our results to DICOM destinations by C-STORE.

Rows in the catalog's deliveries are the truth: an object is queued once per
destination (a unique key), survives restarts, and is retried with
exponential backoff until the destination answers or ``give_up_after_hours``
passes. The sending itself is the :class:`dicom_node.net.scu.StoreSCU`'s
(one association per destination and pass, every result checked); this
module is the policy: no association or no response → retry later; Failure
→ no retry, reason kept; Success or Warning → done (a Warning logged).

Each answer is committed as it arrives, before the next object is sent: an
object whose acknowledgement was recorded is never sent again, across a
SIGKILL at any point. Only an acknowledgement lost in flight (the node killed
between the destination's answer and the commit) makes the object go again,
with the same SOP Instance UID and the same bytes, which a PACS recognises.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from dicom_node.net.scu import Outgoing, PynetdicomStoreSCU, StoreResponse, StoreSCU
from dicom_node.settings import Destination, OutboxSettings
from storage.catalog import Delivery, DeliveryState, GeneratedResult
from storage.catalog.deliveries import DeliveryCatalog

__all__ = ["Outbox", "SendResult"]

logger = logging.getLogger(__name__)

#: (delivery id, outcome, error) for each attempted delivery
SendResult = tuple[int, DeliveryState, str | None]


class Outbox:
    """Queue results for the configured destinations and deliver them.

    Parameters
    ----------
    deliveries : DeliveryCatalog
        The catalog's deliveries (``catalog.deliveries``).
    instances_root : pathlib.Path
        Root of the instance store; deliveries hold paths relative to it.
    settings : OutboxSettings
    calling_ae_title : str
        Our AE title when sending (unless ``settings.calling_ae_title`` is set).
    scu : StoreSCU, optional
        What sends (default: pynetdicom, with ``timeout``).
    clock : callable, optional
        Returns the current time in seconds (tests drive the backoff with it).
    timeout : float
        Network timeout of the default SCU, in seconds.
    """

    def __init__(
        self,
        deliveries: DeliveryCatalog,
        instances_root: Path,
        settings: OutboxSettings,
        calling_ae_title: str,
        *,
        scu: StoreSCU | None = None,
        clock: Callable[[], float] = time.time,
        timeout: float = 30.0,
    ) -> None:
        self.deliveries = deliveries
        self.root = Path(instances_root)
        self.settings = settings
        self.destinations: tuple[Destination, ...] = settings.destinations
        self._by_name = {str(d): d for d in self.destinations}
        self.scu: StoreSCU = scu or PynetdicomStoreSCU(
            settings.calling_ae_title or calling_ae_title, timeout=timeout
        )
        self.clock = clock
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="outbox", daemon=True)

    def enqueue(self, result: GeneratedResult) -> int:
        """Queue a generated object for every destination; return how many rows were new."""
        added = sum(
            self.deliveries.enqueue(name, result, now=self.clock()) for name in self._by_name
        )
        if added:
            self._wake.set()
        return added

    def start(self) -> None:
        """Start the delivery thread."""
        self._thread.start()

    def stop(self) -> None:
        """Stop the delivery thread after the attempt in progress."""
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():
            self._thread.join()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.run_once()
            except Exception:  # noqa: BLE001 - the sender must outlive any failure
                logger.exception("outbox pass failed; retrying")
            due = [d.next_attempt_at for d in self.deliveries.in_states([DeliveryState.PENDING])]
            wait = max(0.05, min(due) - self.clock()) if due else 60.0
            self._wake.wait(min(wait, 60.0))
            self._wake.clear()

    def run_once(self) -> list[SendResult]:
        """Attempt every due delivery once, one association per destination."""
        due = self.deliveries.in_states([DeliveryState.PENDING], due_before=self.clock())
        by_destination: dict[str, list[Delivery]] = defaultdict(list)
        for delivery in due:
            by_destination[delivery.destination].append(delivery)
        results: list[SendResult] = []
        for name, batch in by_destination.items():
            destination = self._by_name.get(name)
            if destination is None:
                results += [
                    self._record(
                        d, DeliveryState.FAILED, f"destination {name} is no longer configured"
                    )
                    for d in batch
                ]
                continue
            results += self._send(destination, batch)
        return results

    def _send(self, destination: Destination, batch: list[Delivery]) -> list[SendResult]:
        results: list[SendResult] = []
        ready: list[Delivery] = []
        for delivery in batch:
            if (self.root / delivery.relative_path).exists():
                ready.append(delivery)
            else:
                results.append(
                    self._record(
                        delivery, DeliveryState.FAILED, f"file {delivery.relative_path} is missing"
                    )
                )
        if not ready:
            return results
        answered: list[SendResult] = []

        def record(position: int, response: StoreResponse) -> None:
            # Each answer is committed before the next object is sent: an
            # acknowledged object is never sent again, even if the node is
            # killed in the middle of the batch.
            answered.append(self._answer(destination, ready[position], response))

        report = self.scu.send(
            destination,
            [
                Outgoing(
                    d.sop_instance_uid,
                    d.sop_class_uid,
                    d.transfer_syntax_uid,
                    self.root / d.relative_path,
                )
                for d in ready
            ],
            record,
        )
        if report.refused is not None:
            return results + [self._retry(d, f"{destination}: {report.refused}") for d in ready]
        results += answered
        # deliveries after a broken association are retried
        for delivery in ready[len(answered) :]:
            results.append(self._retry(delivery, f"{destination}: association lost"))
        return results

    def _answer(
        self, destination: Destination, delivery: Delivery, response: StoreResponse
    ) -> SendResult:
        if response.status is None:
            return self._retry(delivery, f"{destination}: {response.comment or 'no response'}")
        code = response.status
        if response.category == "Success":
            return self._record(delivery, DeliveryState.DONE, None)
        if response.category == "Warning":
            logger.warning(
                "%s stored %s with warning 0x%04X %s",
                destination,
                delivery.sop_instance_uid,
                code,
                response.comment or "",
            )
            return self._record(delivery, DeliveryState.DONE, f"warning 0x{code:04X}")
        return self._record(
            delivery,
            DeliveryState.FAILED,
            f"{destination} answered 0x{code:04X} {response.comment or response.category}",
        )

    def _retry(self, delivery: Delivery, error: str) -> SendResult:
        now = self.clock()
        if now - delivery.created_at > self.settings.give_up_after_hours * 3600:
            return self._record(
                delivery,
                DeliveryState.FAILED,
                f"gave up after {delivery.attempts + 1} attempts: {error}",
            )
        wait = min(
            self.settings.retry_max_seconds,
            self.settings.retry_initial_seconds * 2**delivery.attempts,
        )
        logger.info(
            "delivery of %s failed (%s); next attempt in %.0f s",
            delivery.sop_instance_uid,
            error,
            wait,
        )
        self.deliveries.finish(
            delivery.id, DeliveryState.PENDING, error=error, next_attempt_at=now + wait, now=now
        )
        return (delivery.id, DeliveryState.PENDING, error)

    def _record(self, delivery: Delivery, state: DeliveryState, error: str | None) -> SendResult:
        if state is DeliveryState.FAILED:
            logger.error(
                "delivery of %s to %s failed: %s",
                delivery.sop_instance_uid,
                delivery.destination,
                error,
            )
        self.deliveries.finish(delivery.id, state, error=error, now=self.clock())
        return (delivery.id, state, error)
