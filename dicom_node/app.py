"""Build the node from settings: storage, queue, series watcher, network.

``Node(settings)`` wires everything and ``start()`` resumes unfinished work
before it accepts associations; ``stop()`` undoes it in reverse order.
"""

from __future__ import annotations

import json
import logging
import threading
from pathlib import Path

from pynetdicom import evt
from pynetdicom.events import EventHandlerType
from pynetdicom.transport import ThreadedAssociationServer

from dicom_node import __version__
from dicom_node.intake.ingest import Ingest
from dicom_node.intake.series import SeriesWatcher, complete_idle_series
from dicom_node.net.handlers import handle_find, handle_find_similar, handle_store
from dicom_node.net.scp import build_ae, build_similarity_ae, make_server
from dicom_node.net.similarity import PrivacyPolicy, SimilarityIndex, SimilarityService
from dicom_node.processing.jobs import Processor, RecordingProcessor, run_series
from dicom_node.processing.queue import EmbeddedQueue
from dicom_node.results.outbox import Outbox
from dicom_node.settings import Settings
from storage.catalog import Catalog, SeriesState
from storage.instances import InstanceStore

__all__ = ["Node"]

logger = logging.getLogger(__name__)


class Node:
    """The running DICOM node.

    Parameters
    ----------
    settings : Settings
    processor : Processor, optional
        What runs on completed series (default: the AI pipeline with the
        configured or shipped hashing model; without one, a stand-in that
        records that it ran).
    similarity_index : SimilarityIndex, optional
        The hash index answering similarity queries (none: folders are empty).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        processor: Processor | None = None,
        similarity_index: SimilarityIndex | None = None,
    ) -> None:
        self.settings = settings
        self.store = InstanceStore(
            settings.instances_dir,
            min_free_bytes=settings.storage.min_free_mb * 2**20,
            fsync=settings.storage.fsync,
        )
        self.catalog = Catalog(settings.catalog_url)
        self.ingest = Ingest(self.store, self.catalog)
        self.outbox = Outbox(
            self.catalog, settings.instances_dir, settings.outbox, settings.ae_title
        )
        self.policy = PrivacyPolicy(settings.privacy, settings.data_dir / "privacy.key")
        if processor is None:
            processor, similarity_index = self._default_processor(similarity_index)
        self.processor: Processor = processor
        self.queue = EmbeddedQueue(self._process, threads=settings.worker.threads)
        self.watcher = SeriesWatcher(
            self.catalog,
            settings.series.idle_seconds,
            settings.series.check_interval_seconds,
            self.queue.submit,
            on_tick=self.queue_pending,
        )
        self.similarity_index = similarity_index
        self.similarity = SimilarityService(
            self.catalog,
            similarity_index,
            self.policy,
            studies_per_folder=settings.similarity.studies_per_folder,
            matches_per_nodule=settings.similarity.matches_per_nodule,
        )
        self._server: ThreadedAssociationServer | None = None
        self._similarity_server: ThreadedAssociationServer | None = None
        self._threads: list[threading.Thread] = []

    def _default_processor(
        self, similarity_index: SimilarityIndex | None
    ) -> tuple[Processor, SimilarityIndex | None]:
        """The AI pipeline when a hashing model is available, else the recording stand-in."""
        from dicom_node.model import load_model

        model = load_model(self.settings.worker.model_dir)
        if model is None:
            return RecordingProcessor(), similarity_index
        from dicom_node.processing.analysis import AIProcessor
        from dicom_node.results.reporter import Reporter

        index = similarity_index or SimilarityIndex(self.catalog, model.version)
        reporter = Reporter(
            self.catalog,
            self.store,
            self.ingest,
            self.outbox,
            index,
            model,
            self.policy,
            ae_title=self.settings.ae_title,
        )
        processor = AIProcessor(
            self.settings, self.store, self.catalog, model, index, reporter=reporter
        )
        return processor, index

    @property
    def port(self) -> int:
        """The TCP port actually listened on (useful with ``port = 0``)."""
        if self._server is None:
            raise RuntimeError("the node is not started")
        return int(self._server.server_address[1])

    @property
    def similarity_port(self) -> int:
        """The similarity AE's TCP port."""
        if self._similarity_server is None:
            raise RuntimeError("the similarity AE is not running")
        return int(self._similarity_server.server_address[1])

    @property
    def association_count(self) -> int:
        """Associations currently open with this node as acceptor."""
        return 0 if self._server is None else len(self._server.active_associations)

    def _process(self, series_instance_uid: str) -> None:
        run_series(self.catalog, self.processor, series_instance_uid)

    def resume(self) -> None:
        """Pick up what a stopped or killed node left unfinished."""
        self.store.recover()
        interrupted = self.catalog.series_in_states([SeriesState.PROCESSING])
        for uid in interrupted:
            self.catalog.transition(uid, SeriesState.COMPLETE, from_states=[SeriesState.PROCESSING])
        if interrupted:
            logger.warning(
                "%d series were interrupted while processing; queued again", len(interrupted)
            )
        complete_idle_series(self.catalog, self.settings.series.idle_seconds)
        self.queue_pending()

    def queue_pending(self) -> int:
        """Queue completed series that the current processor version has not finished.

        Runs at start and periodically, so series put back to ``complete`` by
        ``dicom-node reindex`` (another process) are picked up.
        """
        pending = 0
        for uid in self.catalog.series_in_states([SeriesState.COMPLETE]):
            job = self.catalog.job(uid, self.processor.version)
            if job is None or job["finished_at"] is None:
                pending += self.queue.submit(uid)
        if pending:
            logger.info("%d completed series queued for processing", pending)
        return pending

    def start(self) -> None:
        """Resume work, start workers and the watcher, then listen."""
        settings = self.settings
        logger.info("dicom-node %s starting: %s", __version__, json.dumps(settings.describe()))
        if not settings.security.allowed_calling_ae_titles:
            logger.warning(
                "any calling AE title may store to this node; set "
                "security.allowed_calling_ae_titles to restrict it"
            )
        self.queue.start()
        self.outbox.start()
        self.resume()
        self.watcher.start()
        handlers: list[EventHandlerType] = [
            (evt.EVT_C_STORE, handle_store, [self.ingest]),
            (evt.EVT_C_FIND, handle_find, [self.catalog]),
        ]
        self._server = make_server(build_ae(settings), settings, handlers)
        self._serve(self._server, "dicom-scp")
        if settings.similarity.port >= 0:
            self._similarity_server = make_server(
                build_similarity_ae(settings),
                settings,
                [(evt.EVT_C_FIND, handle_find_similar, [self.similarity])],
                port=settings.similarity.port,
            )
            self._serve(self._similarity_server, "dicom-similarity-scp")
        logger.info(
            "listening as %s on %s:%d%s%s",
            settings.ae_title,
            settings.host,
            self.port,
            " (TLS)" if settings.security.tls_enabled else "",
            f"; similarity AE {settings.similarity.ae_title} on port {self.similarity_port}"
            if self._similarity_server is not None
            else "",
        )
        self._write_runtime_file()

    def _serve(self, server: ThreadedAssociationServer, name: str) -> None:
        thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.2}, name=name, daemon=True
        )
        thread.start()
        self._threads.append(thread)

    def _write_runtime_file(self) -> None:
        runtime = {
            "ae_title": self.settings.ae_title,
            "host": self.settings.host,
            "port": self.port,
        }
        if self._similarity_server is not None:
            runtime |= {
                "similarity_ae_title": self.settings.similarity.ae_title,
                "similarity_port": self.similarity_port,
            }
        (Path(self.settings.data_dir) / "node.json").write_text(json.dumps(runtime))

    def stop(self) -> None:
        """Stop listening, then the watcher and the workers."""
        for server in (self._server, self._similarity_server):
            if server is not None:
                server.shutdown()
        self._server = self._similarity_server = None
        for thread in self._threads:
            thread.join()
        self._threads.clear()
        self.watcher.stop()
        self.queue.stop()
        self.outbox.stop()
        self.catalog.close()
        logger.info("stopped")
