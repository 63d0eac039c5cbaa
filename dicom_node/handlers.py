"""Event handlers: parse the event, call one domain function, return a status.

Dependencies arrive through pynetdicom's ``(event, handler, [args])``
binding, never from globals (STYLE G2).
"""

from __future__ import annotations

import logging

from pydicom.dataset import Dataset
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.events import Event

from dicom_node.errors import InvalidDataset
from dicom_node.ingest import Ingest
from dicom_node.status import Status, status_dataset, store_guard

__all__ = ["handle_store"]

logger = logging.getLogger(__name__)


@store_guard
def handle_store(event: Event, ingest: Ingest) -> Dataset:
    """Handle a C-STORE request: store durably, catalog, then acknowledge.

    Parameters
    ----------
    event : pynetdicom.events.Event
        ``EVT_C_STORE``.
    ingest : Ingest

    Returns
    -------
    pydicom.dataset.Dataset
        The response status (see Status below).

    Status
    ------
    0x0000 Success
        Stored and catalogued (or an identical copy already was).
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
