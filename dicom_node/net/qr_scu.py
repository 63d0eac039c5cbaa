"""The Query/Retrieve SCU: C-ECHO, C-FIND, C-GET and C-MOVE towards a PACS (Study Root).

``dicom-node backfill --pacs`` asks an archive for its studies one day at a
time, lists the instances of their CT series and retrieves the ones the
node does not hold, either by C-GET (the instances come back on the same
association, to a callback) or by C-MOVE to the node's own AE. Every answer is
checked as STYLE G6 asks: an association that is not established is
reported with its reason, an empty status Dataset is "no response", the
association is released (or aborted) in ``finally``. What to do about an
answer is the caller's policy (:mod:`dicom_node.backfill`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, build_role, evt
from pynetdicom.association import Association
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)
from pynetdicom.status import code_to_category

from dicom_node.net.scp import STORAGE_TRANSFER_SYNTAXES, configure_pynetdicom
from dicom_node.net.status import Status, status_dataset, store_status_for
from dicom_node.settings import Destination

__all__ = ["FindAnswer", "InstanceHandler", "QueryRetrieveSCU", "RetrieveReport"]

logger = logging.getLogger(__name__)

#: Called with each instance a C-GET brings back: ``(Part 10 bytes, transfer
#: syntax UID, SOP Class UID, SOP Instance UID)``. It stores the instance
#: durably or raises; its exception becomes the sub-operation's failure status.
InstanceHandler = Callable[[bytes, str, str, str], None]

_QR_SYNTAXES = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]


@dataclass(frozen=True)
class FindAnswer:
    """The matches of one C-FIND and how it ended."""

    matches: tuple[Dataset, ...]
    status: int | None
    """Final status; None when no association or no final response came."""
    refused: str | None = None
    """Why no association was established; None when it was."""

    @property
    def complete(self) -> bool:
        """True when the peer said Success: every match was sent.

        An archive that stops at a limit (Orthanc's ``LimitFindResults``)
        ends with Cancel (0xFE00) or a failure instead.
        """
        return self.status == 0x0000


@dataclass(frozen=True)
class RetrieveReport:
    """How one C-GET or C-MOVE ended."""

    status: int | None
    """Final status; None when no association or no final response came."""
    completed: int = 0
    failed: int = 0
    warning: int = 0
    refused: str | None = None
    """Why no association was established; None when it was."""
    failed_sop_instance_uids: tuple[str, ...] = field(default_factory=tuple)

    @property
    def category(self) -> str | None:
        """``Success``, ``Warning``, ``Failure`` ... of the final status."""
        return None if self.status is None else code_to_category(self.status)


def _count(final: Dataset, keyword: str) -> int:
    return int(final.get(keyword, 0) or 0)


def _failed_uids(identifier: Dataset | None) -> tuple[str, ...]:
    if identifier is None or "FailedSOPInstanceUIDList" not in identifier:
        return ()
    value = identifier.FailedSOPInstanceUIDList
    return tuple(str(v) for v in (value if isinstance(value, list | tuple) else [value]) if v)


class QueryRetrieveSCU:
    """Study Root Query/Retrieve as SCU, one association per call.

    Parameters
    ----------
    calling_ae_title : str
        Our AE title towards the peer.
    timeout : float
        ACSE, DIMSE and network timeout in seconds.
    """

    def __init__(self, calling_ae_title: str, *, timeout: float = 60.0) -> None:
        self.calling_ae_title = calling_ae_title
        self.timeout = timeout

    def _ae(self) -> AE:
        configure_pynetdicom()
        ae = AE(ae_title=self.calling_ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout
        return ae

    @staticmethod
    def _refusal(assoc: Association) -> str:
        return "association rejected" if assoc.is_rejected else "no association (peer down?)"

    @staticmethod
    def _close(assoc: Association) -> None:
        if assoc.is_established:
            assoc.release()
        else:
            assoc.abort()

    def echo(self, peer: Destination) -> bool:
        """True when ``peer`` answers C-ECHO with Success."""
        ae = self._ae()
        ae.add_requested_context(Verification)
        assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title)
        if not assoc.is_established:
            return False
        try:
            status = assoc.send_c_echo()
            return bool(status) and int(status.Status) == Status.SUCCESS
        finally:
            self._close(assoc)

    def find(self, peer: Destination, identifier: Dataset) -> FindAnswer:
        """Study Root C-FIND; every pending match, then the final status."""
        ae = self._ae()
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelFind, _QR_SYNTAXES)
        assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title)
        if not assoc.is_established:
            return FindAnswer((), None, self._refusal(assoc))
        matches: list[Dataset] = []
        final: int | None = None
        try:
            for status, match in assoc.send_c_find(
                identifier, StudyRootQueryRetrieveInformationModelFind
            ):
                if not status:
                    break  # no response: timeout, abort or invalid reply
                code = int(status.Status)
                if code in (0xFF00, 0xFF01):
                    if match is not None:
                        matches.append(match)
                    continue
                final = code
        finally:
            self._close(assoc)
        return FindAnswer(tuple(matches), final)

    def get(
        self,
        peer: Destination,
        identifier: Dataset,
        sop_class_uids: Sequence[str],
        on_instance: InstanceHandler,
    ) -> RetrieveReport:
        """Study Root C-GET: the peer sends the instances back on this association.

        Parameters
        ----------
        peer : Destination
        identifier : pydicom.dataset.Dataset
            SERIES or IMAGE level (with a list of SOP Instance UIDs).
        sop_class_uids : sequence of str
            Storage SOP classes of the instances (one presentation context per
            class and transfer syntax, so the peer sends each as it holds it).
        on_instance : InstanceHandler
        """
        ae = self._ae()
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelGet, _QR_SYNTAXES)
        roles: list[Any] = []
        for sop_class_uid in dict.fromkeys(sop_class_uids):
            for syntax in STORAGE_TRANSFER_SYNTAXES:
                ae.add_requested_context(sop_class_uid, [syntax])
            roles.append(build_role(sop_class_uid, scp_role=True))
        if len(ae.requested_contexts) > 128:
            raise ValueError("too many SOP classes for one C-GET association")

        def _store(event: Event) -> Dataset:
            try:
                request = event.request
                assert isinstance(request, C_STORE)
                on_instance(
                    event.encoded_dataset(include_meta=True),
                    str(event.context.transfer_syntax),
                    str(request.AffectedSOPClassUID),
                    str(request.AffectedSOPInstanceUID),
                )
            except Exception as exc:  # noqa: BLE001 - mapped to the sub-operation's status
                status = store_status_for(exc)
                logger.warning("C-GET sub-operation refused 0x%04X: %s", int(status), exc)
                return status_dataset(status, str(exc))
            return status_dataset(Status.SUCCESS)

        assoc = ae.associate(
            peer.host,
            peer.port,
            ae_title=peer.ae_title,
            ext_neg=roles,
            evt_handlers=[(evt.EVT_C_STORE, _store)],
        )
        if not assoc.is_established:
            return RetrieveReport(None, refused=self._refusal(assoc))
        try:
            return self._retrieve(
                assoc.send_c_get(identifier, StudyRootQueryRetrieveInformationModelGet)
            )
        finally:
            self._close(assoc)

    def move(self, peer: Destination, identifier: Dataset, destination_ae: str) -> RetrieveReport:
        """Study Root C-MOVE of the identified instances to ``destination_ae``.

        The peer must know ``destination_ae`` (its address) in its own configuration.
        """
        ae = self._ae()
        ae.add_requested_context(StudyRootQueryRetrieveInformationModelMove, _QR_SYNTAXES)
        assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title)
        if not assoc.is_established:
            return RetrieveReport(None, refused=self._refusal(assoc))
        try:
            return self._retrieve(
                assoc.send_c_move(
                    identifier, destination_ae, StudyRootQueryRetrieveInformationModelMove
                )
            )
        finally:
            self._close(assoc)

    @staticmethod
    def _retrieve(responses: object) -> RetrieveReport:
        final: Dataset | None = None
        identifier: Dataset | None = None
        for status, response_identifier in responses:  # type: ignore[attr-defined]
            if not status:
                break  # no response
            if int(status.Status) in (0xFF00, 0xFF01):
                continue
            final, identifier = status, response_identifier
        if final is None:
            return RetrieveReport(None)
        return RetrieveReport(
            int(final.Status),
            completed=_count(final, "NumberOfCompletedSuboperations"),
            failed=_count(final, "NumberOfFailedSuboperations"),
            warning=_count(final, "NumberOfWarningSuboperations"),
            failed_sop_instance_uids=_failed_uids(identifier),
        )
