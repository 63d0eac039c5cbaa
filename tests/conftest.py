"""Fixtures of every tier: settings on tmp_path, the real data beside the checkout, globals.

Each tier has its own ``conftest.py`` for what only it needs (running nodes and
peers in ``integration/``, servers in ``system/``). Helpers shared by modules
live in ``tests/peers.py`` and ``tests/factories.py``, never in a test module.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
#: The real data beside the checkout (``../shared/data``); users do not have
#: it, so every test that needs it skips without it.
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def _restore_globals() -> Iterator[None]:
    from pynetdicom import _config

    saved_config = {k: getattr(_config, k) for k in dir(_config) if k.isupper()}
    saved_env = dict(os.environ)
    import pydicom.config

    saved_validation = (
        pydicom.config.settings.reading_validation_mode,
        pydicom.config.settings.writing_validation_mode,
    )
    yield
    (
        pydicom.config.settings.reading_validation_mode,
        pydicom.config.settings.writing_validation_mode,
    ) = saved_validation
    for key, value in saved_config.items():
        setattr(_config, key, value)
    os.environ.clear()
    os.environ.update(saved_env)


@pytest.fixture
def make_settings(tmp_path: Path) -> Callable[..., Any]:
    """Build validated settings in ``tmp_path`` from keyword overrides.

    Section values are given as dicts: ``make_settings(series={"idle_seconds": 1})``.
    """
    from dicom_node.settings import Settings, check_files, settings_from_table

    def _make(**values: Any) -> Settings:
        table: dict[str, Any] = {
            "data_dir": str(tmp_path / "data"),
            "host": "127.0.0.1",
            "port": 0,
            "storage": {"min_free_mb": 0},
            "series": {"idle_seconds": 1.0, "check_interval_seconds": 0.1},
            "similarity": {"port": 0},
        }
        for key, value in values.items():
            if isinstance(value, dict):
                table.setdefault(key, {}).update(value)
            else:
                table[key] = str(value) if isinstance(value, Path) else value
        settings = settings_from_table(table, "test")
        check_files(settings)
        return settings

    return _make


def shared_archive(name: str) -> Path:
    """``../shared/data/<name>``, or skip the test when it is absent."""
    path = SHARED_DATA / name
    if not path.is_file():
        pytest.skip(f"{path} not present (real data is beside the checkout only)")
    return path


@pytest.fixture(scope="session")
def lidc_nodules_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real LIDC-IDRI nodule crops, extracted once per session (skips without them)."""
    import tarfile

    archive = shared_archive("lidc-nodules.tar.gz")
    target = tmp_path_factory.mktemp("lidc-nodules")
    with tarfile.open(archive) as tar:
        tar.extractall(target, filter="data")
    return target / "lidc-nodules"
