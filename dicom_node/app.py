"""Build the node from settings: storage, job runner, workers, series watcher, network.

``Node(settings)`` wires everything and ``start()`` resumes unfinished work
before it accepts associations; ``stop()`` undoes it in reverse order.
``start(only_workers=True)`` runs only the workers (``dicom-node worker``: no
associations, no series completion, no sending).

The path of one study through the node (DESIGN.md has it numbered):
``net.handlers.handle_store`` → ``intake.ingest.Ingest.receive`` (file, then
catalog row) → ``intake.series`` (idle timer: ``complete``) →
``processing.queue.Workers`` (this node's threads or ``dicom-node worker``
processes, claiming from the catalog) → ``processing.jobs.JobRunner``
running the steps in order: ``processing.analysis.AnalysisStep``
(``indexed``), then ``results.step.ResultsStep`` (``reported``) →
``results.outbox.Outbox`` → ``net.scu``.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path

from dicom_node import __version__
from dicom_node.intake.ingest import Ingest
from dicom_node.intake.orphans import OrphanReport, adopt_orphans
from dicom_node.intake.series import SeriesWatcher, complete_idle_series
from dicom_node.net.receivers import ReceiverProcesses, share_of
from dicom_node.net.servers import DicomServers
from dicom_node.net.similarity import SimilarityService
from dicom_node.processing.jobs import JobRunner, RecordingStep, Step
from dicom_node.processing.queue import Workers
from dicom_node.results.identity import result_series_uid
from dicom_node.results.outbox import Outbox
from dicom_node.retrieval.privacy import PrivacyPolicy, privacy_key
from dicom_node.retrieval.similar import SimilarityIndex
from dicom_node.settings import Settings
from storage.catalog import Catalog, ResultKind
from storage.instances import InstanceStore
from storage.lock import DataDirectoryLock

__all__ = ["Node"]

logger = logging.getLogger(__name__)


class Node:
    """The running DICOM node.

    Parameters
    ----------
    settings : Settings
    steps : sequence of Step, optional
        What runs on completed series, in order (default: the AI step and the
        results step with the configured or shipped hashing model; without a
        model, a step that only records that it ran).
    similarity_index : SimilarityIndex, optional
        The hash index answering similarity queries (default: the model's).
    lock : DataDirectoryLock, optional
        The data directory's lock, already held (``dicom-node serve`` takes it
        before loading anything); by default the node takes it here.
    exclusive : bool
        False for ``dicom-node worker``: it shares the data directory (or its
        catalog and instance files) with the node that holds the lock, takes
        no lock and may only ``start(only_workers=True)``.

    Raises
    ------
    DataDirectoryInUse
        Another node holds the data directory.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        steps: Sequence[Step] | None = None,
        similarity_index: SimilarityIndex | None = None,
        lock: DataDirectoryLock | None = None,
        exclusive: bool = True,
    ) -> None:
        self.settings = settings
        # One node per data directory: the lock comes before anything reads or
        # writes there (catalog, recovery), and a second node fails here at once.
        if lock is None and exclusive:
            lock = DataDirectoryLock(settings.data_dir)
            lock.acquire()
        self.lock = lock
        try:
            self._build(steps, similarity_index)
        except BaseException:
            if self.lock is not None:
                self.lock.release()
            raise

    def _build(
        self, steps: Sequence[Step] | None, similarity_index: SimilarityIndex | None
    ) -> None:
        settings = self.settings
        self.recovery: dict[str, float] = {}
        self.store = InstanceStore(
            settings.instances_dir,
            min_free_bytes=settings.storage.min_free_mb * 2**20,
            fsync=settings.storage.fsync,
        )
        self.catalog = Catalog(settings.catalog_url)
        self.ingest = Ingest(self.store, self.catalog)
        self.outbox = Outbox(
            self.catalog.deliveries, settings.instances_dir, settings.outbox, settings.ae_title
        )
        self.policy = PrivacyPolicy(
            settings.access,
            privacy_key(self.catalog, legacy_file=settings.data_dir / "privacy.key"),
        )
        self.similarity_index = similarity_index
        if steps is None:
            steps = self._default_steps()
        self.runner = JobRunner(self.catalog, steps, lease_seconds=settings.worker.lease_seconds)
        self.workers = Workers(
            self.runner,
            settings.worker.threads,
            poll_seconds=settings.worker.poll_seconds,
            read_ahead=settings.worker.read_ahead,
        )
        self.watcher = SeriesWatcher(
            self.catalog,
            settings.series.idle_seconds,
            settings.series.check_interval_seconds,
            self.workers.wake,
        )
        self._listening = False
        self._watching = False
        self.similarity = SimilarityService(
            self.catalog,
            self.similarity_index,
            self.policy,
            studies_per_folder=settings.similarity.studies_per_folder,
            matches_per_nodule=settings.similarity.matches_per_nodule,
        )
        self.servers = DicomServers(
            settings,
            self.ingest,
            self.catalog,
            self.similarity,
            max_associations=share_of(
                settings.network.max_associations, settings.network.receivers
            ),
        )
        self.receivers: ReceiverProcesses | None = None

    def _default_steps(self) -> list[Step]:
        """The AI and results steps when a hashing model is available, else the recording step.

        A node without worker threads (``serve --no-worker``) runs no step: it
        needs only the model's version for its index, and never imports torch.
        """
        from dicom_node.model import load_model, model_version

        if self.settings.worker.threads == 0:
            version = model_version(self.settings.worker.model_dir)
            if version is not None and self.similarity_index is None:
                self.similarity_index = SimilarityIndex(
                    self.catalog, version, snapshot_dir=self.settings.index_dir
                )
            return []
        model = load_model(self.settings.worker.model_dir)
        if model is None:
            return [RecordingStep()]
        from dicom_node.processing.analysis import AnalysisStep
        from dicom_node.results.step import ResultsStep

        if self.similarity_index is None:
            self.similarity_index = SimilarityIndex(
                self.catalog, model.version, snapshot_dir=self.settings.index_dir
            )
        index = self.similarity_index
        analysis = AnalysisStep(
            self.settings.qualification,
            self.settings.worker,
            self.store,
            self.catalog,
            model,
            index,
        )
        return [
            analysis,
            ResultsStep(
                self.catalog,
                self.store,
                self.ingest,
                self.outbox,
                index,
                model,
                self.policy,
                matches_per_nodule=self.settings.similarity.matches_per_nodule,
                algorithm_parameters=analysis.algorithm_parameters,
            ),
        ]

    @property
    def steps(self) -> tuple[Step, ...]:
        """The steps run on each completed series, in order."""
        return self.runner.steps

    @property
    def port(self) -> int:
        """The TCP port actually listened on (useful with ``port = 0``)."""
        return self.servers.port

    @property
    def similarity_port(self) -> int:
        """The similarity AE's TCP port."""
        port = self.servers.similarity_port
        if port is None:
            raise RuntimeError("the similarity AE is not running")
        return port

    @property
    def association_count(self) -> int:
        """Associations currently open with this node as acceptor."""
        return self.servers.association_count

    def resume(self) -> None:
        """Pick up what a stopped or killed node left unfinished (the workers claim it).

        Partial files go, orphan files (renamed into place, never catalogued)
        are catalogued or removed, interrupted jobs are due again; what was
        found is kept in :attr:`recovery` (``dicom-node status`` shows it).
        """
        partial = self.store.recover()
        orphans = self._adopt_orphans()
        self.recovery = {
            "at": time.time(),
            "partial_files_removed": partial,
            "orphans_catalogued": orphans.catalogued,
            "orphans_removed": orphans.removed,
            "series_scanned": orphans.series_scanned,
        }
        self.runner.recover()
        complete_idle_series(self.catalog, self.settings.series.idle_seconds)
        self.workers.wake()

    def _adopt_orphans(self) -> OrphanReport:
        """Check the files written since the last node was killed (all on a first start)."""
        assert self.lock is not None, "only the node holding the data directory adopts orphans"
        since = 0.0 if self.lock.previous is None else self.lock.unscanned_since
        if since is None:
            return OrphanReport()
        report = adopt_orphans(self.ingest, since=since, is_result_series=self._is_result_series)
        self.lock.mark_scanned()
        if report.catalogued or report.removed:
            logger.warning(
                "%d orphan file(s) catalogued, %d removed (left by a node that was killed)",
                report.catalogued,
                report.removed,
            )
        return report

    def _is_result_series(self, study_instance_uid: str, series_instance_uid: str) -> bool:
        """True for a series of the node's own results (catalogued, or of a current version)."""
        if self.catalog.intake.is_result_series(series_instance_uid):
            return True
        return series_instance_uid in {
            result_series_uid(study_instance_uid, step.version, kind)
            for step in self.runner.steps
            for kind in ResultKind
        }

    def start(self, *, listen: bool = True, only_workers: bool = False) -> None:
        """Load the index, resume work, start the workers, then (``listen``) serve.

        Parameters
        ----------
        listen : bool
            Open the DICOM ports. ``dicom-node backfill`` runs a node without
            them when no node serves the data directory (and with them when
            a PACS is to C-MOVE into it): series are still completed,
            processed and their results kept.
        only_workers : bool
            ``dicom-node worker``: only the workers and the index run; no
            association is accepted, no series completed, nothing sent.
        """
        if self.lock is None and not only_workers:
            raise RuntimeError("a node without the data directory's lock may only run workers")
        settings = self.settings
        logger.info(
            "dicom-node %s starting%s: %s",
            __version__,
            " as a worker" if only_workers else "",
            json.dumps(settings.describe()),
        )
        if self.similarity_index is not None:
            # Loaded in its own thread: the storage AE does not wait for it, and
            # a similarity query waits for the load rather than running it.
            self.similarity_index.start(
                poll_seconds=settings.index.poll_seconds,
                snapshot_seconds=settings.index.snapshot_minutes * 60.0,
            )
        if only_workers:
            self.runner.recover()
            self.workers.start()
            return
        try:
            if listen:
                self._warn_about_exposure()
                # The ports first: a port in use stops the node before it
                # recovers or processes anything.
                self.servers.bind()
                self._listening = True
            # Recover before any worker claims: a job claimed while recover()
            # reads the catalog would be taken for an interrupted one, run twice.
            self.resume()
            self.workers.start()
            self.outbox.start()
            self.watcher.start()
            self._watching = True
            if not listen:
                logger.info("started without listening (backfill)")
                return
            self.servers.serve()
            if settings.network.receivers > 1:
                self.receivers = ReceiverProcesses(
                    settings,
                    self.servers.share_main_socket(),
                    self.store,
                    on_restart=self._write_runtime_file,
                )
                self.receivers.start()
        except BaseException:
            self.stop()
            raise
        logger.info(
            "listening as %s on %s:%d%s%s",
            settings.ae_title,
            settings.host,
            self.port,
            " (TLS)" if settings.security.tls_enabled else "",
            f"; similarity AE {settings.similarity.ae_title} on port {self.servers.similarity_port}"
            if self.servers.similarity_port is not None
            else "",
        )
        self._write_runtime_file()

    def _warn_about_exposure(self) -> None:
        """Say at start what anyone may do, and where the node can be reached."""
        settings = self.settings
        for rule in settings.access.ae_titles:
            logger.info(
                "access: %s may %s%s",
                rule.ae_title,
                ", ".join(sorted(p.value for p in rule.permissions)) or "nothing",
                f" (TLS subjects {'; '.join(rule.tls_subjects)})" if rule.tls_subjects else "",
            )
        unlisted = sorted(p.value for p in settings.access.unlisted)
        if unlisted:
            logger.warning(
                "calling AE titles not listed in [access.ae_titles] may: %s "
                "(access.unlisted; set it to [] to accept listed AEs only)",
                ", ".join(unlisted),
            )
        if ipaddress.ip_address(settings.host).is_loopback:
            logger.warning(
                "listening on %s only: no other machine (the PACS) can reach the node; "
                'set host = "0.0.0.0" (or --host) to listen on every interface',
                settings.host,
            )

    def _write_runtime_file(self) -> None:
        runtime = {
            "pid": os.getpid(),
            "ae_title": self.settings.ae_title,
            "host": self.settings.host,
            "port": self.port,
            "recovery": self.recovery,
        }
        if self.receivers is not None:
            runtime["receiver_pids"] = self.receivers.pids
        if self.servers.similarity_port is not None:
            runtime |= {
                "similarity_ae_title": self.settings.similarity.ae_title,
                "similarity_port": self.servers.similarity_port,
            }
        (Path(self.settings.data_dir) / "node.json").write_text(json.dumps(runtime))

    def stop(self) -> None:
        """Stop listening, then the watcher, the workers and the index (saving a snapshot);
        release the data directory."""
        if self.receivers is not None:
            self.receivers.stop()
            self.receivers = None
        if self._listening:
            self.servers.stop()
        if self._watching:
            self.watcher.stop()
        self.workers.stop()
        self.outbox.stop()
        if self.similarity_index is not None:
            self.similarity_index.stop()
        self.catalog.close()
        self._listening = self._watching = False
        if self.lock is not None:
            self.lock.release()
        logger.info("stopped")
