"""Lung segmentation from a CT volume in Hounsfield units.

The method of ``shared/papers.md`` (threshold + morphology + components,
papers 001 and 004), made robust and run with torch on the GPU when present:

1. **Air** is ``HU < air_threshold_hu`` (torch). Air components (cc3d,
   6-connectivity) that touch the in-plane faces of the volume are outside
   the body; the rest is *internal air* (lungs, airways, sometimes bowel gas).
   Components smaller than ``min_component_fraction`` of the largest are
   dropped.
2. **Airways**: the trachea and main bronchi are the very dark
   (``HU < airway_threshold_hu``) internal-air component that reaches the
   superior end of the lungs near the body's midline; the threshold is lowered
   step by step if that component leaks into the parenchyma. It is removed
   (with a one-voxel rim) from the lungs.
3. **Left and right**: the two largest remaining components. When the lungs
   touch (anterior or posterior junction, or joined through an airway that
   was not found) they are eroded on a 2 mm grid, millimetre by millimetre,
   until they part; every lung voxel then takes the label of the nearer core.
   The lung whose centroid has the smaller LPS ``x`` is the patient's right
   lung (label 1); the other is the left lung (label 2).
4. **Vessels and juxtapleural nodules kept**: each lung is closed with a ball
   of ``closing_mm`` on a coarse isotropic grid (torch max-pooling) and its
   holes are filled (3-D holes, and small in-plane holes slice by slice).

Torch does the thresholds and the morphology (``device`` picks CPU or CUDA);
connected components run on the CPU with connected-components-3d, the fastest
correct tool there. Results are the same on both devices.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import cc3d
import numpy as np
import numpy.typing as npt
import torch
import torch.nn.functional as F
from scipy import ndimage

from ai.errors import NotALungCT
from ai.types import Volume

__all__ = [
    "LungMask",
    "segment_lungs",
    "close_mask",
    "dilate_mask",
    "erode_mask",
    "fill_lung",
    "lung_bbox",
]

logger = logging.getLogger(__name__)

RIGHT_LUNG = 1
LEFT_LUNG = 2
#: Grid (mm) on which touching lungs are parted.
PARTING_GRID_MM = 2.0


@dataclass(frozen=True)
class LungMask:
    """Lungs found in one volume.

    Parameters
    ----------
    labels : numpy.ndarray
        ``(z, y, x)`` uint8, same grid as the volume: 0 outside the lungs,
        1 the patient's right lung, 2 the left lung. Vessels and
        juxtapleural nodules inside the lungs are included.
    airway : numpy.ndarray
        ``(z, y, x)`` bool, trachea and main bronchi (the removed airway).
    spacing : tuple of float
        ``(z, y, x)`` voxel size in mm (the volume's).
    """

    labels: npt.NDArray[np.uint8]
    airway: npt.NDArray[np.bool_]
    spacing: tuple[float, float, float]

    @property
    def lungs(self) -> npt.NDArray[np.bool_]:
        """``(z, y, x)`` bool, both lungs."""
        result: npt.NDArray[np.bool_] = self.labels > 0
        return result

    def volume_ml(self, label: int | None = None) -> float:
        """Volume of one lung (``1`` or ``2``) or both (``None``) in millilitres."""
        count = int(np.count_nonzero(self.labels == label if label else self.labels))
        return count * float(np.prod(self.spacing)) / 1000.0


# --------------------------------------------------------------------------- morphology


def _as_5d(mask: torch.Tensor) -> torch.Tensor:
    return mask.to(torch.float32)[None, None]


def dilate_mask(mask: torch.Tensor, iterations: int = 1, *, ball: bool = True) -> torch.Tensor:
    """Binary dilation by max-pooling.

    Parameters
    ----------
    mask : torch.Tensor
        ``(z, y, x)`` bool.
    iterations : int
        Radius in voxels.
    ball : bool
        Alternate a 3x3x3 cube with a 6-neighbour cross so that the
        structuring element approximates a ball; ``False`` uses the cross only.

    Returns
    -------
    torch.Tensor
        ``(z, y, x)`` bool on the same device.
    """
    x = _as_5d(mask)
    for i in range(iterations):
        if ball and i % 2 == 0:  # 3x3x3 cube as three separable 1-D pools
            x = F.max_pool3d(x, kernel_size=(3, 1, 1), stride=1, padding=(1, 0, 0))
            x = F.max_pool3d(x, kernel_size=(1, 3, 1), stride=1, padding=(0, 1, 0))
            x = F.max_pool3d(x, kernel_size=(1, 1, 3), stride=1, padding=(0, 0, 1))
        else:
            x = torch.maximum(
                torch.maximum(
                    F.max_pool3d(x, kernel_size=(3, 1, 1), stride=1, padding=(1, 0, 0)),
                    F.max_pool3d(x, kernel_size=(1, 3, 1), stride=1, padding=(0, 1, 0)),
                ),
                F.max_pool3d(x, kernel_size=(1, 1, 3), stride=1, padding=(0, 0, 1)),
            )
    return x[0, 0] > 0.5


def erode_mask(mask: torch.Tensor, iterations: int = 1, *, ball: bool = True) -> torch.Tensor:
    """Binary erosion (dual of :func:`dilate_mask`; outside the array counts as foreground)."""
    return ~dilate_mask(~mask, iterations, ball=ball)


def close_mask(
    mask: torch.Tensor,
    radius_mm: float,
    spacing: tuple[float, float, float],
    *,
    grid_steps: float = 4.0,
) -> torch.Tensor:
    """Close a mask with a ball of ``radius_mm``, on a coarse isotropic grid.

    The mask is pooled to a grid of about ``radius_mm / grid_steps`` mm (never finer
    than the volume), closed there with a ball-like element, and only the
    voxels the closing adds are brought back (nearest neighbour) to the fine
    grid, so the original mask is never eroded.

    Parameters
    ----------
    mask : torch.Tensor
        ``(z, y, x)`` bool.
    radius_mm : float
        Ball radius in mm; ``<= 0`` returns the mask unchanged.
    spacing : tuple of float
        ``(z, y, x)`` voxel size in mm.
    grid_steps : float
        Coarse voxels per radius (more is finer and slower).

    Returns
    -------
    torch.Tensor
        ``(z, y, x)`` bool, a superset of ``mask``.
    """
    if radius_mm <= 0 or not bool(mask.any()):
        return mask
    coarse_mm = max(max(spacing), radius_mm / grid_steps)
    factors = [max(1, int(round(coarse_mm / s))) for s in spacing]
    pad = [(f - n % f) % f for n, f in zip(mask.shape, factors, strict=True)]
    x = F.pad(_as_5d(mask), (0, pad[2], 0, pad[1], 0, pad[0]))
    coarse = F.avg_pool3d(x, kernel_size=factors, stride=factors)[0, 0] > 0.25
    grid = [s * f for s, f in zip(spacing, factors, strict=True)]
    radius = max(1, int(round(radius_mm / min(grid))))
    margin = radius + 1
    padded = F.pad(coarse[None, None].float(), (margin,) * 6)[0, 0] > 0.5
    closed = erode_mask(dilate_mask(padded, radius), radius)
    closed = closed[margin:-margin, margin:-margin, margin:-margin]
    added = closed & ~coarse
    fine = added.repeat_interleave(factors[0], 0).repeat_interleave(factors[1], 1)
    fine = fine.repeat_interleave(factors[2], 2)[: mask.shape[0], : mask.shape[1], : mask.shape[2]]
    return mask | fine


def _fill_holes(
    mask: npt.NDArray[np.bool_], spacing: tuple[float, float, float], max_hole_mm2: float
) -> npt.NDArray[np.bool_]:
    """Fill 3-D holes, then axial-slice holes of at most ``max_hole_mm2``.

    A whole-slice fill would also fill the diaphragm dome, which the lung base
    rings in axial slices; the dome is open downwards in 3-D and wide, so the
    3-D fill and the area limit both leave it out, while vessels and nodules
    (small in-plane holes) are filled.
    """
    background = np.pad(~mask, 1, constant_values=True)
    labels = cc3d.connected_components(background, connectivity=6)
    out: npt.NDArray[np.bool_] = (
        mask | ((labels != labels[0, 0, 0]) & (labels > 0))[1:-1, 1:-1, 1:-1]
    )
    max_pixels = max_hole_mm2 / (spacing[1] * spacing[2])
    for z in np.flatnonzero(out.any(axis=(1, 2))):
        plane = np.pad(~out[z], 1, constant_values=True)
        plane_labels = cc3d.connected_components(plane, connectivity=4)
        sizes = np.bincount(plane_labels.ravel())
        small = sizes <= max_pixels
        small[0] = False
        small[plane_labels[0, 0]] = False
        out[z] |= small[plane_labels][1:-1, 1:-1]
    return out


def fill_lung(
    lung: torch.Tensor,
    spacing: tuple[float, float, float],
    *,
    closing_mm: float = 6.0,
    max_hole_mm2: float = 400.0,
) -> npt.NDArray[np.bool_]:
    """Bring vessels and juxtapleural nodules into one lung's air mask.

    Parameters
    ----------
    lung : torch.Tensor
        ``(z, y, x)`` bool, the lung's air voxels (any device).
    spacing : tuple of float
        ``(z, y, x)`` voxel size in mm.
    closing_mm : float
        Radius of the closing (:func:`close_mask`).
    max_hole_mm2 : float
        Largest in-plane hole filled slice by slice (3-D holes are always filled).

    Returns
    -------
    numpy.ndarray
        ``(z, y, x)`` bool, a superset of ``lung``.
    """
    closed = close_mask(lung, closing_mm, spacing).cpu().numpy()
    return _fill_holes(closed, spacing, max_hole_mm2)


def lung_bbox(mask: npt.NDArray[np.bool_], margin: int = 0) -> tuple[slice, slice, slice]:
    """Bounding box of a ``(z, y, x)`` mask as slices, grown by ``margin`` voxels."""
    if not mask.any():
        return (slice(0, 0), slice(0, 0), slice(0, 0))
    result = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        idx = np.flatnonzero(mask.any(axis=other))
        result.append(
            slice(max(0, int(idx[0]) - margin), min(mask.shape[axis], int(idx[-1]) + 1 + margin))
        )
    return (result[0], result[1], result[2])


# --------------------------------------------------------------------------- steps


def _internal_air(
    air: npt.NDArray[np.bool_], min_fraction: float
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.bool_]]:
    """All air not connected to the in-plane faces, and its large components."""
    labels = cc3d.connected_components(air, connectivity=6)
    faces = np.concatenate(
        [
            labels[:, 0, :].ravel(),
            labels[:, -1, :].ravel(),
            labels[:, :, 0].ravel(),
            labels[:, :, -1].ravel(),
        ]
    )
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    sizes[np.unique(faces)] = 0
    if sizes.max(initial=0) == 0:
        return np.zeros_like(air), np.zeros_like(air)
    inside: npt.NDArray[np.bool_] = (sizes > 0)[labels]
    keep: npt.NDArray[np.bool_] = (sizes >= max(1, min_fraction * sizes.max()))[labels]
    return inside, keep


def _superior_order(volume: Volume) -> int:
    """+1 if increasing ``z`` index goes superior (+LPS z), else -1."""
    return 1 if volume.direction[2, 2] >= 0 else -1


def _find_airway(
    hu: torch.Tensor, air: npt.NDArray[np.bool_], volume: Volume, threshold_hu: float
) -> npt.NDArray[np.bool_]:
    """Trachea and main bronchi inside ``air`` (bool ``(z, y, x)``), possibly empty."""
    box = lung_bbox(air)
    air_box = air[box]
    total = int(air_box.sum())
    voxel_ml = float(np.prod(volume.spacing)) / 1000.0
    sup = _superior_order(volume)
    z_count = air_box.shape[0]
    top_mm = 25.0
    top_slices = max(1, int(round(top_mm / volume.spacing[0])))
    x_coords = np.flatnonzero(air_box.any(axis=(0, 1)))
    x_mid = 0.5 * (x_coords[0] + x_coords[-1])
    x_half = 0.5 * (x_coords[-1] - x_coords[0] + 1)
    hu_box = hu[box].cpu().numpy() if hu.device.type != "cpu" else hu[box].numpy()
    for threshold in (threshold_hu, threshold_hu - 25.0, threshold_hu - 40.0):
        dark = (hu_box < threshold) & air_box
        labels = cc3d.connected_components(dark, connectivity=6)
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        order = np.argsort(sizes)[::-1]
        best = 0
        for label in order[:20]:
            if sizes[label] * voxel_ml < 1.0:
                break
            zs = np.flatnonzero((labels == label).any(axis=(1, 2)))
            reaches_top = (zs[-1] >= z_count - top_slices) if sup > 0 else (zs[0] < top_slices)
            if not reaches_top:
                continue
            top_z = zs[-1] if sup > 0 else zs[0]
            xs = np.nonzero(labels[top_z] == label)[1]
            if abs(xs.mean() - x_mid) <= 0.35 * x_half:
                best = int(label)
                break
        if best == 0:
            logger.info("no airway found at %.0f HU", threshold)
            return np.zeros_like(air)
        if sizes[best] <= 0.15 * total:
            result = np.zeros_like(air)
            result[box] = labels == best
            logger.debug("airway %.1f ml at %.0f HU", sizes[best] * voxel_ml, threshold)
            return result
        logger.info(
            "airway leaks at %.0f HU (%.0f ml), lowering threshold",
            threshold,
            sizes[best] * voxel_ml,
        )
    return np.zeros_like(air)


def _split_left_right(
    lungs: torch.Tensor, volume: Volume, max_parting_mm: float
) -> npt.NDArray[np.uint8]:
    """Label the two lungs 1 (right) / 2 (left) in a bool ``(z, y, x)`` tensor."""
    mask = lungs.cpu().numpy()
    labels = cc3d.connected_components(mask, connectivity=6)
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    if sizes.max(initial=0) == 0:
        raise NotALungCT("no lungs found: no internal air region")
    order = np.argsort(sizes)[::-1]
    two = len(order) > 2 and sizes[order[1]] >= 0.1 * sizes[order[0]]
    if two:
        seeds = np.zeros(mask.shape, dtype=np.uint8)
        seeds[labels == order[0]] = 1
        seeds[labels == order[1]] = 2
        rest = mask & (seeds == 0)
        if rest.any():
            seeds = _assign_rest(seeds, rest)
    else:
        seeds = _part_by_erosion(lungs, volume.spacing, max_parting_mm)
    return _orient(seeds, volume)


def _part_by_erosion(
    lungs: torch.Tensor, spacing: tuple[float, float, float], max_parting_mm: float
) -> npt.NDArray[np.uint8]:
    """Part touching lungs: erode on a coarse grid until two cores appear, share the rest.

    The lungs are pooled to a grid of about :data:`PARTING_GRID_MM`, eroded
    there (alternating cube and cross, so the element grows like a ball) until
    the two largest components each hold 5 % of the lungs, and every lung
    voxel takes the label of the nearer core (Euclidean distance on the coarse
    grid). Working in millimetres, not voxels, parts a wide anterior junction
    or lungs joined through the trachea on thin and thick slices alike.
    """
    factors = [max(1, int(round(PARTING_GRID_MM / s))) for s in spacing]
    pad = [(f - n % f) % f for n, f in zip(lungs.shape, factors, strict=True)]
    pooled = F.avg_pool3d(
        F.pad(_as_5d(lungs), (0, pad[2], 0, pad[1], 0, pad[0])), factors, factors
    )[0, 0]
    coarse = pooled >= 0.5
    grid = [s * f for s, f in zip(spacing, factors, strict=True)]
    full = max(1, int(coarse.sum()))
    eroded = coarse
    depth_mm = 0.0
    step = 0
    cores: npt.NDArray[np.uint8] | None = None
    while depth_mm < max_parting_mm and bool(eroded.any()):
        eroded = erode_mask(eroded, 1, ball=step % 2 == 0)
        step += 1
        depth_mm += min(grid)
        labels = cc3d.connected_components(eroded.cpu().numpy(), connectivity=6)
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        order = np.argsort(sizes)[::-1]
        if len(order) > 2 and sizes[order[1]] >= 0.05 * full:
            logger.debug("lungs parted %.1f mm deep", depth_mm)
            cores = np.zeros(labels.shape, dtype=np.uint8)
            cores[labels == order[0]] = 1
            cores[labels == order[1]] = 2
            break
    mask = lungs.cpu().numpy()
    if cores is None:
        return _split_at_thinnest_column(mask)
    _, nearest = ndimage.distance_transform_edt(cores == 0, sampling=grid, return_indices=True)
    coarse_labels = cores[tuple(nearest)]
    fine = coarse_labels
    for axis, f in enumerate(factors):
        fine = np.repeat(fine, f, axis=axis)
    fine = fine[: mask.shape[0], : mask.shape[1], : mask.shape[2]]
    result: npt.NDArray[np.uint8] = np.where(mask, fine, 0).astype(np.uint8)
    return result


def _split_at_thinnest_column(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.uint8]:
    """Last resort: cut at the column (x) of least lung in the middle third."""
    profile = mask.sum(axis=(0, 1))
    xs = np.flatnonzero(profile)
    lo, hi = xs[0], xs[-1]
    third = max(1, (hi - lo) // 3)
    middle = np.arange(lo + third, hi - third + 1)
    cut = int(middle[np.argmin(profile[middle])]) if middle.size else (lo + hi) // 2
    logger.warning("lungs could not be parted by erosion; splitting at the thinnest column")
    seeds = np.zeros(mask.shape, dtype=np.uint8)
    seeds[:, :, :cut][mask[:, :, :cut]] = 1
    seeds[:, :, cut:][mask[:, :, cut:]] = 2
    return seeds


def _assign_rest(
    seeds: npt.NDArray[np.uint8], rest: npt.NDArray[np.bool_]
) -> npt.NDArray[np.uint8]:
    """Give each leftover component the label of the nearer lung (by centroid)."""
    centroids = [np.argwhere(seeds == v).mean(axis=0) for v in (1, 2)]
    labels = cc3d.connected_components(rest, connectivity=6)
    out = seeds.copy()
    for _, points in _components(labels):
        c = points.mean(axis=0)
        nearest = 1 + int(np.linalg.norm(c - centroids[1]) < np.linalg.norm(c - centroids[0]))
        out[tuple(points.T)] = nearest
    return out


def _components(labels: npt.NDArray[np.integer]) -> list[tuple[int, npt.NDArray[np.intp]]]:
    flat = labels.ravel()
    idx = np.flatnonzero(flat)
    order = np.argsort(flat[idx], kind="stable")
    idx = idx[order]
    values, starts = np.unique(flat[idx], return_index=True)
    groups = np.split(idx, starts[1:])
    return [
        (int(v), np.stack(np.unravel_index(g, labels.shape), axis=1))
        for v, g in zip(values, groups, strict=True)
    ]


def _orient(seeds: npt.NDArray[np.uint8], volume: Volume) -> npt.NDArray[np.uint8]:
    """Relabel so that 1 is the lung with the smaller world LPS x (patient's right)."""
    centres = [volume.voxel_to_world(np.argwhere(seeds == v).mean(axis=0)) for v in (1, 2)]
    if centres[0][0] <= centres[1][0]:
        return seeds
    swapped = seeds.copy()
    swapped[seeds == 1] = 2
    swapped[seeds == 2] = 1
    return swapped


# --------------------------------------------------------------------------- entry point


def segment_lungs(
    volume: Volume,
    *,
    device: str | torch.device = "cpu",
    air_threshold_hu: float = -400.0,
    airway_threshold_hu: float = -950.0,
    airway_rim_mm: float = 2.0,
    closing_mm: float = 6.0,
    min_component_fraction: float = 0.05,
    max_parting_mm: float = 30.0,
    max_hole_mm2: float = 400.0,
) -> LungMask:
    """Segment and label the lungs of a chest CT volume.

    Parameters
    ----------
    volume : ai.types.Volume
        ``(z, y, x)`` HU volume with spacing in mm, any resolution.
    device : str or torch.device
        Where the torch steps run (``"cpu"``, ``"cuda"``).
    air_threshold_hu : float
        Voxels below this are air or lung parenchyma.
    airway_threshold_hu : float
        Starting threshold for the airway region (lowered if it leaks).
    airway_rim_mm : float
        The airway grown by this much (its wall's partial-volume voxels) is
        taken out of the lungs.
    closing_mm : float
        Radius of the closing that brings vessels and juxtapleural nodules
        into each lung.
    min_component_fraction : float
        Internal-air components smaller than this fraction of the largest are
        dropped.
    max_parting_mm : float
        Deepest erosion (mm) tried to part touching lungs.
    max_hole_mm2 : float
        Largest in-plane hole filled slice by slice (3-D holes are always filled).

    Returns
    -------
    LungMask
        Labels ``(z, y, x)`` uint8 (1 right, 2 left) and the airway mask.

    Raises
    ------
    ai.errors.NotALungCT
        If no internal air region (lungs) is found.
    """
    started = time.perf_counter()
    hu = torch.as_tensor(np.asarray(volume.array), device=device).to(torch.float32)
    air = (hu < air_threshold_hu).cpu().numpy()
    all_internal, internal = _internal_air(air, min_component_fraction)
    if not internal.any():
        raise NotALungCT(
            "no internal air region: not a chest CT or the body is cut by the field of view"
        )
    # the trachea may be its own (small) component when the bronchi are thin:
    # look in all internal air
    airway = _find_airway(hu, all_internal, volume, airway_threshold_hu)
    lungs_np = internal
    if airway.any():
        # the wall's partial-volume voxels (between the airway and air thresholds) go with it
        steps = max(1, int(round(airway_rim_mm / min(volume.spacing))))
        near = lung_bbox(airway, margin=steps)
        rim = dilate_mask(torch.from_numpy(airway[near]).to(device), steps).cpu().numpy()
        lungs_np = internal.copy()
        lungs_np[near] &= ~rim
    box = lung_bbox(lungs_np, margin=2)
    lungs = torch.from_numpy(np.ascontiguousarray(lungs_np[box])).to(device)
    seeds = _split_left_right(lungs, volume, max_parting_mm)
    labels_box = np.zeros(seeds.shape, dtype=np.uint8)
    for value in (RIGHT_LUNG, LEFT_LUNG):
        one = torch.from_numpy(seeds == value).to(device)
        filled = fill_lung(one, volume.spacing, closing_mm=closing_mm, max_hole_mm2=max_hole_mm2)
        labels_box[filled & (labels_box == 0)] = value
    labels = np.zeros(volume.shape, dtype=np.uint8)
    labels[box] = labels_box
    airway &= labels == 0
    result = LungMask(labels=labels, airway=airway, spacing=volume.spacing)
    logger.info(
        "lungs: right %.0f ml, left %.0f ml, airway %.0f ml in %.2f s",
        result.volume_ml(RIGHT_LUNG),
        result.volume_ml(LEFT_LUNG),
        float(airway.sum()) * float(np.prod(volume.spacing)) / 1000.0,
        time.perf_counter() - started,
    )
    return result
