"""Who gets an association, and the per-request permission check.

:class:`AssociationGate` handles ``EVT_REQUESTED``: before pynetdicom
negotiates, it reads the calling AE title and the proposed presentation
contexts of the A-ASSOCIATE-RQ and, with DICOM TLS, the peer's verified
client certificate, and answers with A-ASSOCIATE-RJ when

- the certificate's subject is not one bound to the calling AE title
  (:meth:`AccessSettings.certificate_allows`, the one TLS identity check);
- the calling AE title may use none of the services it proposes on this AE
  (rejected-permanent, service-user, *calling AE title not recognised*: what
  dcmtk and every PACS log show an administrator);
- the AE already has ``network.max_associations`` established associations
  (rejected-transient, local-limit-exceeded). Connections that have not sent
  an A-ASSOCIATE-RQ yet do not count: idle sockets cannot lock senders out.

Within an accepted association each request is checked again by its handler
with :meth:`AccessSettings.allows` (a store-only AE that also proposes C-FIND
gets 0x0124 Refused: Not Authorized for the C-FIND).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Iterable
from enum import Enum

from pynetdicom.events import Event
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CompositeInstanceRetrieveWithoutBulkDataGet,
    CompositeInstanceRootRetrieveGet,
    CompositeInstanceRootRetrieveMove,
    PatientRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    PatientStudyOnlyQueryRetrieveInformationModelFind,
    PatientStudyOnlyQueryRetrieveInformationModelGet,
    PatientStudyOnlyQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)

from dicom_node.settings import AccessSettings, Permission
from dicom_node.settings.access import Subject, certificate_subject, subject_text

__all__ = ["AssociationGate", "Service", "peer_certificate_subject", "required_permission"]

logger = logging.getLogger(__name__)

_FIND = {
    StudyRootQueryRetrieveInformationModelFind,
    PatientRootQueryRetrieveInformationModelFind,
    PatientStudyOnlyQueryRetrieveInformationModelFind,
}
_RETRIEVE = {
    StudyRootQueryRetrieveInformationModelMove,
    StudyRootQueryRetrieveInformationModelGet,
    PatientRootQueryRetrieveInformationModelMove,
    PatientRootQueryRetrieveInformationModelGet,
    PatientStudyOnlyQueryRetrieveInformationModelMove,
    PatientStudyOnlyQueryRetrieveInformationModelGet,
    CompositeInstanceRootRetrieveMove,
    CompositeInstanceRootRetrieveGet,
    CompositeInstanceRetrieveWithoutBulkDataGet,
}

# A-ASSOCIATE-RJ (result, source, reason), PS3.8 9.3.4
_CALLING_AE_NOT_RECOGNISED = (0x01, 0x01, 0x03)
_LOCAL_LIMIT_EXCEEDED = (0x02, 0x03, 0x02)


class Service(Enum):
    """Which of the node's AEs an association is for."""

    MAIN = "main"
    """Verification, Storage, Study Root C-FIND (and retrieval when offered)."""
    SIMILARITY = "similarity"
    """Verification and the similar-case C-FIND."""


def required_permission(abstract_syntax: str, service: Service) -> Permission | None:
    """The permission a proposed abstract syntax needs on ``service`` (None: Verification)."""
    if abstract_syntax == Verification:
        return None
    if abstract_syntax in _FIND:
        return Permission.SIMILARITY if service is Service.SIMILARITY else Permission.FIND
    if abstract_syntax in _RETRIEVE:
        return Permission.RETRIEVE
    return Permission.STORE  # the main AE accepts any storage abstract syntax


#: What each AE offers: a caller with none of these has no business there.
_OFFERED = {
    Service.MAIN: frozenset({Permission.STORE, Permission.FIND, Permission.RETRIEVE}),
    Service.SIMILARITY: frozenset({Permission.SIMILARITY}),
}


def peer_certificate_subject(event: Event) -> Subject | None:
    """The verified client certificate subject of the association's peer, if any."""
    sock = getattr(event.assoc.dul.socket, "socket", None)
    if not isinstance(sock, ssl.SSLSocket):
        return None
    try:
        return certificate_subject(sock.getpeercert())
    except (ValueError, OSError):  # handshake not complete or connection gone
        return None


class AssociationGate:
    """The ``EVT_REQUESTED`` handler deciding who gets an association (module docstring).

    Parameters
    ----------
    access : AccessSettings
    service : Service
        The AE this gate stands before.
    max_associations : int
        Established associations this AE serves at once.
    """

    def __init__(self, access: AccessSettings, service: Service, max_associations: int) -> None:
        self.access = access
        self.service = service
        self.max_associations = max_associations

    def __call__(self, event: Event) -> None:
        """Reject the association request of ``event`` if it may not be served."""
        assoc = event.assoc
        request = assoc.requestor.primitive
        calling = str(getattr(request, "calling_ae_title", "") or "").strip()
        address = assoc.requestor.address
        if self.access.rule(calling) is not None and not self.access.certificate_allows(
            calling, peer_certificate_subject(event)
        ):
            subject = peer_certificate_subject(event)
            logger.warning(
                "association from %s refused: calling AE %r is bound to other client "
                "certificates (presented %s; access.ae_titles.%s.tls_subjects)",
                address,
                calling,
                subject_text(subject) if subject else "none",
                calling,
            )
            self._reject(event, _CALLING_AE_NOT_RECOGNISED)
            return
        proposed = [
            str(context.abstract_syntax)
            for context in (getattr(request, "presentation_context_definition_list", None) or [])
        ]
        if not self._may_use(calling, proposed):
            logger.warning(
                "association from %s refused: calling AE %r has no permission for %s on this "
                "AE (it has: %s; see [access] in the settings)",
                address,
                calling,
                self._wanted(proposed),
                ", ".join(sorted(p.value for p in self.access.permissions_of(calling))) or "none",
            )
            self._reject(event, _CALLING_AE_NOT_RECOGNISED)
            return
        established = sum(
            1
            for other in assoc.ae.active_associations
            if other.is_acceptor and other.is_established
        )
        if established >= self.max_associations:
            logger.warning(
                "association from %s (calling AE %r) refused: %d associations already open "
                "(network.max_associations)",
                address,
                calling,
                established,
            )
            self._reject(event, _LOCAL_LIMIT_EXCEEDED)

    def _may_use(self, calling: str, proposed: Iterable[str]) -> bool:
        permissions = self.access.permissions_of(calling)
        wanted = {required_permission(uid, self.service) for uid in proposed}
        wanted.discard(None)
        if not wanted:  # Verification only: any permission on this AE will do
            return bool(permissions & _OFFERED[self.service])
        return bool(permissions & wanted)

    def _wanted(self, proposed: Iterable[str]) -> str:
        wanted = {required_permission(uid, self.service) for uid in proposed}
        names = sorted(p.value for p in wanted if p is not None)
        return "/".join(names) if names else "verification"

    @staticmethod
    def _reject(event: Event, reason: tuple[int, int, int]) -> None:
        # pynetdicom lets an EVT_REQUESTED handler answer A-ASSOCIATE-RJ itself;
        # it then skips negotiation and closes the connection.
        event.assoc.acse.send_reject(*reason)
        event.assoc.kill()
