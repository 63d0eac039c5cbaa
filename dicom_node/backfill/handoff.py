"""How a backfill hands instances to the node: the way a PACS forward takes, either way.

There is one node per data directory. When a node is serving it (its
``node.json`` names an AE that answers C-ECHO), the backfill is one more
sender: :class:`NodeHandoff` spools each fetched instance durably in
``<data_dir>/backfill-spool`` and stores it to the node by C-STORE, batch
by batch; the node acknowledges only what it has on disk and in its
catalog, and the spooled copy is removed then (a run killed in between
sends its spool first when it starts again, so nothing is fetched twice).
When no node serves the directory, the backfill runs one in its own process
(:class:`dicom_node.app.Node`, which takes the data directory) and
:class:`LocalHandoff` gives each instance to its ``Ingest.receive``, the call
the C-STORE handler makes; the series is then complete as soon as its study
is fetched and goes to the node's worker.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Iterable
from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import pydicom

from dicom_node.errors import HandoffError
from dicom_node.net.qr_scu import QueryRetrieveSCU
from dicom_node.net.scu import Outgoing, StoreSCU
from dicom_node.settings import Destination, Settings
from storage.catalog import Catalog, SeriesState
from storage.instances import InstanceStore

if TYPE_CHECKING:
    from dicom_node.app import Node

__all__ = [
    "CALLING_AE_TITLE",
    "Handoff",
    "KnownOnly",
    "LocalHandoff",
    "NodeHandoff",
    "SPOOL_DIR",
    "running_node",
]

logger = logging.getLogger(__name__)

#: Calling AE title recorded for backfilled series (``series.calling_ae_title``).
CALLING_AE_TITLE = "BACKFILL"
#: Spool of fetched instances not yet acknowledged by a running node, under ``data_dir``.
SPOOL_DIR = "backfill-spool"


class Handoff(Protocol):
    """Where fetched instances go."""

    def known(self, sop_instance_uids: Iterable[str]) -> set[str]:
        """The instances the node holds (or will, without a new download)."""
        ...

    def deliver(self, data: bytes, transfer_syntax_uid: str, sop_class_uid: str, uid: str) -> None:
        """Hand one Part 10 instance over; durable when it returns."""
        ...

    def finish_study(self, series_instance_uids: Iterable[str]) -> None:
        """Everything of these series is handed over: make sure the node has it."""
        ...


def running_node(settings: Settings, scu: QueryRetrieveSCU) -> Destination | None:
    """The node serving ``settings.data_dir``: the AE in its ``node.json``, if it answers C-ECHO.

    Raises
    ------
    HandoffError
        Something listens at that address but refuses C-ECHO from us: a node
        that does not accept our calling AE title. Running a second node on
        the same data directory is never the answer.
    """
    runtime = Path(settings.data_dir) / "node.json"
    try:
        info = json.loads(runtime.read_text())
        host = str(info["host"])
        node = Destination(
            str(info["ae_title"]),
            "127.0.0.1" if host in ("0.0.0.0", "::", "") else host,
            int(info["port"]),
        )
    except (OSError, ValueError, KeyError):
        return None
    if scu.echo(node):
        return node
    try:
        with socket.create_connection((node.host, node.port), timeout=2.0):
            pass
    except OSError:
        return None  # node.json of a node that has stopped
    raise HandoffError(
        f"a node seems to serve {settings.data_dir} as {node} but refuses C-ECHO from "
        f"{scu.calling_ae_title}: allow that calling AE title on it, or stop it"
    )


class KnownOnly:
    """What the node holds, for ``--dry-run``: hands nothing over.

    Parameters
    ----------
    catalog : Catalog
    spool_root : pathlib.Path
        Instances spooled for a running node count as held.
    """

    def __init__(self, catalog: Catalog, spool_root: Path) -> None:
        self.catalog = catalog
        self._spooled = (
            {p.stem for p in spool_root.rglob("*.dcm")} if spool_root.is_dir() else set()
        )

    def known(self, sop_instance_uids: Iterable[str]) -> set[str]:
        """In the catalog or in the spool."""
        uids = list(sop_instance_uids)
        return self.catalog.backfill.known_instances(uids) | self._spooled.intersection(uids)

    def deliver(self, data: bytes, transfer_syntax_uid: str, sop_class_uid: str, uid: str) -> None:
        """Never called in a dry run."""
        raise RuntimeError("a dry run hands nothing over")

    def finish_study(self, series_instance_uids: Iterable[str]) -> None:
        """Nothing to finish in a dry run."""


class LocalHandoff:
    """Instances to the node of this process, through the C-STORE handler's own call.

    Parameters
    ----------
    node : Node
        Started (its worker running); it holds the data directory.
    """

    def __init__(self, node: Node) -> None:
        self.node = node

    def known(self, sop_instance_uids: Iterable[str]) -> set[str]:
        """The instances in the node's catalog."""
        return self.node.catalog.backfill.known_instances(sop_instance_uids)

    def deliver(self, data: bytes, transfer_syntax_uid: str, sop_class_uid: str, uid: str) -> None:
        """Validate, store and catalog one instance (``Ingest.receive``)."""
        dataset = pydicom.dcmread(BytesIO(data))
        self.node.ingest.receive(
            dataset,
            data,
            transfer_syntax_uid=transfer_syntax_uid,
            affected_sop_class_uid=sop_class_uid,
            affected_sop_instance_uid=uid,
            calling_ae_title=CALLING_AE_TITLE,
        )

    def finish_study(self, series_instance_uids: Iterable[str]) -> None:
        """Complete the series now (no idle wait: their study is whole); the workers claim them."""
        workflow = self.node.catalog.workflow
        for uid in series_instance_uids:
            if workflow.transition(uid, SeriesState.COMPLETE, from_states=[SeriesState.RECEIVING]):
                logger.info("series %s complete (backfilled)", uid)
                self.node.workers.wake()


