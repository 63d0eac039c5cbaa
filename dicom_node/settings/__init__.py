"""Typed settings: built-in defaults, then a TOML file, then ``DICOM_NODE_*``
environment variables, then command-line flags.

- :mod:`dicom_node.settings.sections`: one frozen dataclass per ``[section]``,
  validating its own fields when constructed;
- :mod:`dicom_node.settings.loading`: reading the sources, merging them and
  constructing :class:`Settings` once.

One settings object is created at start (``dicom-node serve``) and passed down.
"""

from __future__ import annotations

from dicom_node.settings.access import AccessRule, AccessSettings, Permission
from dicom_node.settings.loading import check_files, load_settings, settings_from_table
from dicom_node.settings.sections import (
    Destination,
    IndexSettings,
    LoggingSettings,
    NetworkSettings,
    OutboxSettings,
    QualificationSettings,
    RetrieveSettings,
    SecuritySettings,
    SeriesSettings,
    Settings,
    SimilaritySettings,
    StorageSettings,
    WorkerSettings,
    validate_ae_title,
)

__all__ = [
    "AccessRule",
    "AccessSettings",
    "Destination",
    "LoggingSettings",
    "IndexSettings",
    "NetworkSettings",
    "OutboxSettings",
    "Permission",
    "QualificationSettings",
    "RetrieveSettings",
    "SecuritySettings",
    "SeriesSettings",
    "Settings",
    "SimilaritySettings",
    "StorageSettings",
    "WorkerSettings",
    "check_files",
    "load_settings",
    "settings_from_table",
    "validate_ae_title",
]
