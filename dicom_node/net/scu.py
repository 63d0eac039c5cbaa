"""The one C-STORE SCU: sends stored files to a destination over one association.

Every result is checked as STYLE G6 asks: the association is established (or
the reason it is not is returned), an empty status Dataset means no response
(timeout, abort, invalid reply), the status category comes from pynetdicom's
tables, and the association is released (or aborted) in ``finally``. What to
do about each answer (retry, give up) is the caller's policy
(:mod:`dicom_node.results.outbox`); tests give the outbox a fake with the
same :class:`StoreSCU` shape.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE
from pynetdicom.association import Association
from pynetdicom.status import code_to_category

from dicom_node.settings import Destination

__all__ = [
    "OnResponse",
    "Outgoing",
    "PynetdicomStoreSCU",
    "SendReport",
    "StoreResponse",
    "StoreSCU",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Outgoing:
    """One stored object to send."""

    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    path: Path


@dataclass(frozen=True)
class StoreResponse:
    """The destination's answer to one C-STORE request."""

    status: int | None
    """The status code, or None when no response came (timeout, abort, invalid reply)."""
    category: str | None
    """``Success``, ``Warning``, ``Failure`` ... of ``status`` (PS3.7 Annex C); None with it."""
    comment: str | None = None
    """The Error Comment (0000,0902), if the destination sent one."""


@dataclass(frozen=True)
class SendReport:
    """What happened to one batch sent to one destination."""

    refused: str | None
    """Why no association was established; None when it was."""
    responses: tuple[StoreResponse, ...]
    """One per object, in order; shorter than the batch when the association broke."""


#: Called with (position in the batch, answer) as soon as each answer arrives.
OnResponse = Callable[[int, StoreResponse], None]


class StoreSCU(Protocol):
    """Sends a batch of stored objects to one destination."""

    def send(
        self,
        destination: Destination,
        objects: Sequence[Outgoing],
        on_response: OnResponse | None = None,
    ) -> SendReport:
        """Send ``objects`` over one association and report each answer.

        ``on_response`` is called for each answer before the next object is
        sent, so the caller can record an acknowledgement at once (a node
        killed mid-batch then resends only what was not acknowledged).
        """
        ...


def _established(assoc: Association) -> bool:
    """Read the association state afresh (it changes while we send)."""
    return bool(assoc.is_established)


class PynetdicomStoreSCU:
    """:class:`StoreSCU` with pynetdicom.

    Parameters
    ----------
    calling_ae_title : str
        Our AE title when sending.
    timeout : float
        ACSE, DIMSE and network timeout in seconds.
    """

    def __init__(self, calling_ae_title: str, *, timeout: float = 30.0) -> None:
        self.calling_ae_title = calling_ae_title
        self.timeout = timeout

    def send(
        self,
        destination: Destination,
        objects: Sequence[Outgoing],
        on_response: OnResponse | None = None,
    ) -> SendReport:
        """Send ``objects`` over one association (see the module docstring)."""
        ae = AE(ae_title=self.calling_ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout
        syntaxes: dict[str, set[str]] = defaultdict(set)
        for item in objects:
            syntaxes[item.sop_class_uid].add(item.transfer_syntax_uid)
        for sop_class_uid, found in syntaxes.items():
            ae.add_requested_context(
                sop_class_uid, sorted(found | {ExplicitVRLittleEndian, ImplicitVRLittleEndian})
            )
        assoc = ae.associate(destination.host, destination.port, ae_title=destination.ae_title)
        if not assoc.is_established:
            return SendReport(
                "association rejected"
                if assoc.is_rejected
                else "no association (destination down?)",
                (),
            )
        responses: list[StoreResponse] = []
        try:
            for position, item in enumerate(objects):
                status = assoc.send_c_store(item.path)
                if not status:
                    response = StoreResponse(None, None, "no response (timeout or abort)")
                else:
                    code = int(status.Status)
                    response = StoreResponse(
                        code, code_to_category(code), str(status.get("ErrorComment", "")) or None
                    )
                responses.append(response)
                if on_response is not None:
                    on_response(position, response)
                if not status and not _established(assoc):
                    break
        finally:
            if _established(assoc):
                assoc.release()
            else:
                assoc.abort()
        return SendReport(None, tuple(responses))
