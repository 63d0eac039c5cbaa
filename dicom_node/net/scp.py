"""The Application Entity: presentation contexts, security, and the server.

This is the one module that sets pynetdicom's global ``_config`` flags (in
:func:`configure_pynetdicom`): identifier logging off, so patient names, IDs
and birth dates never reach the logs; any storage SOP class accepted, but only
in :data:`STORAGE_TRANSFER_SYNTAXES` (:func:`negotiate_storage`).
"""

from __future__ import annotations

import ipaddress
import logging
import socket
import socketserver
import ssl
import threading
import time
from typing import Any

import pydicom.config
import pynetdicom
import pynetdicom.acse
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
from pynetdicom.presentation import PresentationContext, negotiate_unrestricted
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    StudyRootQueryRetrieveInformationModelFind,
    StudyRootQueryRetrieveInformationModelGet,
    StudyRootQueryRetrieveInformationModelMove,
    Verification,
)
from pynetdicom.transport import AssociationSocket, RequestHandler, ThreadedAssociationServer

from dicom_node.errors import ListenError
from dicom_node.net.access import AssociationGate, Service
from dicom_node.settings import Settings

__all__ = [
    "MAX_ASSOCIATE_PDU",
    "MAX_CONNECTIONS",
    "STORAGE_TRANSFER_SYNTAXES",
    "NodeServer",
    "build_ae",
    "build_similarity_ae",
    "configure_pynetdicom",
    "make_server",
    "negotiate_storage",
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
    # (vendor raw data, CSA headers): accept any storage abstract syntax ...
    pynetdicom_config.UNRESTRICTED_STORAGE_SERVICE = True
    # ... but pynetdicom's unrestricted negotiation also takes any transfer
    # syntax (the first proposed), Deflated included: ours keeps to our list.
    pynetdicom.acse.negotiate_unrestricted = negotiate_storage  # type: ignore[attr-defined]


#: A-ASSOCIATE-AC presentation context result: transfer syntaxes not supported
#: (provider rejection), PS3.8 9.3.3.2.
_TRANSFER_SYNTAXES_NOT_SUPPORTED = 0x04


def negotiate_storage(
    rq_contexts: list[PresentationContext],
    ac_contexts: list[PresentationContext],
    roles: Any = None,
) -> tuple[list[PresentationContext], list[Any]]:
    """pynetdicom's unrestricted negotiation, held to :data:`STORAGE_TRANSFER_SYNTAXES`.

    pynetdicom accepts every storage (or private, or unknown) presentation
    context with the first transfer syntax proposed, whatever it is. Here an
    accepted context whose syntax is not ours takes the first proposed syntax
    that is, or is rejected as "transfer syntaxes not supported" when none is:
    a Deflated Explicit VR Little Endian dataset (which pynetdicom would inflate
    without a bound) never reaches the node. Non-storage contexts are negotiated
    against the AE's supported contexts as before.
    """
    result, reply_roles = negotiate_unrestricted(rq_contexts, ac_contexts, roles)
    proposed = {cx.context_id: cx.transfer_syntax for cx in rq_contexts}
    for cx in result:
        if cx.result != 0x00 or cx.transfer_syntax[0] in STORAGE_TRANSFER_SYNTAXES:
            continue
        ours = [ts for ts in proposed.get(cx.context_id, []) if ts in STORAGE_TRANSFER_SYNTAXES]
        if ours:
            cx.transfer_syntax = [ours[0]]
        else:
            cx.result = _TRANSFER_SYNTAXES_NOT_SUPPORTED
    return result, reply_roles


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


#: Connections (associated or not) an AE holds at once; more are closed at once.
#: Established associations are limited by ``network.max_associations`` in
#: :class:`dicom_node.net.access.AssociationGate`, which does not count
#: connections still silent, so idle sockets cannot lock senders out.
MAX_CONNECTIONS = 2048
#: Largest PDU accepted before an association is established (an
#: A-ASSOCIATE-RQ with every storage context is about 100 KB).
MAX_ASSOCIATE_PDU = 1 << 20


def _apply_network_settings(ae: AE, settings: Settings) -> None:
    net = settings.network
    # pynetdicom counts every connection, silent ones too, against this limit;
    # the gate applies network.max_associations to established associations.
    ae.maximum_associations = MAX_CONNECTIONS
    ae.acse_timeout = net.acse_timeout
    ae.dimse_timeout = net.dimse_timeout
    ae.network_timeout = net.network_timeout
    ae.maximum_pdu_size = net.max_pdu
    # Each AE answers only to its own title (the two share the host, not the port).
    ae.require_called_aet = True


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


#: The first buffer of a PDU body read (it doubles while more arrives): a peer
#: announcing a length it never sends holds at most this, or twice what it sent.
_FIRST_READ = 1 << 16

#: Seconds a process serving a shared listening socket waits, per association
#: it has open, before it accepts a new connection (:meth:`NodeServer.share`).
_SHARED_ACCEPT_DELAY = 0.005


class _BoundedAssociationSocket(AssociationSocket):
    """pynetdicom's association socket with a ceiling on announced PDU lengths.

    pynetdicom reads a PDU's 6-byte header, then ``recv(length)`` for its
    body, growing a buffer until the announced length has arrived. A peer
    announcing 4 GiB would make it buffer whatever it sends. Here a length
    above what we accept (:data:`MAX_ASSOCIATE_PDU` before association, our
    maximum PDU length after it) closes the connection before any of the body
    is read; pynetdicom then aborts the association.

    It also reads the body in as few system calls as the network allows:
    pynetdicom's ``recv`` reads 4 KiB at a time (128 calls, each a Python
    round, for a 512 KiB slice); here each call takes all that has arrived,
    into a buffer that grows only as data arrives (a peer announcing more
    than it sends costs at most twice what it sent, or 64 KiB).
    """

    def recv(self, nr_bytes: int) -> bytearray:
        ceiling = self._ceiling()
        if nr_bytes > ceiling:
            logger.warning(
                "connection from %s closed: a PDU of %d bytes announced, at most %d accepted",
                self.assoc.requestor.address,
                nr_bytes,
                ceiling,
            )
            raise ConnectionAbortedError("PDU longer than the maximum accepted")
        assert self.socket is not None
        buffer = bytearray(min(nr_bytes, _FIRST_READ))
        nr_read = 0
        while nr_read < nr_bytes:
            if nr_read == len(buffer):
                buffer.extend(bytes(min(nr_bytes - nr_read, len(buffer))))
            with memoryview(buffer) as view:
                received = self.socket.recv_into(view[nr_read:])
            if not received:  # connection closed: what arrived (as pynetdicom does)
                del buffer[nr_read:]
                return buffer
            nr_read += received
        return buffer

    def _ceiling(self) -> int:
        if not self.assoc.is_established:
            return MAX_ASSOCIATE_PDU
        maximum = int(self.assoc.acceptor.maximum_length or 0)
        # 0 = unlimited (network.max_pdu = 0); otherwise PS3.8 9.3.1: the
        # P-DATA-TF variable field never exceeds our Maximum Length Received.
        return 2**32 - 1 if maximum == 0 else maximum


class _RequestHandler(RequestHandler):
    """pynetdicom's request handler, with :class:`_BoundedAssociationSocket`."""

    def _create_association(self) -> Any:
        assoc = super()._create_association()
        # pynetdicom makes the AssociationSocket inside _create_association and
        # offers no factory: the new instance becomes our subclass, which only
        # adds the length check to recv().
        assoc.dul.socket.__class__ = _BoundedAssociationSocket
        return assoc


class NodeServer(ThreadedAssociationServer):
    """pynetdicom's threaded server: peer-address allowlist, bounded PDUs and
    connections, TLS handshakes off the accepting thread."""

    def __init__(
        self,
        *args: Any,
        allowed_networks: tuple[Any, ...] = (),
        listen_socket: socket.socket | None = None,
        **kwargs: Any,
    ) -> None:
        self._allowed_networks = allowed_networks
        self._listen_socket = listen_socket
        self._shared = False
        # Connections being served (active_associations lags: it counts only
        # those whose thread has made the association already).
        self._connections = 0
        self._connections_lock = threading.Lock()
        kwargs["request_handler"] = _RequestHandler
        super().__init__(*args, **kwargs)

    def server_bind(self) -> None:
        if self._listen_socket is None:
            super().server_bind()
            return
        # Serve a socket already listening (network.receivers: the node's,
        # inherited by a receiver process) instead of binding a new one.
        assert self.socket is not None
        self.socket.close()
        self.socket = self._listen_socket
        self.server_address = self.socket.getsockname()

    def server_activate(self) -> None:
        if self._listen_socket is None:
            super().server_activate()

    def share(self) -> socket.socket:
        """Make the listening socket fit to be served by several processes; return it.

        Every process waiting on it is woken by a new connection and one
        accepts it; non-blocking, the others' ``accept`` fails at once
        (socketserver ignores that) instead of holding their serving loop.
        The least busy should win: each process waits
        :data:`_SHARED_ACCEPT_DELAY` per association it has open before it
        tries (four senders at once otherwise often split 3 to 1).
        """
        assert self.socket is not None
        self.socket.setblocking(False)
        self._shared = True
        return self.socket

    def get_request(self) -> tuple[socket.socket, tuple[str, int]]:
        # The TLS handshake happens in the connection's own thread
        # (finish_request): a peer that never completes it must not hold up
        # the accepting thread, and one outside the allowlist gets none.
        assert self.socket is not None
        if self._shared and self._connections:
            time.sleep(min(_SHARED_ACCEPT_DELAY * self._connections, 0.05))
        client_socket, address = self.socket.accept()
        if self.ssl_context and self._peer_allowed(address[0]):
            client_socket.settimeout(self.ae.acse_timeout)
            client_socket = self.ssl_context.wrap_socket(
                client_socket, server_side=True, do_handshake_on_connect=False
            )
        return client_socket, address

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._connections_lock:
            self._connections += 1
        try:
            super().process_request(request, client_address)  # starts its thread
        except BaseException:
            self._connection_closed()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._connection_closed()

    def _connection_closed(self) -> None:
        with self._connections_lock:
            self._connections -= 1

    def finish_request(self, request: Any, client_address: Any) -> None:
        if isinstance(request, ssl.SSLSocket):
            request.do_handshake()
        super().finish_request(request, client_address)

    def _peer_allowed(self, host: str) -> bool:
        if not self._allowed_networks:
            return True
        address = ipaddress.ip_address(host)
        return any(address in network for network in self._allowed_networks)

    def verify_request(self, request: Any, client_address: Any) -> bool:
        if not self._peer_allowed(client_address[0]):
            logger.warning("connection from %s refused: address not allowed", client_address[0])
            return False
        if len(self.active_associations) >= MAX_CONNECTIONS:
            logger.warning(
                "connection from %s refused: %d connections open",
                client_address[0],
                MAX_CONNECTIONS,
            )
            return False
        return True

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
    ae: AE,
    settings: Settings,
    handlers: list[EventHandlerType],
    *,
    service: Service,
    port: int | None = None,
    listen_socket: socket.socket | None = None,
    max_associations: int | None = None,
) -> ThreadedAssociationServer:
    """Bind the listening socket and return the (not yet serving) server.

    Parameters
    ----------
    ae : AE
        From :func:`build_ae` or :func:`build_similarity_ae`.
    settings : Settings
    handlers : list
        The AE's request handlers; the association gate
        (:class:`~dicom_node.net.access.AssociationGate`) and logging are added.
    service : Service
        Which AE this is (decides which permissions its callers need).
    port : int, optional
        Default ``settings.port``.
    listen_socket : socket.socket, optional
        Serve this socket, already listening (a receiver process), instead of
        binding the address.
    max_associations : int, optional
        This server's limit of established associations (default
        ``network.max_associations``).

    Raises
    ------
    ListenError
        The address cannot be bound (port in use, permission); the message
        names the AE title, the address and the port.
    """
    networks = tuple(
        ipaddress.ip_network(a, strict=False) for a in settings.security.allowed_peer_addresses
    )
    gate = AssociationGate(
        settings.access,
        service,
        settings.network.max_associations if max_associations is None else max_associations,
    )
    address = (settings.host, settings.port if port is None else port)
    try:
        server: ThreadedAssociationServer = ae.make_server(
            address,
            ssl_context=tls_context(settings),
            evt_handlers=[(evt.EVT_REQUESTED, gate), *ASSOCIATION_LOG_HANDLERS, *handlers],
            server_class=NodeServer,
            allowed_networks=networks,
            listen_socket=listen_socket,
        )
    except OSError as exc:
        raise ListenError(
            f"cannot listen as {ae.ae_title} on {address[0]}:{address[1]}: "
            f"{exc.strerror or exc} (another program, or another dicom-node, uses the port)"
        ) from exc
    logger.debug("pynetdicom %s server bound", pynetdicom.__version__)
    return server
