"""Registering a patient's prior scan to the current one, from a compact per-series image.

The node registers the current series against priors processed long ago,
whose pixel data may be gone. So each series leaves a
:class:`RegistrationImage` when it is processed: the chest around the lungs,
blurred and resampled to :data:`SPACING_MM`, lung-windowed to ``uint8``, with
its lung mask, geometry and nothing else (no identifiers); 140-270 KB
with :meth:`RegistrationImage.to_bytes`.

:func:`register` aligns two of them with SimpleITK: the lungs' centres of
mass first, then a rigid (Euler) and an affine transform, each maximising
Mattes mutual information inside the current scan's dilated lungs on a two-level
pyramid. The :class:`Registration` maps world points (patient LPS mm) of the
current scan to the prior and back.
"""

from __future__ import annotations

import json
import logging
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from ai.lungs import LungMask, lung_bbox
from ai.types import Volume
from ai.volume import from_sitk, resample_like, sitk, to_sitk

__all__ = [
    "HU_WINDOW",
    "SPACING_MM",
    "Registration",
    "RegistrationImage",
    "register",
    "registration_image",
]

logger = logging.getLogger(__name__)

#: Voxel size of the compact image, mm.
SPACING_MM = 4.0
#: HU mapped to 0 and 255.
HU_WINDOW: tuple[float, float] = (-1024.0, 476.0)
_MAGIC = b"DNREG1"


@dataclass(frozen=True)
class RegistrationImage:
    """The compact per-series image :func:`register` works on.

    Parameters
    ----------
    image : numpy.ndarray
        ``(z, y, x)`` uint8: HU in :data:`HU_WINDOW` scaled to 0-255.
    lungs : numpy.ndarray
        ``(z, y, x)`` bool, both lungs.
    spacing, origin : tuple of float
        ``(z, y, x)`` mm and the world ``(x, y, z)`` of voxel ``[0, 0, 0]``.
    direction : numpy.ndarray
        ``(3, 3)`` as :class:`ai.types.Volume`.
    """

    image: npt.NDArray[np.uint8]
    lungs: npt.NDArray[np.bool_]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: npt.NDArray[np.float64] = field(default_factory=lambda: np.eye(3))

    def __post_init__(self) -> None:
        if self.image.ndim != 3 or self.image.shape != self.lungs.shape:
            raise ValueError(f"image {self.image.shape} and lungs {self.lungs.shape} differ")

    def volume(self) -> Volume:
        """The image back in (approximate) HU, float32."""
        low, high = HU_WINDOW
        hu = self.image.astype(np.float32) * np.float32((high - low) / 255.0) + np.float32(low)
        return Volume(hu, self.spacing, self.origin, self.direction)

    def to_bytes(self) -> bytes:
        """``DNREG1``, a JSON header, the zlib-compressed image and packed lung bits."""
        header = json.dumps(
            {
                "shape": list(self.image.shape),
                "spacing": list(self.spacing),
                "origin": list(self.origin),
                "direction": self.direction.reshape(-1).tolist(),
                "hu_window": list(HU_WINDOW),
            }
        ).encode()
        image = zlib.compress(np.ascontiguousarray(self.image).tobytes(), 9)
        lungs = zlib.compress(np.packbits(self.lungs.reshape(-1)).tobytes(), 9)
        sizes = struct.pack("<III", len(header), len(image), len(lungs))
        return b"".join([_MAGIC, sizes, header, image, lungs])

    @classmethod
    def from_bytes(cls, data: bytes) -> RegistrationImage:
        """Inverse of :meth:`to_bytes`.

        Raises
        ------
        ValueError
            Not such bytes, or truncated.
        """
        if not data.startswith(_MAGIC) or len(data) < len(_MAGIC) + 12:
            raise ValueError("not a dicom-node registration image")
        start = len(_MAGIC) + 12
        n_header, n_image, n_lungs = struct.unpack("<III", data[len(_MAGIC) : start])
        if len(data) != start + n_header + n_image + n_lungs:
            raise ValueError("truncated registration image")
        header = json.loads(data[start : start + n_header])
        shape = tuple(int(v) for v in header["shape"])
        body = data[start + n_header :]
        image = np.frombuffer(zlib.decompress(body[:n_image]), np.uint8).reshape(shape)
        bits = np.frombuffer(zlib.decompress(body[n_image:]), np.uint8)
        lungs = np.unpackbits(bits)[: int(np.prod(shape))].astype(bool).reshape(shape)
        return cls(
            image=image.copy(),
            lungs=lungs,
            spacing=_triple(header["spacing"]),
            origin=_triple(header["origin"]),
            direction=np.asarray(header["direction"], np.float64).reshape(3, 3),
        )


