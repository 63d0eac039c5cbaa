"""The node's two listening AEs, each served in a thread: the main AE and the similarity AE.

The main AE (Verification, Storage, Study Root C-FIND, C-MOVE and C-GET)
hands C-STORE to :class:`dicom_node.intake.ingest.Ingest`, C-FIND to the
catalog and retrieves to :class:`dicom_node.net.retrieve.RetrieveService`; the
similarity AE answers similar-case folders through
:class:`dicom_node.net.similarity.SimilarityService`.
"""

from __future__ import annotations

import logging
import socket
import threading

from pynetdicom import evt
from pynetdicom.events import EventHandlerType
from pynetdicom.transport import ThreadedAssociationServer

from dicom_node.errors import ListenError
from dicom_node.intake.ingest import Ingest
from dicom_node.net.access import Service
from dicom_node.net.handlers import handle_find, handle_find_similar, handle_store
from dicom_node.net.retrieve import RetrieveService, handle_get, handle_move
from dicom_node.net.scp import NodeServer, build_ae, build_similarity_ae, make_server
from dicom_node.net.similarity import SimilarityService
from dicom_node.settings import Settings
from storage.catalog import Catalog

__all__ = ["DicomServers"]

logger = logging.getLogger(__name__)


class DicomServers:
    """Bind, serve and stop the node's AEs.

    Parameters
    ----------
    settings : Settings
    ingest : Ingest
        Receives C-STORE requests.
    catalog : Catalog
        Answers Study Root C-FIND on the main AE.
    similarity : SimilarityService or None
        Answers the similarity AE (not started when None or ``similarity.port`` is -1).
    listen_socket : socket.socket, optional
        Serve the main AE on this socket, already listening (a receiver
        process of :mod:`dicom_node.net.receivers`), instead of binding ``port``.
    max_associations : int, optional
        The main AE's limit of established associations (default
        ``network.max_associations``; receiver processes share it out).
    """

    def __init__(
        self,
        settings: Settings,
        ingest: Ingest,
        catalog: Catalog,
        similarity: SimilarityService | None,
        *,
        listen_socket: socket.socket | None = None,
        max_associations: int | None = None,
    ) -> None:
        self.settings = settings
        self._ingest = ingest
        self._catalog = catalog
        self._similarity = similarity
        self._listen_socket = listen_socket
        self._max_associations = max_associations
        self._main: ThreadedAssociationServer | None = None
        self._similar: ThreadedAssociationServer | None = None
        self._threads: list[threading.Thread] = []

    def bind(self) -> None:
        """Bind both AEs' ports (nothing is served yet).

        Raises
        ------
        ListenError
            A port cannot be bound; the message names the AE and the port.
        """
        settings = self.settings
        access = settings.access
        retrieve = RetrieveService(self._catalog, settings.instances_dir, settings.retrieve, access)
        handlers: list[EventHandlerType] = [
            (evt.EVT_C_STORE, handle_store, [self._ingest, access]),
            (evt.EVT_C_FIND, handle_find, [self._catalog, access]),
            (evt.EVT_C_GET, handle_get, [retrieve]),
            (evt.EVT_C_MOVE, handle_move, [retrieve]),
        ]
        self._main = make_server(
            build_ae(settings),
            settings,
            handlers,
            service=Service.MAIN,
            listen_socket=self._listen_socket,
            max_associations=self._max_associations,
        )
        if self._similarity is not None and settings.similarity.port >= 0:
            try:
                self._similar = make_server(
                    build_similarity_ae(settings),
                    settings,
                    [(evt.EVT_C_FIND, handle_find_similar, [self._similarity])],
                    service=Service.SIMILARITY,
                    port=settings.similarity.port,
                )
            except ListenError:
                self._main.server_close()
                self._main = None
                raise

    def serve(self) -> None:
        """Accept associations on the bound AEs, each in its thread."""
        if self._main is None:
            raise RuntimeError("bind() the AEs before serving them")
        self._serve(self._main, "dicom-scp")
        if self._similar is not None:
            self._serve(self._similar, "dicom-similarity-scp")

    def start(self) -> None:
        """Bind both AEs and serve them.

        Raises
        ------
        ListenError
        """
        self.bind()
        self.serve()

    def _serve(self, server: ThreadedAssociationServer, name: str) -> None:
        thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2}, name=name, daemon=True
        )
        thread.start()
        self._threads.append(thread)

    @property
    def port(self) -> int:
        """The main AE's TCP port (useful with ``port = 0``)."""
        if self._main is None:
            raise RuntimeError("the node is not started")
        return int(self._main.server_address[1])

    def share_main_socket(self) -> socket.socket:
        """The main AE's listening socket, made fit for other processes to serve too."""
        if not isinstance(self._main, NodeServer):
            raise RuntimeError("bind() the AEs before sharing the main one")
        return self._main.share()

    @property
    def similarity_port(self) -> int | None:
        """The similarity AE's TCP port, or None when it is off."""
        return None if self._similar is None else int(self._similar.server_address[1])

    @property
    def association_count(self) -> int:
        """Associations currently open with the main AE as acceptor."""
        return 0 if self._main is None else len(self._main.active_associations)

    def stop(self) -> None:
        """Stop listening and abort open associations."""
        serving = bool(self._threads)
        for server in (self._main, self._similar):
            if server is not None:
                if serving:
                    server.shutdown()
                else:  # bound, never served: shutdown() would wait for serve_forever
                    server.server_close()
        self._main = self._similar = None
        for thread in self._threads:
            thread.join()
        self._threads.clear()
