"""System tier: real server processes (PostgreSQL, Orthanc) started on free loopback ports.

PostgreSQL runs the catalog: one server for the session, an empty database
per test that asks for one (:func:`fresh_database`); Orthanc, configured by
``deploy/orthanc/`` (:mod:`tests.orthanc`), is the PACS that forwards to the
node, receives its results and is backfilled from. Each fixture skips when
its server is not installed (``deploy/test.sh`` installs them).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

# Nodes in process and the small untrained model, as the integration tier has them.
from tests.integration.conftest import start_node, tiny_model_dir  # noqa: F401
from tests.peers import postgres_bin, postgresql_server


@pytest.fixture(scope="session")
def postgresql_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real PostgreSQL server on a free loopback port, for the session.

    Skips when PostgreSQL is not installed.
    """
    if postgres_bin() is None:
        pytest.skip("PostgreSQL is not installed (the test command installs it)")
    with postgresql_server(tmp_path_factory.mktemp("pg")) as url:
        yield url


@pytest.fixture
def fresh_database(postgresql_url: str) -> Iterator[str]:
    """The URL of a new, empty database on the session's server (dropped afterwards)."""
    import uuid

    import sqlalchemy as sa

    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(postgresql_url, isolation_level="AUTOCOMMIT", pool_pre_ping=True)
    try:
        with admin.connect() as connection:
            connection.execute(sa.text(f"CREATE DATABASE {name}"))
        yield postgresql_url.rsplit("/", 1)[0] + f"/{name}"
        with admin.connect() as connection:
            connection.execute(sa.text(f"DROP DATABASE {name} WITH (FORCE)"))
    finally:
        admin.dispose()
