"""Secrets shared by every machine of one catalog (the privacy key of the case ids)."""

from __future__ import annotations

import time

import sqlalchemy as sa

from storage.catalog.engine import Database
from storage.catalog.schema import secrets

__all__ = ["SecretCatalog"]


class SecretCatalog:
    """One value per name, made once and then the same for every reader.

    Parameters
    ----------
    database : Database
    """

    def __init__(self, database: Database) -> None:
        self._db = database

    def agree(self, name: str, proposal: bytes, *, now: float | None = None) -> bytes:
        """The value of ``name``: ``proposal`` if none was stored yet, else the stored one.

        Concurrent first callers agree: one insert wins and all read it back.
        """
        now = time.time() if now is None else now
        with self._db.begin() as connection:
            self._db.insert_ignore(
                connection, secrets, {"name": name, "value": proposal, "created_at": now}
            )
            value = connection.execute(
                sa.select(secrets.c.value).where(secrets.c.name == name)
            ).scalar_one()
        return bytes(value)
