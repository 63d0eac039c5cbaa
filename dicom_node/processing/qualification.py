"""Which completed series are processed: the ``[qualification]`` rules applied to headers."""

from __future__ import annotations

from collections.abc import Sequence

from pydicom.dataset import Dataset

from dicom_node.settings import QualificationSettings

__all__ = ["disqualification"]


def _float(value: object) -> float | None:
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def disqualification(headers: Sequence[Dataset], rules: QualificationSettings) -> str | None:
    """The reason a series is not processed, or None if it qualifies.

    Parameters
    ----------
    headers : sequence of pydicom.dataset.Dataset
        The series' instances (read without pixel data).
    rules : QualificationSettings

    Returns
    -------
    str or None
        A sentence for ``dicom-node status``.
    """
    if not headers:
        return "no instances"
    first = headers[0]
    modality = str(first.get("Modality", "") or "")
    if modality not in rules.modalities:
        return f"modality {modality or '(none)'} is not {'/'.join(rules.modalities)}"
    classes = {str(ds.get("SOPClassUID", "")) for ds in headers}
    if not classes <= set(rules.sop_class_uids):
        return f"SOP class {sorted(classes - set(rules.sop_class_uids))[0]} is not processed"
    for ds in headers:
        image_type = [str(v).upper() for v in (ds.get("ImageType") or [])]
        missing = [v for v in rules.image_type_includes if v not in image_type]
        if missing:
            return f"image type {'/'.join(image_type) or '(none)'} lacks {'/'.join(missing)}"
    thickness = _float(first.get("SliceThickness"))
    if thickness is not None and thickness > rules.max_slice_thickness_mm:
        return f"slice thickness {thickness:g} mm is over {rules.max_slice_thickness_mm:g} mm"
    if len(headers) < rules.min_slices:
        return f"{len(headers)} images, fewer than {rules.min_slices}"
    return None
