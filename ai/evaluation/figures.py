"""Figures of the detection and measurement evaluations, as PNG bytes (the caller writes them).

matplotlib runs on its Agg canvas directly (no pyplot state), so the
functions are safe in threads and servers.
"""

from __future__ import annotations

import io
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Circle

from ai.evaluation.detection import DetectionReport, FrocResult
from ai.evaluation.measurement import CropMeasurement
from ai.types import Volume

__all__ = ["Tile", "tile_from_volume", "froc_png", "measurement_png", "montage_png"]

logger = logging.getLogger(__name__)

TileKind = Literal["hit", "miss", "fp"]
_COLOURS = {"hit": "#2ca02c", "miss": "#d62728", "fp": "#ffbf00"}


@dataclass(frozen=True)
class Tile:
    """One montage tile: an axial patch with a circle at its centre.

    ``image`` is ``(size, size)`` float32 in ``[0, 1]``; ``radius_px`` the
    circle's radius in pixels; ``caption`` a short text.
    """

    image: npt.NDArray[np.float32]
    kind: TileKind
    radius_px: float
    caption: str


def tile_from_volume(
    volume: Volume,
    centre_xyz: Sequence[float],
    diameter_mm: float,
    kind: TileKind,
    caption: str,
    *,
    fov_mm: float = 48.0,
    size: int = 64,
    window_hu: tuple[float, float] = (-1000.0, 400.0),
) -> Tile:
    """Cut the axial patch through a point (nearest slice, nearest-neighbour pixels).

    Parameters
    ----------
    volume : ai.types.Volume
        HU volume.
    centre_xyz : sequence of float
        World LPS mm.
    diameter_mm : float
        Circle diameter in mm.
    kind : {"hit", "miss", "fp"}
        Colour of the circle.
    caption : str
        Text under the tile.
    fov_mm, size : float, int
        Patch side in mm and pixels.
    window_hu : tuple of float
        HU shown black and white.
    """
    z, y, x = volume.world_to_voxel(np.asarray(centre_xyz, dtype=np.float64))
    zi = int(np.clip(round(z), 0, volume.shape[0] - 1))
    pixel = fov_mm / size
    offsets = (np.arange(size) - (size - 1) / 2.0) * pixel
    rows = np.clip(np.round(y + offsets / volume.spacing[1]).astype(int), 0, volume.shape[1] - 1)
    cols = np.clip(np.round(x + offsets / volume.spacing[2]).astype(int), 0, volume.shape[2] - 1)
    patch = np.asarray(volume.array[zi][np.ix_(rows, cols)], dtype=np.float32)
    low, high = window_hu
    image = np.clip((patch - low) / (high - low), 0.0, 1.0).astype(np.float32)
    return Tile(image=image, kind=kind, radius_px=diameter_mm / 2.0 / pixel + 2.0, caption=caption)


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    return buffer.getvalue()


def froc_png(report: DetectionReport, *, title: str = "FROC") -> bytes:
    """FROC curves (all scored nodules and those of 5 mm and more) with the CPM reading points."""
    fig = Figure(figsize=(6.0, 4.5), dpi=110)
    ax = fig.add_subplot(1, 1, 1)
    curves: list[tuple[str, FrocResult, str]] = [
        (
            f">= 3 mm (n={report.froc_all.n_truths}), CPM {report.froc_all.cpm:.3f}",
            report.froc_all,
            "#1f77b4",
        ),
        (
            f">= 5 mm (n={report.froc_5mm.n_truths}), CPM {report.froc_5mm.cpm:.3f}",
            report.froc_5mm,
            "#ff7f0e",
        ),
    ]
    for label, curve, colour in curves:
        fps = np.r_[0.0, curve.fps_per_scan]
        sens = np.r_[0.0, curve.sensitivity]
        keep = fps > 0
        ax.plot(fps[keep], sens[keep], color=colour, label=label, drawstyle="steps-post")
        ax.plot(curve.rates, curve.at_rates, "o", color=colour, markersize=4)
    ax.set_xscale("log", base=2)
    ax.set_xlim(1 / 16, 16)
    ax.set_ylim(0.0, 1.02)
    ax.set_xticks(list(report.froc_all.rates), [f"{r:g}" for r in report.froc_all.rates])
    ax.set_xlabel("false positives per scan")
    ax.set_ylabel("sensitivity")
    ax.set_title(f"{title} ({report.n_scans} scans)")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return _png(fig)


def montage_png(tiles: Sequence[Tile], *, columns: int = 8, title: str = "detections") -> bytes:
    """Grid of tiles, circles coloured by kind (green hit, red miss, amber false positive)."""
    if not tiles:
        tiles = [Tile(np.zeros((8, 8), np.float32), "fp", 0.0, "no detections")]
    rows = math.ceil(len(tiles) / columns)
    fig = Figure(figsize=(1.6 * columns, 1.8 * rows + 0.4), dpi=90)
    for i, tile in enumerate(tiles):
        ax = fig.add_subplot(rows, columns, i + 1)
        ax.imshow(tile.image, cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
        c = (tile.image.shape[1] - 1) / 2.0
        if tile.radius_px > 0:
            ax.add_patch(
                Circle((c, c), tile.radius_px, fill=False, color=_COLOURS[tile.kind], linewidth=1.2)
            )
        ax.set_title(tile.caption, fontsize=6, color=_COLOURS[tile.kind])
        ax.set_axis_off()
    fig.suptitle(f"{title}: green hit, red miss, amber false positive", fontsize=9)
    fig.tight_layout()
    return _png(fig)


def measurement_png(
    measurements: Sequence[CropMeasurement], *, title: str = "diameters on real nodules"
) -> bytes:
    """Measured against reference equivalent diameter, and the error by size, by texture."""
    colours = {"solid": "#1f77b4", "part-solid": "#ff7f0e", "ground-glass": "#2ca02c"}
    found = [m for m in measurements if m.found and m.diameter_mm is not None]
    fig = Figure(figsize=(10.0, 4.5), dpi=100)
    left, right = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    top = max([m.ref_diameter_mm for m in found] + [m.diameter_mm or 0.0 for m in found] + [10.0])
    for texture, colour in colours.items():
        items = [m for m in found if m.ref_texture == texture]
        ref = [m.ref_diameter_mm for m in items]
        ours = [float(m.diameter_mm or 0.0) for m in items]
        label = f"{texture} ({len(items)})"
        left.plot(ref, ours, "o", color=colour, markersize=3, alpha=0.7, label=label)
        right.plot(ref, np.subtract(ours, ref), "o", color=colour, markersize=3, alpha=0.7)
    left.plot([0, top], [0, top], "k-", linewidth=0.8)
    left.set_xlabel("readers' mask, equivalent diameter (mm)")
    left.set_ylabel("node, equivalent diameter (mm)")
    left.legend(loc="upper left", fontsize=8, title="readers' texture", title_fontsize=8)
    right.axhline(0.0, color="k", linewidth=0.8)
    for bound in (-1.5, 1.5):
        right.axhline(bound, color="0.6", linewidth=0.6, linestyle="--")
    right.set_xscale("log")
    right.set_xlabel("readers' mask, equivalent diameter (mm, log)")
    right.set_ylabel("node minus readers (mm)")
    missed = len(measurements) - len(found)
    fig.suptitle(f"{title}: {len(found)} measured, {missed} not found", fontsize=10)
    for ax in (left, right):
        ax.grid(True, alpha=0.3)
    fig.tight_layout()
    return _png(fig)
