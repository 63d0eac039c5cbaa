"""Readers for the public data users bring: LUNA16 (``.mhd`` + ``annotations.csv``)
and LIDC-IDRI (DICOM + the readers' XML). Each module also writes a small sample
of our phantom in its format, for tests and demos.
"""

from __future__ import annotations

from ai.readers.lidc import LidcNodule, LidcReading, LidcScan, parse_lidc_xml, read_lidc_scan
from ai.readers.luna16 import LunaAnnotation, read_annotations, read_scan

__all__ = [
    "LidcNodule",
    "LidcReading",
    "LidcScan",
    "LunaAnnotation",
    "parse_lidc_xml",
    "read_annotations",
    "read_lidc_scan",
    "read_scan",
]
