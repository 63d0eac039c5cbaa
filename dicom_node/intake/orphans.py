"""Orphans: files in the instance store without a catalog row, found at start.

A node killed between renaming an instance into place and committing its
catalog row leaves a complete file that nothing tracks (and that holds PHI).
It was never acknowledged, so the sender will resend it; meanwhile it is
either **catalogued** (complete and valid: exactly what :meth:`Ingest.receive`
would have recorded, the file unchanged) or **removed** (unreadable,
truncated, inconsistent with its path, or one of the node's own results,
which the results step makes again with the same UIDs).

Only series directories changed since ``since`` are read (a directory's
mtime changes when a file is renamed into it), so a start after a kill costs
one ``stat`` per series, not a read of the archive.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path

import pydicom
from pydicom.errors import InvalidDicomError

from dicom_node.errors import NodeError
from dicom_node.intake.ingest import Ingest
from storage.errors import StorageError

__all__ = ["OrphanReport", "adopt_orphans"]

logger = logging.getLogger(__name__)

#: Seconds before ``since`` still scanned: file-system timestamps may lag the clock.
_MARGIN_SECONDS = 5.0


@dataclass(frozen=True)
class OrphanReport:
    """What the scan found."""

    catalogued: int = 0
    """Complete, valid instances that had no catalog row: recorded now."""
    removed: int = 0
    """Files that could not be catalogued (invalid, or our own unrecorded results)."""
    series_scanned: int = 0
    """Series directories read (those changed since the previous start)."""


def adopt_orphans(
    ingest: Ingest,
    *,
    since: float,
    is_result_series: Callable[[str, str], bool],
) -> OrphanReport:
    """Catalog or remove every uncatalogued file in series changed since ``since``.

    Parameters
    ----------
    ingest : Ingest
        Its store is scanned; valid orphans go through :meth:`Ingest.receive`.
    since : float
        Epoch seconds; 0 scans every series directory.
    is_result_series : callable
        ``(study_instance_uid, series_instance_uid) -> bool``: True for a
        series of the node's own results (orphans there are removed).

    Returns
    -------
    OrphanReport
    """
    store, catalog = ingest.store, ingest.catalog
    catalogued = removed = scanned = 0
    for series_dir in _changed_series(store.root, since - _MARGIN_SECONDS if since else 0.0):
        scanned += 1
        study_uid, series_uid = series_dir.parent.name, series_dir.name
        known = catalog.intake.paths_in_series(series_uid)
        for path in sorted(series_dir.glob("*.dcm")):
            relative = path.relative_to(store.root).as_posix()
            if relative in known:
                continue
            if not is_result_series(study_uid, series_uid) and _adopt(ingest, relative):
                catalogued += 1
                logger.warning("orphan %s catalogued (complete and valid)", relative)
            else:
                store.remove(relative)
                removed += 1
                logger.warning("orphan %s removed (invalid, or a result made again)", relative)
    return OrphanReport(catalogued, removed, scanned)


def _adopt(ingest: Ingest, relative: str) -> bool:
    """Catalog one orphan as :meth:`Ingest.receive` would; False if it is not valid."""
    try:
        with ingest.store.open(relative) as handle:
            data = handle.read()
        dataset = pydicom.dcmread(BytesIO(data))
        received = ingest.receive(
            dataset,
            data,
            transfer_syntax_uid=str(dataset.file_meta.TransferSyntaxUID),
            affected_sop_class_uid=str(dataset.get("SOPClassUID", "")),
            affected_sop_instance_uid=str(dataset.get("SOPInstanceUID", "")),
        )
    except (InvalidDicomError, NodeError, StorageError, OSError, ValueError, AttributeError):
        return False
    # A file whose UIDs say it belongs elsewhere was stored again at its
    # right place by receive(); this copy is then the one to remove.
    return received.relative_path == relative


def _changed_series(root: Path, since: float) -> list[Path]:
    """``<root>/<study>/<series>`` directories whose mtime is at or after ``since``."""
    changed = []
    with os.scandir(root) as studies:
        for study in studies:
            if not study.is_dir(follow_symlinks=False) or study.name.startswith("."):
                continue
            with os.scandir(study.path) as series:
                for entry in series:
                    if entry.is_dir(follow_symlinks=False) and entry.stat().st_mtime >= since:
                        changed.append(Path(entry.path))
    return changed
