"""A received DICOM CT series -> one HU volume with its true position in the patient.

Slices are sorted by their position along the slice normal
(``ImagePositionPatient · (row × column)``, PS3.3 C.7.6.2.1.1), never by
InstanceNumber. Compressed transfer syntaxes are decoded by pydicom with the
pylibjpeg / pyjpegls plugins. Stored values become Hounsfield units with each
slice's RescaleSlope and RescaleIntercept (PS3.3 C.11.1.1.2). The result is
resampled with SimpleITK to a configurable spacing (1 mm isotropic by default)
keeping origin and direction.

Everything that cannot be one volume raises a specific
:class:`ai.errors.SeriesError` subclass, checked in this order: empty, not
CT, several series, localizer mixed in, missing geometry, mixed sizes, mixed
orientations, gantry tilt, duplicate slices, missing slices, uneven spacing,
undecodable pixels.

World <-> voxel conversions live in :class:`ai.types.Volume`;
:func:`to_sitk`/:func:`from_sitk` convert without losing geometry.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from typing import Any, cast

import numpy as np
import numpy.typing as npt
import pydicom
import SimpleITK
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from ai.errors import (
    DuplicateSlices,
    EmptySeries,
    GantryTilt,
    LocalizerInSeries,
    MissingGeometry,
    MissingSlices,
    MixedImageSize,
    MixedOrientation,
    MixedSeries,
    NotCTSeries,
    PixelDecodeError,
    UnevenSpacing,
)
from ai.types import Volume

__all__ = [
    "SeriesSource",
    "load_series",
    "sort_slices",
    "to_sitk",
    "from_sitk",
    "resample",
    "resample_like",
]

logger = logging.getLogger(__name__)

#: SimpleITK ships no type hints; this alias keeps mypy's strict mode on our own code.
sitk: Any = SimpleITK

#: What :func:`load_series` accepts for one slice.
SeriesSource = Dataset | str | os.PathLike[str]

_CT_SOP_CLASSES = {"1.2.840.10008.5.1.4.1.1.2"}  # CT Image Storage (single frame)
_ORIENTATION_TOLERANCE = 1e-4
_TILT_TOLERANCE_DEG = 0.1


def _read(sources: Iterable[SeriesSource]) -> list[Dataset]:
    datasets = []
    for source in sources:
        if isinstance(source, Dataset):
            datasets.append(source)
            continue
        try:
            datasets.append(pydicom.dcmread(os.fspath(source)))
        except (InvalidDicomError, EOFError) as exc:
            raise NotCTSeries(f"{os.fspath(source)!r} is not a DICOM file") from exc
    return datasets


def _check_identity(datasets: Sequence[Dataset]) -> None:
    series = {str(ds.get("SeriesInstanceUID", "")) for ds in datasets}
    for ds in datasets:
        sop_class = str(
            ds.get("SOPClassUID", "")
            or getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", "")
        )
        if ds.get("Modality") != "CT" or sop_class not in _CT_SOP_CLASSES:
            raise NotCTSeries(
                f"instance {ds.get('SOPInstanceUID', '?')} is Modality {ds.get('Modality')!r}, "
                f"SOP class {sop_class!r}; only single-frame CT Image Storage is a volume"
            )
        if "PixelData" not in ds:
            raise NotCTSeries(f"instance {ds.get('SOPInstanceUID', '?')} has no pixel data")
    if len(series) > 1:
        raise MixedSeries(f"{len(series)} SeriesInstanceUIDs in one series: {sorted(series)}")
    for ds in datasets:
        image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
        if "LOCALIZER" in image_type:
            raise LocalizerInSeries(
                f"instance {ds.get('SOPInstanceUID', '?')} is a LOCALIZER image"
            )


def _geometry(
    datasets: Sequence[Dataset],
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.float64]]:
    """Check sizes and orientations; return ``(orientation (6,), positions (n, 3))``."""
    for ds in datasets:
        for keyword in ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing"):
            value = ds.get(keyword)
            if value is None or len(value) != (
                3
                if keyword == "ImagePositionPatient"
                else 6
                if keyword == "ImageOrientationPatient"
                else 2
            ):
                raise MissingGeometry(
                    f"instance {ds.get('SOPInstanceUID', '?')} lacks a valid {keyword}"
                )
    sizes = {
        (int(ds.Rows), int(ds.Columns), tuple(round(float(v), 6) for v in ds.PixelSpacing))
        for ds in datasets
    }
    if len(sizes) > 1:
        raise MixedImageSize(
            f"slices of {len(sizes)} sizes (rows, columns, pixel spacing): {sorted(sizes)}"
        )
    orientations = np.array([[float(v) for v in ds.ImageOrientationPatient] for ds in datasets])
    if np.abs(orientations - orientations[0]).max() > _ORIENTATION_TOLERANCE:
        raise MixedOrientation("slices have different ImageOrientationPatient")
    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for ds in datasets])
    return orientations[0], positions


def _direction(orientation: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    row, col = orientation[:3], orientation[3:]
    row = row / np.linalg.norm(row)
    col = col / np.linalg.norm(col)
    normal = np.cross(row, col)
    return np.stack([row, col, normal], axis=1)


def sort_slices(
    datasets: Sequence[Dataset],
) -> tuple[list[Dataset], npt.NDArray[np.float64], float]:
    """Sort slices along the normal and check they form a regular volume.

    Parameters
    ----------
    datasets : sequence of pydicom.Dataset
        One CT series (headers are enough).

    Returns
    -------
    tuple
        Sorted datasets, ``(3, 3)`` float64 direction (columns: row, column,
        normal in LPS) and the slice spacing in mm.

    Raises
    ------
    ai.errors.SeriesError
        The specific subclass for what is wrong (see the module docstring).
    """
    if not datasets:
        raise EmptySeries("no images were handed in")
    _check_identity(datasets)
    orientation, positions = _geometry(datasets)
    direction = _direction(orientation)
    normal = direction[:, 2]
    tilt = max(abs(float(ds.get("GantryDetectorTilt", 0.0) or 0.0)) for ds in datasets)
    if tilt > _TILT_TOLERANCE_DEG:
        raise GantryTilt(f"GantryDetectorTilt {tilt:.2f} degrees")
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    along = along[order]
    positions = positions[order]
    sorted_ds = [datasets[i] for i in order]
    if len(sorted_ds) == 1:
        thickness = float(sorted_ds[0].get("SliceThickness", 0) or 0)
        return sorted_ds, direction, thickness if thickness > 0 else 1.0
    span = positions[-1] - positions[0]
    span_length = float(np.linalg.norm(span))
    if span_length > 0:
        cos_angle = abs(float(span @ normal)) / span_length
        angle = float(np.degrees(np.arccos(min(1.0, cos_angle))))
        if angle > _TILT_TOLERANCE_DEG:
            raise GantryTilt(f"slice positions deviate {angle:.2f} degrees from the slice normal")
    gaps = np.diff(along)
    step = float(np.median(gaps))
    tolerance = max(0.02 * step, 0.01)
    if (gaps < tolerance).any() or step < 0.01:
        index = int(np.argmin(gaps))
        raise DuplicateSlices(f"two slices at {along[index]:.3f} mm along the normal")
    off = np.abs(gaps - step) > tolerance
    if off.any():
        multiples = gaps[off] / step
        whole = np.abs(multiples - np.rint(multiples)) * step <= tolerance
        if whole.all() and (np.rint(multiples) >= 2).all():
            missing = int((np.rint(multiples) - 1).sum())
            raise MissingSlices(f"{missing} slice(s) missing in a series spaced {step:.3f} mm")
        raise UnevenSpacing(f"slice spacing varies from {gaps.min():.3f} to {gaps.max():.3f} mm")
    spacing = float((along[-1] - along[0]) / (len(along) - 1))
    return sorted_ds, direction, spacing


def _hu(ds: Dataset) -> npt.NDArray[np.float32]:
    try:
        stored = ds.pixel_array
    except Exception as exc:  # pydicom raises many types for bad/undecodable pixel data
        transfer_syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", "?")
        raise PixelDecodeError(
            f"instance {ds.get('SOPInstanceUID', '?')} ({transfer_syntax}): {exc}"
        ) from exc
    if stored.ndim != 2:
        raise NotCTSeries(
            f"instance {ds.get('SOPInstanceUID', '?')} has {stored.ndim}-D pixel data"
        )
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    result: npt.NDArray[np.float32] = stored.astype(np.float32) * np.float32(slope) + np.float32(
        intercept
    )
    return result


def load_series(
    sources: Iterable[SeriesSource], *, spacing: tuple[float, float, float] | None = (1.0, 1.0, 1.0)
) -> Volume:
    """Turn one CT series into a HU volume with its DICOM geometry.

    Parameters
    ----------
    sources : iterable of pydicom.Dataset or path
        The instances of one series, in any order.
    spacing : tuple of float or None, optional
        Output ``(z, y, x)`` spacing in mm (linear interpolation, origin and
        direction kept); ``None`` keeps the acquired grid.

    Returns
    -------
    Volume
        ``(z, y, x)`` float32 HU; ``z`` increases along the slice normal
        (row × column direction); ``origin`` is the first sorted slice's
        ImagePositionPatient; ``direction`` columns are the row, column and
        normal directions in LPS.

    Raises
    ------
    ai.errors.SeriesError
        A specific subclass for each reason the series cannot be a volume.
    """
    datasets = _read(sources)
    sorted_ds, direction, slice_spacing = sort_slices(datasets)
    array = np.stack([_hu(ds) for ds in sorted_ds])
    pixel_spacing = [float(v) for v in sorted_ds[0].PixelSpacing]
    origin = tuple(float(v) for v in sorted_ds[0].ImagePositionPatient)
    volume = Volume(
        array=array,
        spacing=(slice_spacing, pixel_spacing[0], pixel_spacing[1]),
        origin=(origin[0], origin[1], origin[2]),
        direction=direction,
    )
    logger.info(
        "series %s: %d slices %s spacing %s",
        sorted_ds[0].get("SeriesInstanceUID", "?"),
        len(sorted_ds),
        volume.shape,
        tuple(round(s, 3) for s in volume.spacing),
    )
    if spacing is None:
        return volume
    return resample(volume, spacing)


def to_sitk(volume: Volume) -> SimpleITK.Image:
    """The volume as a SimpleITK image with the same geometry.

    Parameters
    ----------
    volume : Volume
        Any volume.

    Returns
    -------
    SimpleITK.Image
        Same pixels; spacing/origin/direction in SimpleITK's ``(x, y, z)`` order.
    """
    image: Any = sitk.GetImageFromArray(np.ascontiguousarray(volume.array))
    image.SetSpacing(tuple(float(s) for s in volume.spacing[::-1]))
    image.SetOrigin(tuple(float(o) for o in volume.origin))
    image.SetDirection(tuple(float(d) for d in volume.direction.reshape(-1)))
    return cast(SimpleITK.Image, image)


def from_sitk(image: SimpleITK.Image) -> Volume:
    """A 3-D SimpleITK image as a :class:`Volume` (same geometry).

    Parameters
    ----------
    image : SimpleITK.Image
        3-D scalar image.

    Returns
    -------
    Volume
        ``(z, y, x)`` array as SimpleITK holds it.
    """
    img: Any = image  # SimpleITK has no type hints
    if img.GetDimension() != 3:
        raise ValueError(f"need a 3-D image, got {img.GetDimension()}-D")
    sx, sy, sz = img.GetSpacing()
    ox, oy, oz = img.GetOrigin()
    return Volume(
        array=sitk.GetArrayFromImage(img),
        spacing=(sz, sy, sx),
        origin=(ox, oy, oz),
        direction=np.array(img.GetDirection(), dtype=np.float64).reshape(3, 3),
    )


def resample(
    volume: Volume,
    spacing: tuple[float, float, float],
    *,
    interpolator: str = "linear",
    default_value: float = -1024.0,
) -> Volume:
    """Resample to a new ``(z, y, x)`` spacing over the same extent.

    Parameters
    ----------
    volume : Volume
        Input volume.
    spacing : tuple of float
        New ``(z, y, x)`` spacing in mm.
    interpolator : {"linear", "nearest", "bspline"}, optional
        ``nearest`` for label maps.
    default_value : float, optional
        Value outside the input (air in HU).

    Returns
    -------
    Volume
        float32 for linear/bspline, input dtype for nearest; origin and direction kept.
    """
    if len(spacing) != 3 or min(spacing) <= 0:
        raise ValueError(f"spacing must be three positive mm values, got {spacing}")
    size = [
        int(np.floor((n - 1) * old / new + 1e-6)) + 1
        for n, old, new in zip(volume.shape, volume.spacing, spacing, strict=True)
    ]
    reference = Volume(
        array=np.zeros((1, 1, 1), dtype=np.uint8),
        spacing=spacing,
        origin=volume.origin,
        direction=volume.direction,
    )
    return _resample_to(volume, reference, (size[0], size[1], size[2]), interpolator, default_value)


def resample_like(
    volume: Volume,
    reference: Volume,
    *,
    interpolator: str = "nearest",
    default_value: float = 0.0,
    transform: SimpleITK.Transform | None = None,
) -> Volume:
    """Resample ``volume`` onto the grid of ``reference`` (e.g. a truth lung mask).

    Parameters
    ----------
    volume : Volume
        Moving volume (HU or labels).
    reference : Volume
        Grid to sample on (shape, spacing, origin, direction).
    interpolator : {"nearest", "linear", "bspline"}, optional
        ``nearest`` (default) for label maps.
    default_value : float, optional
        Value outside ``volume``.
    transform : SimpleITK.Transform, optional
        Maps a world point of ``reference`` to the world point of ``volume``
        it is read from (SimpleITK's convention); default the identity.

    Returns
    -------
    Volume
        On the reference grid.
    """
    return _resample_to(
        volume, reference, reference.shape, interpolator, default_value, transform=transform
    )


_INTERPOLATORS = {
    "linear": sitk.sitkLinear,
    "nearest": sitk.sitkNearestNeighbor,
    "bspline": sitk.sitkBSpline,
}


def _resample_to(
    volume: Volume,
    reference: Volume,
    size_zyx: tuple[int, int, int],
    interpolator: str,
    default_value: float,
    *,
    transform: SimpleITK.Transform | None = None,
) -> Volume:
    if interpolator not in _INTERPOLATORS:
        raise ValueError(
            f"interpolator must be one of {sorted(_INTERPOLATORS)}, got {interpolator!r}"
        )
    image = to_sitk(volume)
    if interpolator != "nearest" and volume.array.dtype != np.float32:
        image = sitk.Cast(image, sitk.sitkFloat32)
    resampler = sitk.ResampleImageFilter()
    resampler.SetOutputSpacing(tuple(float(s) for s in reference.spacing[::-1]))
    resampler.SetOutputOrigin(tuple(float(o) for o in reference.origin))
    resampler.SetOutputDirection(tuple(float(d) for d in reference.direction.reshape(-1)))
    resampler.SetSize([int(size_zyx[2]), int(size_zyx[1]), int(size_zyx[0])])
    resampler.SetInterpolator(_INTERPOLATORS[interpolator])
    resampler.SetDefaultPixelValue(float(default_value))
    if transform is not None:
        resampler.SetTransform(transform)
    return from_sitk(resampler.Execute(image))


def read_image(path: str | os.PathLike[str]) -> Volume:
    """Read a 3-D image file SimpleITK knows (``.mha``, ``.mhd``, ``.nii.gz``) as a :class:`Volume`.

    Parameters
    ----------
    path : path
        The file.

    Returns
    -------
    Volume
        With the file's geometry.

    Raises
    ------
    RuntimeError
        SimpleITK cannot read it.
    ValueError
        It is not 3-D.
    """
    return from_sitk(sitk.ReadImage(os.fspath(path)))


def write_image(volume: Volume, path: str | os.PathLike[str], *, compress: bool = True) -> None:
    """Write a :class:`Volume` with its geometry (format from the suffix, e.g. ``.mha``).

    Parameters
    ----------
    volume : Volume
        What to write.
    path : path
        Target file.
    compress : bool, optional
        Compress the pixel data where the format allows.
    """
    sitk.WriteImage(to_sitk(volume), os.fspath(path), useCompression=compress)