def _triple(values: list[float]) -> tuple[float, float, float]:
    return (float(values[0]), float(values[1]), float(values[2]))


def registration_image(
    volume: Volume,
    lung_mask: LungMask,
    *,
    spacing_mm: float = SPACING_MM,
    margin_mm: float = 20.0,
) -> RegistrationImage:
    """Make the compact image of one series.

    Parameters
    ----------
    volume : Volume
        ``(z, y, x)`` HU.
    lung_mask : LungMask
        Its lungs (same grid).
    spacing_mm : float
        Voxel size of the result.
    margin_mm : float
        Chest kept around the lungs' bounding box.

    Returns
    -------
    RegistrationImage
    """
    lungs = lung_mask.lungs
    margin = [int(np.ceil(margin_mm / s)) for s in volume.spacing]
    box = lung_bbox(lungs, margin=0)
    if box[0].stop == 0:
        box = (slice(0, volume.shape[0]), slice(0, volume.shape[1]), slice(0, volume.shape[2]))
    box = tuple(
        slice(max(0, b.start - m), min(n, b.stop + m))
        for b, m, n in zip(box, margin, volume.shape, strict=True)
    )  # type: ignore[assignment]
    corner = volume.voxel_to_world([b.start for b in box])
    cropped = Volume(
        array=np.asarray(volume.array[box], dtype=np.float32),
        spacing=volume.spacing,
        origin=(float(corner[0]), float(corner[1]), float(corner[2])),
        direction=volume.direction,
    )
    # anti-aliasing before the coarse grid: a Gaussian of half the new voxel size
    smooth: Any = sitk.SmoothingRecursiveGaussian(to_sitk(cropped), 0.5 * spacing_mm)
    extent = [(n - 1) * s for n, s in zip(cropped.shape, cropped.spacing, strict=True)]
    shape = tuple(max(2, int(np.floor(e / spacing_mm)) + 1) for e in extent)
    reference = Volume(
        array=np.zeros(shape, np.uint8),
        spacing=(spacing_mm, spacing_mm, spacing_mm),
        origin=cropped.origin,
        direction=cropped.direction,
    )
    hu = resample_like(from_sitk(smooth), reference, interpolator="linear", default_value=-1024.0)
    lung_volume = Volume(
        lungs[box].astype(np.uint8), volume.spacing, cropped.origin, volume.direction
    )
    lung_coarse = resample_like(lung_volume, reference, interpolator="linear").array > 0.5
    low, high = HU_WINDOW
    image = np.clip(np.rint((np.asarray(hu.array) - low) * 255.0 / (high - low)), 0, 255)
    return RegistrationImage(
        image=image.astype(np.uint8),
        lungs=np.asarray(lung_coarse, dtype=bool),
        spacing=reference.spacing,
        origin=reference.origin,
        direction=np.asarray(reference.direction),
    )


