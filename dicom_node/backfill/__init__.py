"""Backfill: the prior CT studies of an archive, brought to the node the way a forward brings them.

Rule: a backfill never writes the catalog's instances, series or nodules
itself. Instances reach the node through ``Ingest.receive`` (the C-STORE
handler's call) or through the node's own C-STORE SCP, so a backfilled
series takes the same ingest path and worker as a forwarded one; the
backfill keeps only its checkpoints (``catalog.backfill``).

==============  ==========================================================
``sources``     what an archive answers: windows of StudyDate, studies,
                instances; splitting capped answers
``orthanc``     Orthanc over REST (orthanc-api-client)
``dimse``       any PACS: C-FIND, then C-GET or C-MOVE
``handoff``     to a running node (C-STORE, spooled) or to this process's node
``pacing``      off-peak window and bandwidth limit
``progress``    studies/hour and time left
``run``         the run: list, fetch, checkpoint, release (index-only)
==============  ==========================================================

:func:`open_backfill` chooses the source and the hand-off from the settings
and the command line, and :class:`BackfillSession` runs it.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from typing import TYPE_CHECKING

from dicom_node.backfill.handoff import (
    SPOOL_DIR,
    Handoff,
    KnownOnly,
    LocalHandoff,
    NodeHandoff,
    running_node,
)
from dicom_node.backfill.pacing import Pacing
from dicom_node.backfill.run import Backfill, BackfillOptions, DayEstimate, Summary
from dicom_node.backfill.sources import Source
from dicom_node.net.qr_scu import QueryRetrieveSCU
from dicom_node.settings import Destination, Settings
from storage.catalog import Catalog, SeriesState
from storage.instances import InstanceStore

if TYPE_CHECKING:
    from dicom_node.app import Node

__all__ = ["BackfillSession", "open_backfill"]

logger = logging.getLogger(__name__)


class BackfillSession:
    """A backfill ready to run, with the node it feeds.

    Attributes
    ----------
    backfill : Backfill
    node : Node or None
        The node this process runs (no node served the data directory), else None.
    target : str
        Where instances go, for the log and the summary.
    """

    def __init__(self, backfill: Backfill, node: Node | None, target: str) -> None:
        self.backfill = backfill
        self.node = node
        self.target = target

    def estimate(self) -> list[DayEstimate]:
        """``--dry-run``: per StudyDate, what a run would fetch."""
        return self.backfill.estimate(self.backfill.plan())

    def run(self, *, wait: bool = True) -> Summary:
        """Fetch; then wait for the processing of what was fetched (this process's node only)."""
        logger.info("backfill of %s into %s", self.backfill.source.name, self.target)
        summary = self.backfill.run()
        if self.node is not None and wait and not summary.stopped:
            self.backfill.wait_processed(self._unsettled)
        elif self.backfill.options.index_only:
            self.backfill.release()  # a running node processes later; the next run releases
        return summary

    def _unsettled(self, series_instance_uids: set[str]) -> set[str]:
        assert self.node is not None
        due = set(self.node.runner.pending())
        workflow = self.node.catalog.workflow
        busy = (SeriesState.RECEIVING, SeriesState.PROCESSING)
        unsettled = set()
        for uid in series_instance_uids:
            state = workflow.series_state(uid)
            if uid in due or (state is not None and state[0] in busy):
                unsettled.add(uid)
        return unsettled


def _source(
    settings: Settings,
    scu: QueryRetrieveSCU,
    *,
    orthanc: str | None,
    pacs: str | None,
    pacing: Pacing,
    max_parallel: int,
    move_destination: str | None,
    find_limit: int | None,
) -> Source:
    if orthanc is not None:
        from dicom_node.backfill.orthanc import OrthancSource

        return OrthancSource(orthanc, pacing=pacing, max_parallel=max_parallel)
    from dicom_node.backfill.dimse import PacsSource

    assert pacs is not None
    return PacsSource(
        Destination.parse(pacs, "--pacs"),
        scu,
        pacing=pacing,
        max_parallel=max_parallel,
        move_destination=move_destination,
        find_limit=find_limit,
    )


@contextmanager
def open_backfill(
    settings: Settings,
    *,
    orthanc: str | None = None,
    pacs: str | None = None,
    pacing: Pacing,
    options: BackfillOptions,
    max_parallel: int = 4,
    move_destination: str | None = None,
    find_limit: int | None = None,
    calling_ae_title: str | None = None,
    dry_run: bool = False,
) -> Iterator[BackfillSession]:
    """A backfill of one archive into the node of ``settings.data_dir``.

    With a node serving the data directory, instances go to it by C-STORE
    (:class:`NodeHandoff`); without one, this process runs the node
    (:class:`dicom_node.app.Node`, listening only for ``move_destination``)
    and stops it on exit.

    Raises
    ------
    ArchiveError, HandoffError, SettingsError
    """
    from dicom_node.net.scu import PynetdicomStoreSCU

    calling = calling_ae_title or settings.ae_title
    scu = QueryRetrieveSCU(calling)
    source = _source(
        settings,
        scu,
        orthanc=orthanc,
        pacs=pacs,
        pacing=pacing,
        max_parallel=max_parallel,
        move_destination=move_destination,
        find_limit=find_limit,
    )
    spool_root = settings.data_dir / SPOOL_DIR
    with ExitStack() as stack:
        node_address = running_node(settings, scu)
        node: Node | None = None
        handoff: Handoff
        if dry_run or node_address is not None:
            catalog = Catalog(settings.catalog_url)
            stack.callback(catalog.close)
            store = InstanceStore(settings.instances_dir, fsync=settings.storage.fsync)
        if dry_run:
            handoff = KnownOnly(catalog, spool_root)
            target = "nowhere (dry run)"
        elif node_address is not None:
            spool = InstanceStore(spool_root, fsync=settings.storage.fsync)
            node_handoff = NodeHandoff(node_address, catalog, spool, PynetdicomStoreSCU(calling))
            node_handoff.recover()
            handoff, target = node_handoff, f"the running node {node_address}"
        else:
            from dicom_node.app import Node

            node = Node(settings)
            node.start(listen=move_destination is not None)
            stack.callback(node.stop)
            catalog, store = node.catalog, node.store
            handoff, target = LocalHandoff(node), "a node in this process"
        backfill = Backfill(source, catalog, handoff, store, pacing, options)
        yield BackfillSession(backfill, node, target)
