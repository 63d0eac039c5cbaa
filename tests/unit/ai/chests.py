"""An analytic chest with known lungs and nodules, for the lung and nodule unit tests.

A helper module (not a test module): tests share it instead of importing
each other.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ai.types import Volume

__all__ = ["Chest", "make_chest"]


@dataclass(frozen=True)
class Chest:
    volume: Volume
    lungs: np.ndarray  # (z, y, x) uint8 truth: 1 right, 2 left
    nodules: tuple[tuple[tuple[float, float, float], float, str], ...]  # (centre xyz mm, diameter mm, hu kind)


def make_chest(
    shape: tuple[int, int, int] = (60, 96, 96),
    spacing: tuple[float, float, float] = (2.5, 3.0, 3.0),
    *,
    nodules: tuple[tuple[str, str, float, float], ...] = (),
    vessels: bool = True,
    touching: bool = False,
    noise: float = 20.0,
    seed: int = 0,
    flip_z: bool = False,
) -> Chest:
    """Build an analytic chest.

    ``nodules`` items are ``(lung "right"/"left", kind "solid"/"ggo"/"pleural"/"vessel", diameter mm,
    height 0..1 along the lung)``.
    """
    rng = np.random.default_rng(seed)
    nz, ny, nx = shape
    sz, sy, sx = spacing
    z, y, x = np.meshgrid(
        np.arange(nz) * sz, np.arange(ny) * sy, np.arange(nx) * sx, indexing="ij", sparse=True
    )
    cz, cy, cx = (nz - 1) * sz / 2, (ny - 1) * sy / 2, (nx - 1) * sx / 2
    width, depth = nx * sx, ny * sy
    hu = np.full(shape, -1000.0, dtype=np.float32)
    body = ((x - cx) / (0.45 * width)) ** 2 + ((y - cy) / (0.4 * depth)) ** 2 <= 1.0
    hu[np.broadcast_to(body, shape)] = 40.0
    lungs = np.zeros(shape, dtype=np.uint8)
    gap = 0.0 if touching else 0.06 * width
    lung_rx, lung_ry, lung_rz = 0.17 * width, 0.25 * depth, 0.42 * nz * sz
    centres = {"right": cx - gap / 2 - lung_rx, "left": cx + gap / 2 + lung_rx}
    for value, side in ((1, "right"), (2, "left")):
        ell = (
            ((x - centres[side]) / lung_rx) ** 2 + ((y - cy) / lung_ry) ** 2 + ((z - cz) / lung_rz) ** 2
        ) <= 1.0
        lungs[ell] = value
    hu[lungs > 0] = -850.0
    # trachea from the top down to the carina, then a main bronchus into each lung
    r_tr = 7.0
    top = nz * sz
    carina = cz + 0.45 * lung_rz
    tube = (((x - cx) ** 2 + (y - cy) ** 2) <= r_tr**2) & (z >= carina)
    hu[np.broadcast_to(tube, shape)] = -1000.0
    wall = (((x - cx) ** 2 + (y - cy) ** 2) <= (r_tr + 3) ** 2) & (z >= carina) & ~tube
    hu[np.broadcast_to(wall, shape) & (lungs == 0)] = 40.0
    for side in ("right", "left"):
        tx = centres[side]
        for t in np.linspace(0.0, 1.0, 40):
            px, pz = cx + t * (tx - cx), carina - t * 0.3 * lung_rz
            ball = ((x - px) ** 2 + (y - cy) ** 2 + (z - pz) ** 2) <= (4.5 - 1.5 * t) ** 2
            hu[ball & (lungs == 0)] = -1000.0
    del top
    if vessels:
        for side in ("right", "left"):
            for k, dy in enumerate((-0.5, 0.0, 0.5)):
                rv = 2.5 if k == 1 else 1.8
                cyl = ((y - (cy + dy * lung_ry)) ** 2 + (z - cz - 10.0 * dy) ** 2) <= rv**2
                hu[cyl & (lungs > 0) & (np.abs(x - centres[side]) < 0.8 * lung_rx)] = 40.0
    placed = []
    for side, kind, diameter, height in nodules:
        r = diameter / 2
        ncx = centres[side]
        ncy = cy - 0.35 * lung_ry
        ncz = cz + (height - 0.5) * 1.2 * lung_rz
        if kind == "pleural":
            outward = -1.0 if side == "right" else 1.0
            half_width = lung_rx * np.sqrt(max(0.0, 1 - ((ncy - cy) / lung_ry) ** 2 - ((ncz - cz) / lung_rz) ** 2))
            ncx = centres[side] + outward * (half_width - 0.4 * r)
        if kind == "vessel":
            ncy, ncz = cy, cz
            ncx = centres[side] + (0.25 * lung_rx if side == "right" else -0.25 * lung_rx)
            ncy += r + 1.0
        ball = ((x - ncx) ** 2 + (y - ncy) ** 2 + (z - ncz) ** 2) <= r**2
        value = -600.0 if kind == "ggo" else 20.0
        hu[ball & (lungs > 0)] = value
        if kind == "pleural":
            hu[ball & (lungs == 0)] = 40.0
        placed.append(((float(ncx), float(ncy), float(ncz)), float(diameter), kind))
    hu += rng.normal(0.0, noise, size=shape).astype(np.float32)
    if flip_z:
        hu, lungs = hu[::-1].copy(), lungs[::-1].copy()
        direction = np.diag([1.0, 1.0, -1.0])
        origin = (0.0, 0.0, (nz - 1) * sz)
    else:
        direction = np.eye(3)
        origin = (0.0, 0.0, 0.0)
    volume = Volume(array=hu, spacing=spacing, origin=origin, direction=direction)
    return Chest(volume=volume, lungs=lungs, nodules=tuple(placed))
