"""The catalog's database: one SQLAlchemy engine, transactions, dialect details.

SQLite (WAL, ``synchronous=FULL``) by default; PostgreSQL (``postgresql+psycopg``
URLs) when scaled out. SQLAlchemy's exceptions become :class:`CatalogError`
here and nowhere else.
"""

from __future__ import annotations

import logging
import os
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError

from storage.catalog.schema import metadata
from storage.errors import CatalogError

__all__ = ["Database"]

logger = logging.getLogger(__name__)


def _on_sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=FULL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    # DICOM matching is case-sensitive except for person names (ilike).
    cursor.execute("PRAGMA case_sensitive_like=ON")
    cursor.close()


def _require_existing(url: str) -> None:
    """Raise CatalogError if ``url`` names a SQLite file that does not exist."""
    parsed = sa.engine.make_url(url)
    if parsed.get_backend_name() == "sqlite" and parsed.database not in (None, "", ":memory:"):
        if not os.path.exists(parsed.database):
            raise CatalogError(
                f"there is no catalog at {parsed.database}: is that the data directory of a "
                "node that has run? (--data-dir, data_dir or storage.catalog_url)"
            )


def _missing_columns(engine: Engine) -> list[str]:
    """``table.column`` of our schema that the database's existing tables lack.

    On SQLite, a table declared ``sqlite_autoincrement`` but made without it
    counts as missing its key (its ids could be reused).
    """
    inspector = sa.inspect(engine)
    tables = set(inspector.get_table_names())
    missing = []
    for table in metadata.sorted_tables:
        if table.name not in tables:
            missing.append(f"{table.name} (table)")
            continue
        present = {column["name"] for column in inspector.get_columns(table.name)}
        missing += [f"{table.name}.{c.name}" for c in table.columns if c.name not in present]
    if engine.dialect.name == "sqlite":
        with engine.connect() as connection:
            for table in metadata.sorted_tables:
                if not table.kwargs.get("sqlite_autoincrement"):
                    continue
                sql = connection.execute(
                    sa.text("SELECT sql FROM sqlite_master WHERE type = 'table' AND name = :n"),
                    {"n": table.name},
                ).scalar()
                if sql is not None and "AUTOINCREMENT" not in sql.upper():
                    missing.append(f"{table.name} ids that are never reused")
    return missing


class Database:
    """One catalog database, its schema created on open.

    Parameters
    ----------
    url : str
        ``sqlite:///path/catalog.sqlite3`` (embedded default) or
        ``postgresql+psycopg://user@host/db``.
    create : bool
        Create the schema (the node does). Commands that only read or
        edit an existing catalog pass False: a SQLite file that does not
        exist is then an error, never a new empty catalog.

    Raises
    ------
    CatalogError
        The database cannot be opened or its tables created; with
        ``create=False``, there is no catalog at ``url``.
    """

    def __init__(self, url: str, *, create: bool = True) -> None:
        self.url = url
        if not create:
            _require_existing(url)
        try:
            # A pre-ping finds a PostgreSQL connection the server closed; a
            # SQLite file cannot drop one, and the ping is a statement per
            # transaction (about 5 % of a C-STORE's handler time).
            postgresql = sa.engine.make_url(url).get_backend_name() == "postgresql"
            self.engine: Engine = sa.create_engine(url, future=True, pool_pre_ping=postgresql)
            if self.engine.dialect.name == "sqlite":
                sa.event.listen(self.engine, "connect", _on_sqlite_connect)
            if create:
                metadata.create_all(self.engine)
            missing = _missing_columns(self.engine)
        except SQLAlchemyError as exc:
            raise CatalogError(f"cannot open the catalog: {exc.__class__.__name__}: {exc}") from exc
        if missing:
            self.engine.dispose()
            raise CatalogError(
                "the catalog was made by another version of dicom-node (missing "
                f"{', '.join(missing)}); there are no migrations yet: move it aside and start "
                "again (the instance files stay; resend the studies to index them)"
            )

    @contextmanager
    def begin(self) -> Iterator[Connection]:
        """A transaction, committed on exit; any database error is a CatalogError."""
        try:
            with self.engine.begin() as connection:
                yield connection
        except SQLAlchemyError as exc:
            raise CatalogError(f"catalog statement failed: {exc.__class__.__name__}") from exc

    @property
    def dialect(self) -> str:
        """``sqlite`` or ``postgresql``."""
        return str(self.engine.dialect.name)

    def serialize(self, connection: Connection, name: str) -> None:
        """Hold the catalog-wide lock ``name`` until the transaction ends.

        Transactions taking the same lock commit one after another, so rows
        they insert commit in the order of their ids (a follower reading
        "ids after the last one seen" misses none). PostgreSQL: a
        transaction-level advisory lock; SQLite serializes every writer
        already.
        """
        if self.dialect == "postgresql":
            key = zlib.crc32(f"dicom-node:{name}".encode())
            connection.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": key})

    def insert(self, table: sa.Table) -> Any:
        """The dialect's INSERT (it has ``on_conflict_do_nothing``)."""
        dialect = self.engine.dialect.name
        if dialect == "sqlite":
            return sqlite_insert(table)
        if dialect == "postgresql":
            return postgresql_insert(table)
        raise CatalogError(f"unsupported catalog database {dialect!r}")  # pragma: no cover

    def insert_ignore(
        self, connection: Connection, table: sa.Table, values: dict[str, Any]
    ) -> bool:
        """INSERT unless the primary key exists; True if a row was inserted."""
        key = list(table.primary_key.columns)
        statement = self.insert(table).values(**values).on_conflict_do_nothing().returning(*key)
        return connection.execute(statement).first() is not None

    def close(self) -> None:
        """Release every pooled connection."""
        self.engine.dispose()