@dataclass(frozen=True)
class Registration:
    """An affine map between a current scan's world and a prior's (both patient LPS mm).

    Parameters
    ----------
    current_to_prior : numpy.ndarray
        ``(4, 4)`` homogeneous matrix: a current world point -> the prior's.
    metric : float
        Final Mattes mutual information (negative; lower is better).
    rigid_only : bool
        The affine stage failed or moved implausibly and the rigid result is kept.
    """

    current_to_prior: npt.NDArray[np.float64]
    metric: float = 0.0
    rigid_only: bool = False

    @classmethod
    def identity(cls) -> Registration:
        """No motion (same frame)."""
        return cls(np.eye(4))

    @property
    def prior_to_current(self) -> npt.NDArray[np.float64]:
        """``(4, 4)`` inverse map."""
        return np.asarray(np.linalg.inv(self.current_to_prior), dtype=np.float64)

    def map_prior_to_current(self, xyz: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """``(..., 3)`` prior world points in the current scan's world."""
        return _apply(self.prior_to_current, xyz)

    def map_current_to_prior(self, xyz: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """``(..., 3)`` current world points in the prior's world."""
        return _apply(self.current_to_prior, xyz)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return {
            "current_to_prior": self.current_to_prior.tolist(),
            "metric": self.metric,
            "rigid_only": self.rigid_only,
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Registration:
        """Inverse of :meth:`to_dict`."""
        return cls(
            np.asarray(values["current_to_prior"], np.float64),
            float(values.get("metric", 0.0)),
            bool(values.get("rigid_only", False)),
        )


def _apply(matrix: npt.NDArray[np.float64], xyz: npt.ArrayLike) -> npt.NDArray[np.float64]:
    points = np.asarray(xyz, dtype=np.float64)
    result: npt.NDArray[np.float64] = points @ matrix[:3, :3].T + matrix[:3, 3]
    return result


def _matrix(transform: Any) -> npt.NDArray[np.float64]:
    """4x4 matrix of an affine SimpleITK transform (fixed point -> moving point), by probing it."""
    origin = np.asarray(transform.TransformPoint((0.0, 0.0, 0.0)), np.float64)
    out = np.eye(4)
    for axis in range(3):
        unit = [0.0, 0.0, 0.0]
        unit[axis] = 100.0
        moved = np.asarray(transform.TransformPoint(tuple(unit)), np.float64)
        out[:3, axis] = (moved - origin) / 100.0
    out[:3, 3] = origin
    return out


def _as_affine(matrix: npt.NDArray[np.float64], centre: npt.NDArray[np.float64]) -> Any:
    """A SimpleITK affine transform with the given 4x4 matrix, rotating about ``centre``."""
    affine = sitk.AffineTransform(3)
    affine.SetCenter(tuple(float(v) for v in centre))
    affine.SetMatrix(tuple(float(v) for v in matrix[:3, :3].reshape(-1)))
    translation = matrix[:3, 3] + matrix[:3, :3] @ centre - centre
    affine.SetTranslation(tuple(float(v) for v in translation))
    return affine


def _method(fixed_mask: Any, *, iterations: int, seed: int) -> Any:
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetMetricSamplingStrategy(method.RANDOM)
    method.SetMetricSamplingPercentage(0.25, seed)
    method.SetMetricFixedMask(fixed_mask)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=1.0, minStep=1e-3, numberOfIterations=iterations, relaxationFactor=0.6
    )
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel([2, 1])
    method.SetSmoothingSigmasPerLevel([1.0, 0.0])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    return method


def register(
    current: RegistrationImage,
    prior: RegistrationImage,
    *,
    iterations: int = 150,
    seed: int = 0,
) -> Registration:
    """Register a prior scan to the current one (rigid, then affine).

    Parameters
    ----------
    current, prior : RegistrationImage
        The compact images of the two series (:func:`registration_image`).
    iterations : int
        Most optimiser steps per level and stage.
    seed : int
        Seed of the metric's random sampling (results are reproducible).

    Returns
    -------
    Registration
        ``current_to_prior`` maps the current scan's world to the prior's.
    """
    fixed = sitk.Cast(to_sitk(current.volume()), sitk.sitkFloat32)
    moving = sitk.Cast(to_sitk(prior.volume()), sitk.sitkFloat32)
    fixed_lungs = to_sitk(
        Volume(current.lungs.astype(np.uint8), current.spacing, current.origin, current.direction)
    )
    moving_lungs = to_sitk(
        Volume(prior.lungs.astype(np.uint8), prior.spacing, prior.origin, prior.direction)
    )
    mask = sitk.BinaryDilate(fixed_lungs, [3, 3, 3])
    initial = sitk.CenteredTransformInitializer(
        fixed_lungs,
        moving_lungs,
        sitk.Euler3DTransform(),
        sitk.CenteredTransformInitializerFilter.MOMENTS,
    )
    rigid_method = _method(mask, iterations=iterations, seed=seed)
    rigid_method.SetInitialTransform(initial, inPlace=False)
    rigid_matrix = _matrix(rigid_method.Execute(fixed, moving))
    centre = np.asarray(initial.GetCenter(), np.float64)
    affine_method = _method(mask, iterations=iterations, seed=seed)
    affine_method.SetInitialTransform(_as_affine(rigid_matrix, centre), inPlace=False)
    try:
        matrix = _matrix(affine_method.Execute(fixed, moving))
        metric = float(affine_method.GetMetricValue())
    except RuntimeError as exc:
        logger.warning("affine registration failed (%s); keeping the rigid one", exc)
        return Registration(rigid_matrix, float(rigid_method.GetMetricValue()), rigid_only=True)
    scales = np.linalg.svd(matrix[:3, :3], compute_uv=False)
    if scales.max() > 1.25 or scales.min() < 0.8:
        logger.warning("affine registration scales %s implausibly; keeping the rigid one", scales)
        return Registration(rigid_matrix, float(rigid_method.GetMetricValue()), rigid_only=True)
    return Registration(matrix, metric)
