"""Frozen dataclasses that cross package lines.

``Volume`` is the one place where voxel and world (patient LPS, millimetres)
coordinates meet: every conversion goes through ``Volume.voxel_to_world`` and
``Volume.world_to_voxel``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

__all__ = ["Volume"]


@dataclass(frozen=True)
class Volume:
    """A CT volume in Hounsfield units with its position in the patient.

    Parameters
    ----------
    array : numpy.ndarray
        ``(z, y, x)`` float32 (or int16) Hounsfield units. ``z`` is the slice
        index along the slice normal, ``y`` the row, ``x`` the column.
    spacing : tuple of float
        ``(z, y, x)`` voxel size in mm.
    origin : tuple of float
        World position ``(x, y, z)`` in patient LPS mm of voxel ``[0, 0, 0]``'s
        centre (DICOM ImagePositionPatient of the first slice).
    direction : numpy.ndarray
        ``(3, 3)`` float64; column ``i`` is the LPS unit vector of voxel axis
        ``i`` in ``(x, y, z)`` index order, i.e. column 0 is the row direction
        (along columns, ImageOrientationPatient[0:3]), column 1 the column
        direction (ImageOrientationPatient[3:6]), column 2 the slice normal
        in the direction of increasing ``z`` index. Same convention as
        SimpleITK's ``GetDirection``.
    """

    array: npt.NDArray[np.floating] | npt.NDArray[np.integer]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: npt.NDArray[np.float64] = field(default_factory=lambda: np.eye(3))

    def __post_init__(self) -> None:
        if self.array.ndim != 3:
            raise ValueError(f"Volume array must be 3-D (z, y, x), got shape {self.array.shape}")
        if len(self.spacing) != 3 or min(self.spacing) <= 0:
            raise ValueError(f"spacing must be three positive mm values, got {self.spacing}")
        direction = np.asarray(self.direction, dtype=np.float64)
        if direction.shape != (3, 3):
            raise ValueError(f"direction must be 3x3, got {direction.shape}")
        object.__setattr__(self, "direction", direction)

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(z, y, x)`` voxel counts."""
        z, y, x = self.array.shape
        return (int(z), int(y), int(x))

    def voxel_to_world(self, zyx: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Map voxel indices to world coordinates.

        Parameters
        ----------
        zyx : array_like
            ``(..., 3)`` voxel coordinates in ``(z, y, x)`` order (may be fractional).

        Returns
        -------
        numpy.ndarray
            ``(..., 3)`` float64 world ``(x, y, z)`` LPS mm.
        """
        index_xyz = np.asarray(zyx, dtype=np.float64)[..., ::-1]
        spacing_xyz = np.asarray(self.spacing, dtype=np.float64)[::-1]
        result: npt.NDArray[np.float64] = (index_xyz * spacing_xyz) @ self.direction.T + np.asarray(
            self.origin, dtype=np.float64
        )
        return result

    def world_to_voxel(self, xyz: npt.ArrayLike) -> npt.NDArray[np.float64]:
        """Map world coordinates to (fractional) voxel indices.

        Parameters
        ----------
        xyz : array_like
            ``(..., 3)`` world ``(x, y, z)`` LPS mm.

        Returns
        -------
        numpy.ndarray
            ``(..., 3)`` float64 voxel coordinates in ``(z, y, x)`` order.
        """
        offset = np.asarray(xyz, dtype=np.float64) - np.asarray(self.origin, dtype=np.float64)
        spacing_xyz = np.asarray(self.spacing, dtype=np.float64)[::-1]
        index_xyz = (offset @ np.linalg.inv(self.direction).T) / spacing_xyz
        result: npt.NDArray[np.float64] = index_xyz[..., ::-1]
        return result
