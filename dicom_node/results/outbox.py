"""The outbox: durable delivery of our results to DICOM destinations by C-STORE.

Rows in the catalog's ``outbox`` table are the truth: an object is queued
once per destination (a unique key), survives restarts, and is retried with
exponential backoff until the destination answers or ``give_up_after_hours``
passes. Every SCU result is checked three ways (STYLE G6): association
established, an empty status (timeout, abort: retry), the status category
(Failure: no retry, reason kept; Warning: done, logged).

Delivery is at-least-once: if the node dies after the destination answered
Success but before the row is marked done, the object is sent again after the
restart; a PACS stores an identical SOP Instance again without change.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

from pydicom import dcmread
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.status import code_to_category

from dicom_node.settings import Destination, OutboxSettings
from storage.catalog import Catalog, Delivery, DeliveryState

__all__ = ["Outbox", "SendResult"]

logger = logging.getLogger(__name__)

#: (delivery id, outcome, error) for each attempted delivery
SendResult = tuple[int, DeliveryState, str | None]


def _established(assoc: Association) -> bool:
    """Read the association state afresh (it changes while we send)."""
    return bool(assoc.is_established)


class Outbox:
    """Queue results for the configured destinations and deliver them.

    Parameters
    ----------
    catalog : Catalog
    instances_root : pathlib.Path
        Root of the instance store; outbox rows hold paths relative to it.
    settings : OutboxSettings
    calling_ae_title : str
        Our AE title when sending.
    clock : callable, optional
        Returns the current time in seconds (tests drive the backoff with it).
    """

    def __init__(
        self,
        catalog: Catalog,
        instances_root: Path,
        settings: OutboxSettings,
        calling_ae_title: str,
        *,
        clock: Callable[[], float] = time.time,
        timeout: float = 30.0,
    ) -> None:
        self.catalog = catalog
        self.root = Path(instances_root)
        self.settings = settings
        self.destinations = {str(d): d for d in settings.parsed_destinations()}
        self.calling_ae_title = settings.calling_ae_title or calling_ae_title
        self.clock = clock
        self.timeout = timeout
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="outbox", daemon=True)

    def enqueue(self, sop_instance_uid: str, sop_class_uid: str, relative_path: str) -> int:
        """Queue a stored object for every destination; return how many rows were new."""
        added = sum(
            self.catalog.enqueue_delivery(
                name, sop_instance_uid, sop_class_uid, relative_path, now=self.clock()
            )
            for name in self.destinations
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
            due = [d.next_attempt_at for d in self.catalog.deliveries([DeliveryState.PENDING])]
            wait = max(0.05, min(due) - self.clock()) if due else 60.0
            self._wake.wait(min(wait, 60.0))
            self._wake.clear()

    def run_once(self) -> list[SendResult]:
        """Attempt every due delivery once, one association per destination."""
        now = self.clock()
        due = self.catalog.deliveries([DeliveryState.PENDING], due_before=now)
        by_destination: dict[str, list[Delivery]] = defaultdict(list)
        for delivery in due:
            by_destination[delivery.destination].append(delivery)
        results: list[SendResult] = []
        for name, deliveries in by_destination.items():
            destination = self.destinations.get(name)
            if destination is None:
                for delivery in deliveries:
                    results.append(
                        self._record(
                            delivery,
                            DeliveryState.FAILED,
                            f"destination {name} is no longer configured",
                        )
                    )
                continue
            results += self._send(destination, deliveries)
        return results

    def _send(self, destination: Destination, deliveries: list[Delivery]) -> list[SendResult]:
        ae = AE(ae_title=self.calling_ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout
        syntaxes: dict[str, set[str]] = defaultdict(set)
        for delivery in deliveries:
            path = self.root / delivery.relative_path
            try:
                syntax = dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID
            except (OSError, AttributeError) as exc:
                logger.error("outbox object %s is unreadable: %s", delivery.sop_instance_uid, exc)
                continue
            syntaxes[delivery.sop_class_uid].add(str(syntax))
        for sop_class_uid, found in syntaxes.items():
            ae.add_requested_context(
                sop_class_uid, sorted(found | {ExplicitVRLittleEndian, ImplicitVRLittleEndian})
            )
        results: list[SendResult] = []
        assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
        if not assoc.is_established:
            reason = (
                "association rejected"
                if assoc.is_rejected
                else "no association (destination down?)"
            )
            return [self._retry(d, f"{destination}: {reason}") for d in deliveries]
        try:
            for delivery in deliveries:
                path = self.root / delivery.relative_path
                if not path.exists():
                    results.append(
                        self._record(
                            delivery,
                            DeliveryState.FAILED,
                            f"file {delivery.relative_path} is missing",
                        )
                    )
                    continue
                status = assoc.send_c_store(path)
                if not status:
                    results.append(
                        self._retry(delivery, f"{destination}: no response (timeout or abort)")
                    )
                    if not _established(assoc):
                        break
                    continue
                code = int(status.Status)
                category = code_to_category(code)
                comment = str(status.get("ErrorComment", "")) or None
                if category == "Success":
                    results.append(self._record(delivery, DeliveryState.DONE, None))
                elif category == "Warning":
                    logger.warning(
                        "%s stored %s with warning 0x%04X %s",
                        destination,
                        delivery.sop_instance_uid,
                        code,
                        comment or "",
                    )
                    results.append(
                        self._record(delivery, DeliveryState.DONE, f"warning 0x{code:04X}")
                    )
                else:
                    results.append(
                        self._record(
                            delivery,
                            DeliveryState.FAILED,
                            f"{destination} answered 0x{code:04X} {comment or category}",
                        )
                    )
            # deliveries after a broken association are retried
            for delivery in deliveries[len(results) :]:
                results.append(self._retry(delivery, f"{destination}: association lost"))
        finally:
            if _established(assoc):
                assoc.release()
            else:
                assoc.abort()
        return results

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
        self.catalog.finish_delivery(
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
        self.catalog.finish_delivery(delivery.id, state, error=error, now=self.clock())
        return (delivery.id, state, error)
