"""An index saved with the catalog position it holds: where a restarted node's index starts.

A snapshot is a folder per model version holding ``index.npz`` (written by
:meth:`storage.index.HashIndex.save`, atomically) and ``position.json`` (the
catalog position the index holds: the last nodule id and the last removal it
has applied), written *after* the index. A reader reads the position *before*
the index. Either way the position read never claims more than the index read
holds, only possibly less; replaying rows the index already holds is
harmless (adding a present id is skipped, removing an absent one does
nothing), so a crash between the two writes costs a longer catch-up, never a
lost or a stale nodule.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Mapping
from pathlib import Path

from storage.errors import IndexFileError
from storage.index import Backend, HashIndex

__all__ = ["load_snapshot", "save_snapshot", "snapshot_folder"]

logger = logging.getLogger(__name__)

_INDEX = "index.npz"
_POSITION = "position.json"


def snapshot_folder(root: Path, model_version: str) -> Path:
    """The folder of ``model_version``'s snapshot below ``root`` (a safe name)."""
    if re.fullmatch(r"[A-Za-z0-9._-]{1,64}", model_version) and model_version[0] != ".":
        return Path(root) / model_version
    return Path(root) / ("v-" + hashlib.sha256(model_version.encode()).hexdigest()[:32])


def save_snapshot(index: HashIndex, position: Mapping[str, int], folder: Path) -> None:
    """Write ``index`` and then ``position`` to ``folder`` (each atomically, fsynced).

    The caller holds off changes to ``index`` until this returns, so that
    ``position`` is exactly what the index holds.
    """
    folder.mkdir(parents=True, exist_ok=True)
    index.save(folder / _INDEX)
    tmp = folder / (_POSITION + ".tmp")
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump({key: int(value) for key, value in position.items()}, handle)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, folder / _POSITION)
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def load_snapshot(
    folder: Path, *, backend: Backend = "numpy", device: str = "cpu"
) -> tuple[HashIndex, dict[str, int]] | None:
    """The index and position saved in ``folder``, or None if there is no usable snapshot.

    A missing, partial or unreadable snapshot is logged and ignored: the
    caller rebuilds from the catalog.
    """
    try:
        with open(folder / _POSITION, encoding="utf-8") as handle:
            position = {str(k): int(v) for k, v in json.load(handle).items()}
    except FileNotFoundError:
        return None
    except (OSError, ValueError, AttributeError) as exc:
        logger.warning("index snapshot %s: unreadable position (%s); ignored", folder, exc)
        return None
    try:
        index = HashIndex.load(folder / _INDEX, backend=backend, device=device)
    except IndexFileError as exc:
        logger.warning("index snapshot %s ignored: %s", folder, exc)
        return None
    return index, position
