"""Key-image montage: each nodule beside its most similar cases, as a Secondary Capture.

For PACS viewers that do not render SR: one RGB image in the index study
(highdicom ``SCImage``), a row per nodule: the query ROI (red title) then its
top matches, each tile labelled with rank, distance, diameter and study date,
and a header naming the model version. Pure: pixels and UIDs in, dataset out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import highdicom as hd
import numpy as np
import numpy.typing as npt
from pydicom.dataset import Dataset

from dicom_node.results.sr import ModelInfo, ReportUIDs

__all__ = ["MontageRow", "build_key_image_montage", "render_montage"]


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


def render_montage(rows: Sequence[MontageRow], title: str) -> npt.NDArray[np.uint8]:
    """``(H, W, 3)`` uint8 RGB picture of the rows (matplotlib, Agg backend)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    columns = 1 + max((len(row.matches) for row in rows), default=0)
    title_inches = 0.45  # a band of its own, so the title never runs over the first captions
    height = 2.1 * max(1, len(rows)) + title_inches
    figure, axes = plt.subplots(
        max(1, len(rows)),
        columns,
        figsize=(1.9 * columns, height),
        squeeze=False,
        facecolor="black",
    )
    for r, row in enumerate(rows):
        tiles = [(row.label, row.query), *row.matches]
        for c in range(columns):
            axis = axes[r][c]
            axis.axis("off")
            if c < len(tiles):
                caption, image = tiles[c]
                axis.imshow(_as_unit(image), cmap="gray", vmin=0.0, vmax=1.0)
                axis.set_title(caption, fontsize=6.5, color="red" if c == 0 else "white")
    figure.suptitle(title, fontsize=8, color="white", y=1.0 - 0.5 * title_inches / height)
    figure.tight_layout(rect=(0.0, 0.0, 1.0, 1.0 - title_inches / height))
    figure.canvas.draw()
    rgba = np.asarray(figure.canvas.buffer_rgba())  # type: ignore[attr-defined]  # Agg canvas
    plt.close(figure)
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
        f"Similar prior cases, model {model.version}: ranked after the float rerank, "
        "h = joint Hamming distance - not for diagnosis (similar-case retrieval)"
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
