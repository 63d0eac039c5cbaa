"""Event handlers: parse the event, call one domain function, return a status.

Dependencies arrive through pynetdicom's ``(event, handler, [args])``
binding, never from globals (STYLE G2).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

from pydicom.dataset import Dataset
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event

from dicom_node.errors import InvalidDataset, NotAuthorized
from dicom_node.intake.ingest import Ingest
from dicom_node.net.query import parse_identifier, response_identifier
from dicom_node.net.similarity import (
    SimilarityService,
    index_study_of_query,
    similar_study_identifier,
)
from dicom_node.net.status import FindResponse, Status, find_guard, status_dataset, store_guard
from dicom_node.settings import AccessSettings, Permission
from storage.catalog import Catalog

__all__ = ["handle_find", "handle_find_similar", "handle_store"]

logger = logging.getLogger(__name__)


def _authorize(event: Event, access: AccessSettings, permission: Permission) -> None:
    """Raise NotAuthorized unless the calling AE title has ``permission``."""
    calling = event.assoc.requestor.ae_title
    if not access.allows(calling, permission):
        raise NotAuthorized(
            f"calling AE {calling.strip()!r} lacks the {permission.value!r} permission "
            "([access] settings)"
        )


@store_guard
def handle_store(event: Event, ingest: Ingest, access: AccessSettings) -> Dataset:
    """Handle a C-STORE request: store durably, catalog, then acknowledge.

    Parameters
    ----------
    event : pynetdicom.events.Event
        ``EVT_C_STORE``.
    ingest : Ingest
    access : AccessSettings
        The calling AE title needs ``store``.

    Returns
    -------
    pydicom.dataset.Dataset
        The response status (see Status below).

    Status
    ------
    0x0000 Success
        Stored and catalogued (or an identical copy already was).
    0x0124 Refused - Not Authorized
        The calling AE title lacks the ``store`` permission.
    0xB006 Warning - Elements discarded
        Same SOP Instance UID already stored with other content; kept the first.
    0xA700 Refused - Out of resources
        Free disk space under ``storage.min_free_mb``.
    0xA710 / 0xA720 Refused - Out of resources
        The catalog could not record it / the file could not be written.
    0xA900 Error - Dataset does not match SOP class
    0xC000 Error - Cannot understand (undecodable dataset)
    0xC001 / 0xC002 / 0xC003 Error - Cannot understand
        Missing UID / unsafe UID / SOP Instance UID differs from the request.
    0xC0FF Error - Cannot understand
        Unexpected failure (logged with a trace).
    """
    _authorize(event, access, Permission.STORE)
    try:
        dataset = event.dataset
    except Exception as exc:  # noqa: BLE001 - any decoding failure is the peer's data
        raise InvalidDataset("the dataset cannot be decoded") from exc
    request = event.request
    assert isinstance(request, C_STORE)
    ingest.receive(
        dataset,
        event.encoded_dataset(include_meta=True),
        transfer_syntax_uid=str(event.context.transfer_syntax),
        affected_sop_class_uid=str(request.AffectedSOPClassUID),
        affected_sop_instance_uid=str(request.AffectedSOPInstanceUID),
        calling_ae_title=event.assoc.requestor.ae_title,
    )
    return status_dataset(Status.SUCCESS)


@find_guard
def handle_find(event: Event, catalog: Catalog, access: AccessSettings) -> Iterator[FindResponse]:
    """Handle a Study Root C-FIND request over the catalog.

    Parameters
    ----------
    event : pynetdicom.events.Event
        ``EVT_C_FIND``.
    catalog : Catalog
    access : AccessSettings
        The calling AE title needs ``find``.

    Yields
    ------
    tuple
        ``(status, identifier)`` pairs (see Status below).

    Status
    ------
    0xFF00 Pending
        One match per response.
    0xFE00 Cancel
        The peer sent C-CANCEL; matching stopped.
    0x0000 Success
        Matching is complete (sent by pynetdicom after the last pending).
    0x0124 Refused - Not Authorized
        The calling AE title lacks the ``find`` permission.
    0xA900 Failed - Identifier does not match SOP class
        Missing or unknown level, a missing upper-level unique key, a malformed
        date, time or UID, sequence matching.
    0xC300 Failed - Unable to process
        Anything else (logged with a trace).
    """
    _authorize(event, access, Permission.FIND)
    query = parse_identifier(event.identifier)
    for row in catalog.find.match(query.level.value, query.matches):
        if event.is_cancelled:
            yield int(Status.CANCEL), None
            return
        yield int(Status.PENDING), response_identifier(query, row)


@find_guard
def handle_find_similar(event: Event, service: SimilarityService) -> Iterator[FindResponse]:
    """Handle a C-FIND on the similarity AE: the similar-case folder of an index study.

    Parameters
    ----------
    event : pynetdicom.events.Event
        ``EVT_C_FIND``.
    service : SimilarityService

    Yields
    ------
    tuple
        ``(status, identifier)`` pairs.

    Status
    ------
    0xFF00 Pending
        One similar prior study, in rank order.
    0xFE00 Cancel
        C-CANCEL received.
    0x0000 Success
        Complete (no match: an unknown folder or a study without nodules).
    0x0124 Refused - Not Authorized
        The calling AE title lacks the ``similarity`` permission.
    0xA900 Failed - Identifier does not match SOP class
        Not a STUDY-level query.
    0xC310 Failed - Unable to process
        The node has just started and its similarity index is still loading.
    0xC300 Failed - Unable to process
        Anything else (logged with a trace).
    """
    _authorize(event, service.policy.access, Permission.SIMILARITY)
    query = index_study_of_query(event.identifier)
    index_uid, folder, similar = service.answer(query)
    calling = event.assoc.requestor.ae_title
    if index_uid is not None and query.study_instance_uid is None:
        # Asked by folder: the index study's UID is shown as the policy allows.
        index_uid = service.policy.study_uid(
            index_uid, reveal=service.policy.may_see_identity(calling)
        )
    for study in similar:
        if event.is_cancelled:
            yield int(Status.CANCEL), None
            return
        assert folder is not None and index_uid is not None
        yield (
            int(Status.PENDING),
            similar_study_identifier(
                study,
                folder=folder,
                index_study_instance_uid=index_uid,
                return_keys=query.return_keys,
                policy=service.policy,
                calling_ae_title=calling,
            ),
        )
