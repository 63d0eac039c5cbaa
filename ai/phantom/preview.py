"""A PNG montage of a written cohort: axial and coronal views through each nodule.

The pictures are made from what was written, read back the way the node
reads it: the DICOM series through :func:`ai.volume.load_series`, the truth
centre mapped with :meth:`ai.types.Volume.world_to_voxel`, the nodule mask
from ``masks/``. Each nodule gets an axial and a coronal crop (lung window)
with the nodule mask outlined in red and the truth diameter as a dashed
yellow circle; a misplaced truth would show at once.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from ai.volume import load_series, read_image

__all__ = ["preview_cohort"]

logger = logging.getLogger(__name__)


def preview_cohort(
    cohort_dir: str | Path,
    out_png: str | Path,
    *,
    max_nodules: int = 24,
    crop_mm: float = 60.0,
    columns: int = 4,
) -> Path:
    """Draw the montage of a cohort written by :func:`ai.phantom.write_cohort`.

    Parameters
    ----------
    cohort_dir : path
        The cohort directory (with ``truth.json``).
    out_png : path
        PNG file to write.
    max_nodules : int, optional
        Nodules shown (in truth order).
    crop_mm : float, optional
        Side of each crop in mm.
    columns : int, optional
        Nodules per montage row (each nodule takes an axial and a coronal panel).

    Returns
    -------
    pathlib.Path
        The PNG written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    root = Path(cohort_dir)
    truth = json.loads((root / "truth.json").read_text(encoding="utf-8"))
    items: list[tuple[dict[str, Any], dict[str, Any], int]] = []
    for study in truth["studies"]:
        for index, nodule in enumerate(study["nodules"]):
            items.append((study, nodule, index + 1))
    items = items[:max_nodules]
    rows = max(1, int(np.ceil(len(items) / columns)))
    fig, axes = plt.subplots(
        rows, 2 * columns, figsize=(2.0 * 2 * columns, 2.3 * rows), squeeze=False
    )
    for ax in axes.ravel():
        ax.axis("off")
    cache: dict[str, tuple[Any, Any]] = {}
    for i, (study, nodule, label) in enumerate(items):
        key = study["series_instance_uid"]
        if key not in cache:
            files = sorted((root / study["dicom_dir"]).glob("*.dcm"))
            volume = load_series(files, spacing=None)
            mask = read_image(root / study["nodule_mask"])
            cache = {key: (volume, mask)}
        volume, mask = cache[key]
        zyx = volume.world_to_voxel(nodule["center_xyz"])
        k, r, c = (int(round(v)) for v in zyx)
        half_r = int(round(crop_mm / 2 / volume.spacing[1]))
        half_c = int(round(crop_mm / 2 / volume.spacing[2]))
        half_z = int(round(crop_mm / 2 / volume.spacing[0]))
        rs, cs = (
            slice(max(r - half_r, 0), r + half_r + 1),
            slice(max(c - half_c, 0), c + half_c + 1),
        )
        zs = slice(max(k - half_z, 0), k + half_z + 1)
        radius = nodule["diameter_mm"] / 2
        ax_axial = axes[i // columns, 2 * (i % columns)]
        ax_coronal = axes[i // columns, 2 * (i % columns) + 1]
        k = min(max(k, 0), volume.shape[0] - 1)
        r = min(max(r, 0), volume.shape[1] - 1)
        _panel(
            ax_axial,
            volume.array[k, rs, cs],
            mask.array[k, rs, cs] == label,
            (r - rs.start, c - cs.start),
            radius,
            (volume.spacing[1], volume.spacing[2]),
        )
        coronal = volume.array[zs, r, cs]
        coronal_mask = mask.array[zs, r, cs] == label
        row = k - zs.start
        if volume.direction[2, 2] > 0:  # show superior up
            coronal, coronal_mask, row = (
                coronal[::-1],
                coronal_mask[::-1],
                coronal.shape[0] - 1 - row,
            )
        _panel(
            ax_coronal,
            coronal,
            coronal_mask,
            (row, c - cs.start),
            radius,
            (volume.spacing[0], volume.spacing[2]),
        )
        ax_axial.set_title(
            f"{nodule['nodule_id']}\n{nodule['diameter_mm']:.1f} mm c{nodule['size_class']}",
            fontsize=6,
        )
        ax_coronal.set_title(
            f"{nodule['texture']}\n{nodule['shape']}, {nodule['location']}", fontsize=6
        )
    fig.suptitle(
        "axial | coronal through each truth centre (red: nodule mask, yellow: truth diameter)",
        fontsize=9,
    )
    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    logger.info("preview of %d nodules written to %s", len(items), out)
    return out


def _panel(
    ax: Any,
    image: Any,
    mask: Any,
    center_rc: tuple[int, int],
    radius_mm: float,
    pixel_mm: tuple[float, float],
) -> None:
    """One crop (lung window) with the mask outline and the truth circle, in pixels."""
    from matplotlib.patches import Ellipse

    ax.imshow(
        image,
        cmap="gray",
        vmin=-1200,
        vmax=600,
        aspect=pixel_mm[0] / pixel_mm[1],
        interpolation="nearest",
    )
    if mask.any():
        ax.contour(mask.astype(float), levels=[0.5], colors="red", linewidths=0.8)
    ax.add_patch(
        Ellipse(
            (center_rc[1], center_rc[0]),
            2 * radius_mm / pixel_mm[1],
            2 * radius_mm / pixel_mm[0],
            fill=False,
            color="yellow",
            linestyle="--",
            linewidth=0.7,
        )
    )
