"""Unit tier: no network, no server process; SQLite files in ``tmp_path`` at most."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from storage.catalog import Catalog


@pytest.fixture
def catalog(tmp_path: Path) -> Iterator[Catalog]:
    """An empty SQLite catalog."""
    catalog = Catalog(f"sqlite:///{tmp_path / 'catalog.sqlite3'}")
    yield catalog
    catalog.close()
