"""Exceptions of the ``ai`` package.

::

    AIError
     +-- NotALungCT          the volume holds no lungs to segment
     +-- SeriesError         a DICOM series that cannot be one volume (ai.volume)
     |    +-- EmptySeries          no images handed in
     |    +-- NotCTSeries          Modality/SOP class not CT, or no pixel data
     |    +-- MixedSeries          more than one SeriesInstanceUID
     |    +-- LocalizerInSeries    a LOCALIZER (scout) image among the slices
     |    +-- MissingGeometry      no ImagePositionPatient/ImageOrientationPatient/PixelSpacing
     |    +-- MixedOrientation     slices with different ImageOrientationPatient
     |    +-- MixedImageSize       slices with different Rows/Columns/PixelSpacing
     |    +-- GantryTilt           slices sheared along the normal (tilted gantry)
     |    +-- DuplicateSlices      two slices at the same position
     |    +-- MissingSlices        a gap of whole slices in a regular series
     |    +-- UnevenSpacing        slice spacing that varies and is not a gap
     |    +-- PixelDecodeError     pixel data that cannot be decoded
     +-- ReaderError         a public-data file (LUNA16, LIDC-IDRI) that cannot be read
     +-- ModelLoadError      model weights or card that cannot be loaded

Bad arguments raise the built-in ``ValueError``/``TypeError`` (as highdicom
does); these classes are for inputs that are well formed but unusable.
"""

from __future__ import annotations

__all__ = [
    "AIError",
    "NotALungCT",
    "SeriesError",
    "EmptySeries",
    "NotCTSeries",
    "MixedSeries",
    "LocalizerInSeries",
    "MissingGeometry",
    "MixedOrientation",
    "MixedImageSize",
    "GantryTilt",
    "DuplicateSlices",
    "MissingSlices",
    "UnevenSpacing",
    "PixelDecodeError",
    "ReaderError",
    "ModelLoadError",
]


class AIError(Exception):
    """Base class of every error raised by the ``ai`` package."""


class NotALungCT(AIError):
    """The volume has no internal air region that could be lungs."""


class SeriesError(AIError):
    """A DICOM series that cannot be turned into one CT volume."""


class EmptySeries(SeriesError):
    """No images were handed in."""


class NotCTSeries(SeriesError):
    """An image is not a CT image (Modality, SOP class) or has no pixel data."""


class MixedSeries(SeriesError):
    """The images belong to more than one series."""


class LocalizerInSeries(SeriesError):
    """A localizer (scout) image is mixed in with the axial slices."""


class MissingGeometry(SeriesError):
    """An image lacks ImagePositionPatient, ImageOrientationPatient or PixelSpacing."""


class MixedOrientation(SeriesError):
    """The slices do not share one ImageOrientationPatient."""


class MixedImageSize(SeriesError):
    """The slices do not share Rows, Columns and PixelSpacing."""


class GantryTilt(SeriesError):
    """The slice positions are not along the slice normal (tilted gantry)."""


class DuplicateSlices(SeriesError):
    """Two slices lie at the same position along the normal."""


class MissingSlices(SeriesError):
    """Whole slices are missing from an otherwise regular series."""


class UnevenSpacing(SeriesError):
    """The spacing between slices varies (and is not explained by missing slices)."""


class PixelDecodeError(SeriesError):
    """The pixel data of a slice cannot be decoded (transfer syntax, plugin, corruption)."""


class ReaderError(AIError):
    """A public-data file (LUNA16 ``.mhd``/``annotations.csv``, LIDC-IDRI XML) cannot be read."""


class ModelLoadError(AIError):
    """Model weights or their card cannot be read, or do not match each other."""
