"""The catalog: what the node knows about studies, series, nodules and deliveries.

SQLAlchemy Core over SQLite (WAL, ``synchronous=FULL``) by default; the same
schema and statements run on PostgreSQL (``postgresql+psycopg://`` URLs).
Split by reason to change, one module each:

==============  ==========================================================
``schema``      tables; series, job and delivery states; result kinds
``engine``      the database: engine, transactions, dialect details
``records``     the typed, frozen records going in and out
``intake``      received instances and their study and series rows; generated results
``workflow``    series states (the truth about work) and processing jobs
``find``        Study Root C-FIND matching and its keys
``nodules``     nodules and their hash codes per model version
``deliveries``  outbox rows
==============  ==========================================================

:class:`Catalog` opens one database and exposes each part as an attribute
(``catalog.intake``, ``catalog.workflow``, ...), so a caller names the part
it depends on.
"""

from __future__ import annotations

from sqlalchemy.engine import Engine

from storage.catalog.deliveries import DeliveryCatalog
from storage.catalog.engine import Database
from storage.catalog.find import Condition, FindCatalog, Level
from storage.catalog.intake import IntakeCatalog
from storage.catalog.nodules import NoduleCatalog
from storage.catalog.records import (
    CodeBatch,
    Delivery,
    GeneratedResult,
    InstanceRecord,
    JobRecord,
    NewNodule,
    NoduleRecord,
    SeriesSummary,
    StudyRecord,
)
from storage.catalog.schema import DeliveryState, JobState, ResultKind, SeriesState, metadata
from storage.catalog.workflow import WorkflowCatalog

__all__ = [
    "Catalog",
    "CodeBatch",
    "Condition",
    "Delivery",
    "DeliveryState",
    "GeneratedResult",
    "InstanceRecord",
    "JobRecord",
    "JobState",
    "Level",
    "NewNodule",
    "NoduleRecord",
    "ResultKind",
    "SeriesState",
    "SeriesSummary",
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
    """

    def __init__(self, url: str, *, create: bool = True) -> None:
        self.url = url
        self.database = Database(url, create=create)
        self.intake = IntakeCatalog(self.database)
        self.workflow = WorkflowCatalog(self.database)
        self.find = FindCatalog(self.database)
        self.nodules = NoduleCatalog(self.database)
        self.deliveries = DeliveryCatalog(self.database)

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine (benchmarks fill tables in bulk through it)."""
        return self.database.engine

    def close(self) -> None:
        """Release every pooled connection."""
        self.database.close()
