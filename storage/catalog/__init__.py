"""The catalog: what the node knows about studies, series, nodules and deliveries.

SQLAlchemy Core over SQLite (WAL, ``synchronous=FULL``) by default; the same
schema and statements run on PostgreSQL (``postgresql+psycopg://`` URLs).
Split by reason to change, one module each:

==============  ==========================================================
``schema``      tables; series, job and delivery states; result kinds
``engine``      the database: engine, transactions, dialect details
``records``     the typed, frozen records going in and out
``intake``      received instances and their study and series rows; generated results
``workflow``    series states (the truth about work) and processing jobs,
                claimed by workers under leases
``find``        Study Root C-FIND matching and its keys
``nodules``     nodules and their hash codes per model version, and the
                cursor an in-memory index follows them with
``deliveries``  outbox rows
``backfill``    backfill checkpoints and the series a backfill brought in
``reference``   nodules given with reference series (``dicom-node import-crops``)
``retrieve``    the stored files a C-MOVE or C-GET asks for
``secrets``     values every machine of the catalog shares (the privacy key)
==============  ==========================================================

:class:`Catalog` opens one database and exposes each part as an attribute
(``catalog.intake``, ``catalog.workflow``, ...), so a caller names the part
it depends on.
"""

from __future__ import annotations

from sqlalchemy.engine import Engine

from storage.catalog.backfill import BackfillCatalog, BackfilledSeries
from storage.catalog.deliveries import DeliveryCatalog
from storage.catalog.engine import Database
from storage.catalog.find import Condition, FindCatalog, Level
from storage.catalog.intake import IntakeCatalog
from storage.catalog.nodules import IndexCursor, NoduleCatalog
from storage.catalog.records import (
    Claim,
    CodeBatch,
    Delivery,
    Finished,
    GeneratedResult,
    GivenNodule,
    InstanceRecord,
    JobRecord,
    NewNodule,
    NoduleRecord,
    SeriesSummary,
    StepKey,
    StudyRecord,
)
from storage.catalog.reference import ReferenceCatalog
from storage.catalog.retrieve import RetrieveCatalog, StoredFile
from storage.catalog.schema import (
    BackfillStudyState,
    DeliveryState,
    JobState,
    ResultKind,
    SeriesState,
    metadata,
)
from storage.catalog.secrets import SecretCatalog
from storage.catalog.workflow import WorkflowCatalog

__all__ = [
    "BackfillCatalog",
    "BackfillStudyState",
    "BackfilledSeries",
    "Catalog",
    "Claim",
    "CodeBatch",
    "Condition",
    "Delivery",
    "DeliveryState",
    "Finished",
    "GeneratedResult",
    "GivenNodule",
    "IndexCursor",
    "InstanceRecord",
    "JobRecord",
    "JobState",
    "Level",
    "NewNodule",
    "NoduleRecord",
    "ReferenceCatalog",
    "ResultKind",
    "RetrieveCatalog",
    "SeriesState",
    "SeriesSummary",
    "StepKey",
    "StoredFile",
    "StudyRecord",
    "metadata",
]


class Catalog:
    """The catalog of one database, by part.

    Parameters
    ----------
    url : str
        SQLAlchemy URL: ``sqlite:///path/catalog.sqlite3`` (default embedded)
        or ``postgresql+psycopg://user@host/db``.
    create : bool
        Create the schema if missing (the node); False for commands that
        must find an existing catalog (``dicom-node status``, ...).

    Attributes
    ----------
    intake : IntakeCatalog
    workflow : WorkflowCatalog
    find : FindCatalog
    nodules : NoduleCatalog
    deliveries : DeliveryCatalog
    backfill : BackfillCatalog
    retrieve : RetrieveCatalog
    reference : ReferenceCatalog
    secrets : SecretCatalog
    """

    def __init__(self, url: str, *, create: bool = True) -> None:
        self.url = url
        self.database = Database(url, create=create)
        self.intake = IntakeCatalog(self.database)
        self.workflow = WorkflowCatalog(self.database)
        self.find = FindCatalog(self.database)
        self.nodules = NoduleCatalog(self.database)
        self.deliveries = DeliveryCatalog(self.database)
        self.backfill = BackfillCatalog(self.database)
        self.retrieve = RetrieveCatalog(self.database)
        self.reference = ReferenceCatalog(self.database)
        self.secrets = SecretCatalog(self.database)

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine (benchmarks fill tables in bulk through it)."""
        return self.database.engine

    def close(self) -> None:
        """Release every pooled connection."""
        self.database.close()
