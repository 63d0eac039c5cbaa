"""C-MOVE and C-GET SCP (Study Root, all levels) on the main AE: viewers retrieve what it holds.

A Q/R viewer browsing a similar-case folder on the similarity AE gets real
StudyInstanceUIDs; it opens one by retrieving it from the node's main AE.
Who may retrieve is the ``retrieve`` permission of ``[access]`` (closed until
granted, and only with ``identities``), and where C-MOVE may send is a setting:
the Move Destination AE title is looked up in ``retrieve.move_destinations``,
never taken from the request. The files are sent as stored (their own
transfer syntax, with Explicit and Implicit VR Little Endian offered beside
it on a C-MOVE association; pynetdicom sends a dataset read back from the
file); a compressed file goes decompressed to a receiver that did not accept
its transfer syntax. Instances whose pixel data a backfill released (``--index-only``) are
not held any more and are not offered.

Handlers follow pynetdicom's C-MOVE/C-GET protocol: (for C-MOVE) the
destination, then the number of sub-operations, then a ``(status, file)``
pair per instance; :func:`retrieve_guard` turns any exception into a final
failure status.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom.dimse_primitives import C_MOVE
from pynetdicom.events import Event
from pynetdicom.presentation import build_context

from dicom_node.errors import InvalidQuery
from dicom_node.net.query import UNIQUE_KEY, MatchKind, parse_identifier
from dicom_node.net.status import Status, status_dataset
from dicom_node.settings import AccessSettings, Destination, Permission, RetrieveSettings
from storage.catalog import Catalog, Level, StoredFile

__all__ = ["RetrieveService", "handle_get", "handle_move", "retrieve_guard"]

logger = logging.getLogger(__name__)

#: Presentation contexts one C-MOVE association may propose (PS3.8 limit).
MAX_CONTEXTS = 128


class RetrieveService:
    """What the retrieve handlers need: the catalog, the files and the settings.

    Parameters
    ----------
    catalog : Catalog
    instances_root : pathlib.Path
        Root of the instance store.
    settings : RetrieveSettings
        Where C-MOVE may send.
    access : AccessSettings
        Who may retrieve (the ``retrieve`` permission).
    """

    def __init__(
        self,
        catalog: Catalog,
        instances_root: Path,
        settings: RetrieveSettings,
        access: AccessSettings,
    ) -> None:
        self.catalog = catalog
        self.root = Path(instances_root)
        self.settings = settings
        self.access = access

    def may_retrieve(self, calling_ae_title: str) -> bool:
        """True if the calling AE has the ``retrieve`` permission (``[access]``)."""
        return self.access.allows(calling_ae_title, Permission.RETRIEVE)

    def destination(self, ae_title: str) -> Destination | None:
        """The configured address of a Move Destination AE title, or None."""
        wanted = ae_title.strip()
        return next((d for d in self.settings.move_destinations if d.ae_title == wanted), None)

    def files(self, identifier: Dataset) -> list[tuple[StoredFile, Path]]:
        """The held files an identifier asks for, with their paths.

        Raises
        ------
        InvalidQuery
            No level, a missing unique key, wildcards or malformed UIDs.
        """
        query = parse_identifier(identifier)
        by_key = {m.keyword: m for m in query.matches}
        unique = UNIQUE_KEY[query.level]
        match = by_key.get(unique)
        if match is None or match.kind not in (MatchKind.SINGLE, MatchKind.LIST):
            raise InvalidQuery(f"a {query.level.value} retrieve needs {unique} (one or a list)")

        def uids(keyword: str) -> tuple[str, ...]:
            found = by_key.get(keyword)
            return found.values if found is not None else ()

        stored = self.catalog.retrieve.files(
            study_instance_uids=uids("StudyInstanceUID"),
            series_instance_uids=uids("SeriesInstanceUID")
            if query.level is not Level.STUDY
            else (),
            sop_instance_uids=uids("SOPInstanceUID") if query.level is Level.IMAGE else (),
        )
        held = [(f, self.root / f.relative_path) for f in stored]
        return [(f, path) for f, path in held if path.is_file()]


def _contexts(files: list[tuple[StoredFile, Path]]) -> list[Any]:
    """Presentation contexts for sending ``files``: each as stored, or uncompressed."""
    contexts = []
    for sop_class_uid in sorted({f.sop_class_uid for f, _ in files}):
        syntaxes = sorted(
            {f.transfer_syntax_uid for f, _ in files if f.sop_class_uid == sop_class_uid}
        )
        for syntax in syntaxes:
            if syntax not in (ExplicitVRLittleEndian, ImplicitVRLittleEndian):
                contexts.append(build_context(sop_class_uid, [syntax]))
        contexts.append(
            build_context(sop_class_uid, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        )
    return contexts[:MAX_CONTEXTS]


G = TypeVar("G", bound=Callable[..., Iterator[Any]])


def retrieve_guard(func: G) -> G:
    """Turn any exception of a retrieve handler into a final failure status, logged.

    InvalidQuery becomes 0xA900 with its message; anything else 0xC5FF,
    logged with a trace. pynetdicom reads a C-MOVE handler's destination
    before any status: an exception before it is left to pynetdicom, which
    answers 0xC514 (unable to process); for C-GET the guard yields the
    sub-operation count (1) and then the status.
    """

    @functools.wraps(func)
    def wrapper(event: Event, *args: Any, **kwargs: Any) -> Iterator[Any]:
        started = False
        try:
            for item in func(event, *args, **kwargs):
                started = True
                yield item
        except Exception as exc:  # noqa: BLE001 - the one mapping point for retrieves
            if isinstance(exc, InvalidQuery):
                status = Status.RETRIEVE_IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS
                logger.warning("retrieve refused: %s", exc)
            else:
                status = Status.RETRIEVE_UNABLE_TO_PROCESS
                logger.exception("retrieve failed unexpectedly")
            if not started:
                if isinstance(event.request, C_MOVE):
                    raise
                yield 1
            yield status_dataset(status, str(exc)), None

    return wrapper  # type: ignore[return-value]


Accepted = Callable[[], dict[str, set[str]]]
"""Transfer syntaxes the receiving side accepted, per storage SOP class (read lazily: for
C-MOVE the sub-operation association exists only once the first instance is asked for)."""


def _accepted(assoc: Any) -> dict[str, set[str]]:
    """Per SOP class, the transfer syntaxes of the contexts where we send (we are the SCU)."""
    accepted: dict[str, set[str]] = {}
    for context in assoc.accepted_contexts:
        if context.as_scu and context.transfer_syntax:
            accepted.setdefault(str(context.abstract_syntax), set()).add(
                str(context.transfer_syntax[0])
            )
    return accepted


def _move_association(event: Event, destination: Destination) -> Any:
    """The association pynetdicom opened to the Move Destination for this C-MOVE."""
    for assoc in event.assoc.ae.active_associations:
        if (
            assoc.is_requestor
            and assoc.is_established
            and assoc.acceptor.ae_title == destination.ae_title
            and assoc.acceptor.port == destination.port
        ):
            return assoc
    return None


def _send(event: Event, files: list[tuple[StoredFile, Path]], accepted: Accepted) -> Iterator[Any]:
    """The sub-operation count, then each file read back (one at a time).

    A file goes as stored when the receiver accepted its transfer syntax; a
    compressed one it did not accept is decompressed to Explicit VR Little
    Endian (viewers that take JPEG-LS are not the rule).
    """
    yield len(files)
    syntaxes: dict[str, set[str]] | None = None
    for stored, path in files:
        if event.is_cancelled:
            yield int(Status.CANCEL), None
            return
        with path.open("rb") as handle:
            dataset = pydicom.dcmread(handle)
        if UID(stored.transfer_syntax_uid).is_compressed:
            syntaxes = accepted() if syntaxes is None else syntaxes
            if stored.transfer_syntax_uid not in syntaxes.get(stored.sop_class_uid, set()):
                dataset.decompress(generate_instance_uid=False)  # same instance
        yield int(Status.PENDING), dataset


@retrieve_guard
def handle_get(event: Event, service: RetrieveService) -> Iterator[Any]:
    """Handle a Study Root C-GET: send the held instances back on this association.

    Parameters
    ----------
    event : pynetdicom.events.Event
        ``EVT_C_GET``.
    service : RetrieveService

    Yields
    ------
    int, then tuples
        The number of sub-operations, then ``(status, file path)`` pairs.

    Status
    ------
    0xFF00 Pending
        A sub-operation (C-STORE of one instance) follows.
    0x0000 Success / 0xB000 Warning
        All sent / some sub-operations failed (sent by pynetdicom).
    0xFE00 Cancel
        C-CANCEL received.
    0x0124 Refused - Not Authorized
        The calling AE lacks the ``retrieve`` permission (``[access]``).
    0xA900 Failed - Identifier does not match SOP class
        No level, a missing unique key, wildcards, malformed UIDs.
    0xC5FF Failed - Unable to process
        Anything else (logged with a trace).
    """
    calling = event.assoc.requestor.ae_title
    if not service.may_retrieve(calling):
        logger.warning("C-GET from %r refused: no 'retrieve' permission ([access])", calling)
        yield 1
        yield status_dataset(Status.NOT_AUTHORIZED, f"{calling} may not retrieve"), None
        return
    files = service.files(event.identifier)
    logger.info("C-GET from %r: %d instances", calling, len(files))
    yield from _send(event, files, lambda: _accepted(event.assoc))


@retrieve_guard
def handle_move(event: Event, service: RetrieveService) -> Iterator[Any]:
    """Handle a Study Root C-MOVE: send the held instances to a configured destination.

    Parameters
    ----------
    event : pynetdicom.events.Event
        ``EVT_C_MOVE``.
    service : RetrieveService

    Yields
    ------
    tuple, int, then tuples
        The destination ``(host, port, {"contexts": ...})`` (or ``(None, None)``),
        the number of sub-operations, then ``(status, file path)`` pairs.

    Status
    ------
    0xFF00 Pending
        Sub-operations are continuing.
    0x0000 Success / 0xB000 Warning
        All sent / some sub-operations failed (sent by pynetdicom).
    0xFE00 Cancel
        C-CANCEL received.
    0xA801 Failed - Move destination unknown
        The Move Destination is not in ``retrieve.move_destinations``, or the
        calling AE lacks the ``retrieve`` permission (logged as such).
    0xA900 Failed - Identifier does not match SOP class
    0xC5FF Failed - Unable to process
    """
    request = event.request
    assert isinstance(request, C_MOVE)
    calling = event.assoc.requestor.ae_title
    target = str(request.MoveDestination or "").strip()
    destination = service.destination(target)
    if not service.may_retrieve(calling):
        logger.warning("C-MOVE from %r refused: no 'retrieve' permission ([access])", calling)
        yield None, None
        return
    if destination is None:
        logger.warning(
            "C-MOVE from %r to %r refused: not in retrieve.move_destinations", calling, target
        )
        yield None, None
        return
    files = service.files(event.identifier)
    logger.info("C-MOVE from %r: %d instances to %s", calling, len(files), destination)
    yield destination.host, destination.port, {"contexts": _contexts(files) or None}

    def accepted() -> dict[str, set[str]]:
        assoc = _move_association(event, destination)
        return {} if assoc is None else _accepted(assoc)

    yield from _send(event, files, accepted)
