"""The Application Entity: presentation contexts, security, and the server.

This is the one module that sets pynetdicom's global ``_config`` flags (in
:func:`configure_pynetdicom`): identifier logging off, so patient names, IDs
and birth dates never reach the logs.
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import socketserver
import ssl
from typing import Any

import pydicom.config
import pynetdicom
from pydicom.uid import (
    HTJ2K,
    JPEG2000,
    UID,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import AE, AllStoragePresentationContexts, evt
from pynetdicom import _config as pynetdicom_config
from pynetdicom.events import Event, EventHandlerType
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)
from pynetdicom.transport import ThreadedAssociationServer

from dicom_node.settings import Settings

__all__ = [
    "STORAGE_TRANSFER_SYNTAXES",
    "build_ae",
    "build_similarity_ae",
    "configure_pynetdicom",
    "make_server",
    "tls_context",
]

logger = logging.getLogger(__name__)

#: Transfer syntaxes accepted for storage. Deflated Explicit VR Little Endian
#: is left out on purpose: pynetdicom inflates it without a bound, so a
#: 261 KB instance can take 512 MiB of memory.
STORAGE_TRANSFER_SYNTAXES: tuple[UID, ...] = (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    HTJ2KLossless,
    HTJ2KLosslessRPCL,
    HTJ2K,
    RLELossless,
)


def configure_pynetdicom() -> None:
    """Set pynetdicom's and pydicom's process-wide flags (the only place that does).

    pydicom's reading validation would log invalid values verbatim (a
    malformed Patient Name included); the node stores what it receives and
    validates the UIDs it uses itself, so value validation on reading is off.
    """
    pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
    pynetdicom_config.LOG_REQUEST_IDENTIFIERS = False
    pynetdicom_config.LOG_RESPONSE_IDENTIFIERS = False
    # PACS forward whole studies, private storage SOP classes included
    # (vendor raw data, CSA headers): accept any storage abstract syntax.
    pynetdicom_config.UNRESTRICTED_STORAGE_SERVICE = True


def build_ae(settings: Settings) -> AE:
    """An AE with Verification, Study Root Q/R and every storage SOP class, from settings."""
    configure_pynetdicom()
    ae = AE(ae_title=settings.ae_title)
    ae.add_supported_context(Verification, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    for query_retrieve in (
        StudyRootQueryRetrieveInformationModelFind,
        StudyRootQueryRetrieveInformationModelMove,
        StudyRootQueryRetrieveInformationModelGet,
    ):
        ae.add_supported_context(query_retrieve, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    for context in AllStoragePresentationContexts:
        assert context.abstract_syntax is not None
        # scp_role: a C-GET requestor may be the Storage SCP on its association.
        ae.add_supported_context(
            context.abstract_syntax, list(STORAGE_TRANSFER_SYNTAXES), scu_role=True, scp_role=True
        )
    _apply_network_settings(ae, settings)
    return ae


def build_similarity_ae(settings: Settings) -> AE:
    """The similarity AE: Verification and Study Root C-FIND only."""
    configure_pynetdicom()
    ae = AE(ae_title=settings.similarity.ae_title)
    ae.add_supported_context(Verification, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    ae.add_supported_context(
        StudyRootQueryRetrieveInformationModelFind, [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
    )
    _apply_network_settings(ae, settings)
    return ae


def _apply_network_settings(ae: AE, settings: Settings) -> None:
    net = settings.network
    ae.maximum_associations = net.max_associations
    ae.acse_timeout = net.acse_timeout
    ae.dimse_timeout = net.dimse_timeout
    ae.network_timeout = net.network_timeout
    ae.maximum_pdu_size = net.max_pdu
    # Each AE answers only to its own title (the two share the host, not the port).
    ae.require_called_aet = True
    if settings.security.allowed_calling_ae_titles:
        ae.require_calling_aet = list(settings.security.allowed_calling_ae_titles)


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The server-side TLS context, or None when TLS is off."""
    sec = settings.security
    if not sec.tls_enabled:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(certfile=sec.tls_certificate, keyfile=sec.tls_private_key)
    if sec.tls_ca_certificates:
        context.load_verify_locations(cafile=sec.tls_ca_certificates)
        context.verify_mode = (
            ssl.CERT_REQUIRED if sec.tls_require_client_certificate else ssl.CERT_OPTIONAL
        )
    return context


class _Server(ThreadedAssociationServer):
    """pynetdicom's threaded server with a peer-address allowlist."""

    def __init__(self, *args: Any, allowed_networks: tuple[Any, ...] = (), **kwargs: Any) -> None:
        self._allowed_networks = allowed_networks
        super().__init__(*args, **kwargs)

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        # Accept the TCP connection before the TLS handshake so that a peer
        # outside the allowlist is dropped without one, and a failed handshake
        # closes only that connection.
        assert self.socket is not None
        client_socket, address = self.socket.accept()
        if not self._peer_allowed(address[0]):
            return client_socket, address
        if self.ssl_context:
            client_socket.settimeout(self.ae.acse_timeout)
            client_socket = self.ssl_context.wrap_socket(client_socket, server_side=True)
        return client_socket, address

    def _peer_allowed(self, host: str) -> bool:
        if not self._allowed_networks:
            return True
        address = ipaddress.ip_address(host)
        return any(address in network for network in self._allowed_networks)

    def verify_request(self, request: Any, client_address: Any) -> bool:
        allowed = self._peer_allowed(client_address[0])
        if not allowed:
            logger.warning("connection from %s refused: address not allowed", client_address[0])
        return allowed

    def shutdown(self) -> None:
        # The AE did not make this server (ae.make_server, not start_server),
        # so it is not in the AE's list that pynetdicom's shutdown edits.
        socketserver.TCPServer.shutdown(self)
        for assoc in self.active_associations:
            assoc.abort()
        self.server_close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.warning("connection from %s failed", client_address[0], exc_info=True)


def _log_association(event: Event) -> None:
    assoc = event.assoc
    logger.info(
        "%s: calling AE %r from %s",
        event.event.name.replace("EVT_", "association ").lower(),
        assoc.requestor.ae_title,
        assoc.requestor.address,
    )


ASSOCIATION_LOG_HANDLERS: list[EventHandlerType] = [
    (evt.EVT_ACCEPTED, _log_association),
    (evt.EVT_REJECTED, _log_association),
    (evt.EVT_ABORTED, _log_association),
]


def make_server(
    ae: AE, settings: Settings, handlers: list[EventHandlerType], *, port: int | None = None
) -> ThreadedAssociationServer:
    """Bind the listening socket and return the (not yet serving) server.

    Raises
    ------
    OSError
        The address cannot be bound (port in use, permission).
    """
    networks = tuple(
        ipaddress.ip_network(a, strict=False) for a in settings.security.allowed_peer_addresses
    )
    server: ThreadedAssociationServer = ae.make_server(
        (settings.host, settings.port if port is None else port),
        ssl_context=tls_context(settings),
        evt_handlers=[*ASSOCIATION_LOG_HANDLERS, *handlers],
        server_class=_Server,
        allowed_networks=networks,
    )
    logger.debug("pynetdicom %s server bound", pynetdicom.__version__)
    return server
