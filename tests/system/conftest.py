"""System tier: real server processes (PostgreSQL) started on free loopback ports.

Orthanc-backed tests arrive with the backfill (a later issue); today this tier
runs the catalog on PostgreSQL: one server for the session, an empty
database per test that asks for one (:func:`fresh_database`). Each fixture
skips when its server is not installed (``deploy/test.sh`` installs them).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.peers import free_port, wait_for_port


def _postgres_bin() -> Path | None:
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"))
    return candidates[-1].parent if candidates else None


@pytest.fixture(scope="session")
def postgresql_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real PostgreSQL server on a free loopback port, for the session.

    Started from Debian's binaries as the ``postgres`` user when the tests run
    as root (initdb refuses root). Skips when PostgreSQL is not installed.
    """
    import pwd

    bindir = _postgres_bin()
    if bindir is None:
        pytest.skip("PostgreSQL is not installed (the test command installs it)")
    root = tmp_path_factory.mktemp("pg")
    data = root / "data"
    port = free_port()
    as_user: list[str] = []
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(root, user.pw_uid, user.pw_gid)
        os.chmod(root, 0o755)
        for parent in root.parents:  # postgres must traverse to its directory
            if parent == Path("/"):
                break
            parent.chmod(parent.stat().st_mode | 0o011)
        as_user = ["runuser", "-u", "postgres", "--"]
    subprocess.run(
        [
            *as_user,
            str(bindir / "initdb"),
            "-D",
            str(data),
            "-U",
            "postgres",
            "-A",
            "trust",
            "--no-sync",
        ],
        check=True,
        capture_output=True,
    )
    server = subprocess.Popen(
        [
            *as_user,
            str(bindir / "postgres"),
            "-D",
            str(data),
            "-p",
            str(port),
            "-h",
            "127.0.0.1",
            "-k",
            str(root),
            "-c",
            "fsync=off",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_for_port(port, process=server)
        deadline = time.monotonic() + 30
        while (
            subprocess.run(
                [str(bindir / "pg_isready"), "-h", "127.0.0.1", "-p", str(port)],
                capture_output=True,
            ).returncode
            != 0
        ):
            if time.monotonic() > deadline:
                raise TimeoutError("PostgreSQL did not become ready")
            time.sleep(0.1)
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        server.terminate()
        server.wait(30)


@pytest.fixture
def fresh_database(postgresql_url: str) -> Iterator[str]:
    """The URL of a new, empty database on the session's server (dropped afterwards)."""
    import uuid

    import sqlalchemy as sa

    name = f"t_{uuid.uuid4().hex[:12]}"
    admin = sa.create_engine(postgresql_url, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as connection:
            connection.execute(sa.text(f"CREATE DATABASE {name}"))
        yield postgresql_url.rsplit("/", 1)[0] + f"/{name}"
        with admin.connect() as connection:
            connection.execute(sa.text(f"DROP DATABASE {name} WITH (FORCE)"))
    finally:
        admin.dispose()
