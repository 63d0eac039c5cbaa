"""Key-image montage: each nodule beside its most similar cases, as a Secondary Capture.

For PACS viewers that do not render SR: one RGB image in the index study
(highdicom ``SCImage``), a row per nodule: the query ROI (red caption) then
its top matches, each tile captioned with rank, the distance that ranks,
diameter and study date, under a title naming the model version and what
the numbers mean. The layout is fixed in inches (:func:`montage_figure`):
title band, then per row a caption band and the tiles. ``dicom-node similar
--png`` draws its gallery with the same function. Pure: pixels and UIDs in,
dataset out.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import highdicom as hd
import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset

from dicom_node.results.sr import ModelInfo, ReportUIDs

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["MontageRow", "build_key_image_montage", "montage_figure", "render_montage"]


@dataclass(frozen=True)
class MontageRow:
    """One nodule and its matches."""

    label: str
    query: npt.NDArray[np.generic]
    """2-D ROI, uint8 (0..255) or float in [0, 1]."""
    matches: Sequence[tuple[str, npt.NDArray[np.generic]]] = field(default_factory=tuple)
    """``(caption, ROI)`` per match, best first."""


def _as_unit(image: npt.NDArray[np.generic]) -> npt.NDArray[np.float64]:
    array = np.asarray(image, dtype=np.float64)
    return array / 255.0 if array.max(initial=0.0) > 1.0 else array


#: Layout in inches and points: every element has a place of its own, so
#: nothing overlaps whatever the number of rows and matches.
TILE_IN = 1.6
CAPTION_PT = 7.0
CAPTION_LINES = 2
TITLE_PT = 8.5
GAP_IN = 0.14
MARGIN_IN = 0.15
MIN_WIDTH_IN = 4.0
LINE_SPACING = 1.3
#: The query nodule's caption: a red that reads on black.
QUERY_COLOUR = "#ff6b6b"
#: Average glyph width of the default sans-serif font, as a fraction of its size.
_GLYPH = 0.6


def _wrap(text: str, width_in: float, points: float) -> list[str]:
    """Lines of ``text`` that fit ``width_in`` inches at ``points``."""
    per_line = max(8, int(width_in * 72 / (points * _GLYPH)))
    lines: list[str] = []
    for paragraph in text.split("\n"):
        lines += textwrap.wrap(paragraph, per_line) or [""]
    return lines


def montage_figure(rows: Sequence[MontageRow], title: str) -> Figure:
    """The montage as a matplotlib figure (Agg): a title band, then a row per nodule.

    Each tile has its caption band above it (up to :data:`CAPTION_LINES`
    lines, wrapped to the tile's width) and the title is wrapped to the
    figure's width in a band of its own, so no text runs over an image or
    another text.
    """
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    columns = 1 + max((len(row.matches) for row in rows), default=0)
    width = max(MIN_WIDTH_IN, 2 * MARGIN_IN + columns * TILE_IN + (columns - 1) * GAP_IN)
    title_lines = _wrap(title, width - 2 * MARGIN_IN, TITLE_PT)
    title_band = MARGIN_IN + len(title_lines) * TITLE_PT * LINE_SPACING / 72 + GAP_IN
    caption_band = CAPTION_LINES * CAPTION_PT * LINE_SPACING / 72 + 0.04
    row_height = caption_band + TILE_IN + GAP_IN
    height = title_band + max(1, len(rows)) * row_height + MARGIN_IN - GAP_IN
    figure = Figure(figsize=(width, height), dpi=100, facecolor="black")
    figure.text(
        0.5,
        1 - MARGIN_IN / height,
        "\n".join(title_lines),
        ha="center",
        va="top",
        color="white",
        fontsize=TITLE_PT,
        linespacing=LINE_SPACING,
    )
    for r, row in enumerate(rows):
        top = height - title_band - r * row_height
        for c, (caption, image) in enumerate([(row.label, row.query), *row.matches]):
            left = MARGIN_IN + c * (TILE_IN + GAP_IN)
            axis = figure.add_axes(
                (
                    left / width,
                    (top - caption_band - TILE_IN) / height,
                    TILE_IN / width,
                    TILE_IN / height,
                )
            )
            axis.axis("off")
            axis.imshow(_as_unit(image), cmap="gray", vmin=0.0, vmax=1.0, aspect="auto")
            lines = _wrap(caption, TILE_IN, CAPTION_PT)[:CAPTION_LINES]
            figure.text(
                (left + TILE_IN / 2) / width,
                top / height,
                "\n".join(lines),
                ha="center",
                va="top",
                color=QUERY_COLOUR if c == 0 else "white",
                fontsize=CAPTION_PT,
                linespacing=LINE_SPACING,
            )
    return figure


def render_montage(rows: Sequence[MontageRow], title: str) -> npt.NDArray[np.uint8]:
    """``(H, W, 3)`` uint8 RGB picture of the rows (:func:`montage_figure`)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    figure = montage_figure(rows, title)
    canvas = FigureCanvasAgg(figure)
    canvas.draw()  # type: ignore[no-untyped-call]
    rgba = np.asarray(canvas.buffer_rgba())  # type: ignore[no-untyped-call]
    return np.ascontiguousarray(rgba[..., :3])


def build_key_image_montage(
    evidence: Sequence[Dataset],
    rows: Sequence[MontageRow],
    uids: ReportUIDs,
    *,
    model: ModelInfo,
    series_number: int = 9002,
    instance_number: int = 1,
) -> hd.sc.SCImage:
    """The montage as a Secondary Capture image in the index study.

    Parameters
    ----------
    evidence : sequence of pydicom.dataset.Dataset
        The CT series (patient and study are taken from the first).
    rows : sequence of MontageRow
    uids : ReportUIDs
    model : ModelInfo

    Returns
    -------
    highdicom.sc.SCImage
    """
    if not evidence:
        raise ValueError("the montage needs the CT series' datasets")
    title = (
        f"Similar prior cases of other patients, model {model.version}. Each nodule (red) "
        "is followed by its matches in rank order; d is the distance that ranks them "
        "(float embedding, after the hash search; smaller = more alike). "
        "Not for diagnosis (similar-case retrieval)."
    )
    pixels = render_montage(rows, title)
    image = hd.sc.SCImage.from_ref_dataset(
        ref_dataset=evidence[0],
        pixel_array=pixels,
        photometric_interpretation=hd.PhotometricInterpretationValues.RGB,
        bits_allocated=8,
        coordinate_system=hd.CoordinateSystemNames.PATIENT,
        series_instance_uid=uids.series_instance_uid,
        series_number=series_number,
        sop_instance_uid=uids.sop_instance_uid,
        instance_number=instance_number,
        manufacturer=model.manufacturer,
        patient_orientation=("L", "P"),
    )
    image.SeriesDescription = "Similar prior cases, key images (dicom-node)"
    image.ImageType = ["DERIVED", "SECONDARY"]
    image.BurnedInAnnotation = "YES"
    # General Series Laterality is type 2C: absent for an unpaired body part,
    # which dciodvfy can only tell from Body Part Examined.
    image.BodyPartExamined = "CHEST"
    return image