class NodeHandoff:
    """Instances to a running node by C-STORE, through a durable spool.

    Parameters
    ----------
    node : Destination
        The running node's main AE.
    catalog : Catalog
        The node's catalog (what it holds).
    spool : InstanceStore
        Durable spool (``<data_dir>/backfill-spool``).
    scu : StoreSCU
        Sends to the node.
    batch : int
        Instances per association.
    """

    def __init__(
        self,
        node: Destination,
        catalog: Catalog,
        spool: InstanceStore,
        scu: StoreSCU,
        *,
        batch: int = 64,
    ) -> None:
        self.node = node
        self.catalog = catalog
        self.spool = spool
        self.scu = scu
        self.batch = batch
        self._lock = threading.Lock()
        self._pending: list[tuple[Outgoing, str]] = []
        self._spooled: set[str] = {p.stem for p in spool.root.rglob("*.dcm")}

    def known(self, sop_instance_uids: Iterable[str]) -> set[str]:
        """In the node's catalog, or spooled here and not yet sent."""
        uids = list(sop_instance_uids)
        with self._lock:
            spooled = self._spooled.intersection(uids)
        return self.catalog.backfill.known_instances(uids) | spooled

    def recover(self) -> int:
        """Send what a stopped or killed run left in the spool; return how many."""
        leftovers = sorted(self.spool.root.rglob("*.dcm"))
        for path in leftovers:
            meta = pydicom.filereader.read_file_meta_info(path)
            outgoing = Outgoing(
                str(meta.MediaStorageSOPInstanceUID),
                str(meta.MediaStorageSOPClassUID),
                str(meta.TransferSyntaxUID),
                path,
            )
            with self._lock:
                self._pending.append((outgoing, path.relative_to(self.spool.root).as_posix()))
        if leftovers:
            logger.info(
                "%d spooled instances from an earlier run: sending them first", len(leftovers)
            )
            self.flush()
        return len(leftovers)

    def deliver(self, data: bytes, transfer_syntax_uid: str, sop_class_uid: str, uid: str) -> None:
        """Spool one instance durably; send a batch when it is full."""
        header = pydicom.dcmread(
            BytesIO(data),
            stop_before_pixels=True,
            specific_tags=["StudyInstanceUID", "SeriesInstanceUID"],
        )
        stored = self.spool.put(
            str(header.StudyInstanceUID), str(header.SeriesInstanceUID), uid, data
        )
        outgoing = Outgoing(
            uid, sop_class_uid, transfer_syntax_uid, self.spool.path_of(stored.relative_path)
        )
        with self._lock:
            self._spooled.add(uid)
            self._pending.append((outgoing, stored.relative_path))
            full = len(self._pending) >= self.batch
        if full:
            self.flush()

    def finish_study(self, series_instance_uids: Iterable[str]) -> None:
        """Send what is spooled; the node completes the series after its idle time."""
        self.flush()

    def flush(self) -> None:
        """Store the spooled instances to the node; remove those it acknowledged.

        Raises
        ------
        HandoffError
            The node refused the association or some instances; they stay
            spooled for the next run.
        """
        with self._lock:
            pending, self._pending = self._pending, []
            if not pending:
                return
            report = self.scu.send(self.node, [outgoing for outgoing, _ in pending])
            if report.refused is not None:
                self._pending = pending + self._pending
                raise HandoffError(f"node {self.node}: {report.refused}")
            refused = []
            for (outgoing, relative), response in zip(pending, report.responses, strict=False):
                if response.category in ("Success", "Warning"):
                    self.spool.remove(relative)
                    self._spooled.discard(outgoing.sop_instance_uid)
                else:
                    refused.append(
                        f"{outgoing.sop_instance_uid}: "
                        f"{response.comment or response.category or 'no response'}"
                    )
            unanswered = len(pending) - len(report.responses)
        if refused or unanswered:
            raise HandoffError(
                f"node {self.node} did not take {len(refused) + unanswered} instances "
                f"({'; '.join(refused[:3]) or 'association lost'}); they stay spooled"
            )
