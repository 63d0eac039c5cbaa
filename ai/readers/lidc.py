"""LIDC-IDRI: DICOM series plus the readers' XML (``LidcReadMessage``).

Each XML holds up to four ``readingSession`` elements (one per radiologist).
A ``unblindedReadNodule`` is one reader's nodule: its ``characteristics``
(ratings 1-5/6, absent for nodules under 3 mm) and one ``roi`` per slice,
addressed by ``imageSOP_UID`` (and ``imageZposition``), with ``edgeMap``
boundary pixels (``xCoord`` = column, ``yCoord`` = row) and ``inclusion``
(``FALSE`` cuts a hole). ``nonNodule`` marks are kept apart.

:func:`read_lidc_scan` loads the series with :func:`ai.volume.load_series`,
fills every contour (boundary pixels included, holes cut), measures each
reading in world millimetres and groups the readings of the same lesion
into :class:`LidcNodule` consensus records (pylidc's clustering idea:
readings whose centres are closer than the larger of their radii belong
together). :func:`write_lidc_sample` writes our phantom in this form.
"""

from __future__ import annotations

import logging
import os
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import pydicom
from scipy import ndimage

from ai.errors import ReaderError
from ai.types import Volume

if TYPE_CHECKING:
    from ai.phantom import PhantomStudy

__all__ = [
    "LidcRoi",
    "LidcReading",
    "LidcNodule",
    "LidcScan",
    "luna16_marks",
    "parse_lidc_xml",
    "read_lidc_scan",
    "write_lidc_sample",
]

logger = logging.getLogger(__name__)

_NS = "{http://www.nih.gov}"
CHARACTERISTICS = (
    "subtlety",
    "internalStructure",
    "calcification",
    "sphericity",
    "margin",
    "lobulation",
    "spiculation",
    "texture",
    "malignancy",
)


@dataclass(frozen=True)
class LidcRoi:
    """One reader's contour of one nodule on one slice."""

    sop_instance_uid: str
    z_position: float
    inclusion: bool
    points_xy: tuple[tuple[int, int], ...]


@dataclass(frozen=True)
class LidcReading:
    """One reader's nodule: ratings and contours."""

    reader: int
    nodule_id: str
    characteristics: dict[str, int]
    rois: tuple[LidcRoi, ...]


@dataclass(frozen=True)
class LidcNodule:
    """A lesion as measured from the readings that mark it.

    Parameters
    ----------
    center_xyz : tuple of float
        Mean of the readings' filled-contour centroids, world LPS mm.
    diameter_mm : float
        Mean of the readings' largest in-plane diameters (pylidc's ``diameter``).
    volume_mm3 : float
        Mean filled volume.
    readers : tuple of int
        Reading sessions (0-based) that mark it.
    characteristics : dict
        Median rating per characteristic over the readers that rated it.
    small : bool
        Every reader marked it with a single point (LIDC's "nodule < 3 mm"):
        no contour, so ``diameter_mm`` is only the pixel size.
    """

    center_xyz: tuple[float, float, float]
    diameter_mm: float
    volume_mm3: float
    readers: tuple[int, ...]
    characteristics: dict[str, float]
    small: bool = False


@dataclass(frozen=True)
class LidcScan:
    """A LIDC-IDRI scan: its volume, the readings and the consensus nodules."""

    series_instance_uid: str
    volume: Volume
    readings: tuple[LidcReading, ...]
    nodules: tuple[LidcNodule, ...]


def _text(element: ET.Element, tag: str, default: str = "") -> str:
    found = element.find(_NS + tag)
    return (found.text or default).strip() if found is not None else default


def parse_lidc_xml(path: str | os.PathLike[str]) -> tuple[str, list[LidcReading]]:
    """Parse a LIDC-IDRI readers' XML.

    Parameters
    ----------
    path : path
        The ``.xml`` file.

    Returns
    -------
    tuple
        The SeriesInstanceUID and every reader's nodules (non-nodules left out).

    Raises
    ------
    ai.errors.ReaderError
        Not XML, not a ``LidcReadMessage``, or malformed values.
    """
    try:
        root = ET.parse(os.fspath(path)).getroot()
    except (ET.ParseError, OSError) as exc:
        raise ReaderError(f"cannot parse {os.fspath(path)}: {exc}") from exc
    if root.tag != _NS + "LidcReadMessage":
        raise ReaderError(f"{os.fspath(path)} is not a LidcReadMessage (root {root.tag})")
    header = root.find(_NS + "ResponseHeader")
    series_uid = _text(header, "SeriesInstanceUid") if header is not None else ""
    readings = []
    try:
        for reader, session in enumerate(root.iter(_NS + "readingSession")):
            for nodule in session.iter(_NS + "unblindedReadNodule"):
                ratings = {}
                block = nodule.find(_NS + "characteristics")
                if block is not None:
                    for name in CHARACTERISTICS:
                        value = _text(block, name)
                        if value:
                            ratings[name] = int(value)
                rois = []
                for roi in nodule.iter(_NS + "roi"):
                    points = tuple(
                        (int(_text(edge, "xCoord")), int(_text(edge, "yCoord")))
                        for edge in roi.iter(_NS + "edgeMap")
                    )
                    rois.append(
                        LidcRoi(
                            sop_instance_uid=_text(roi, "imageSOP_UID"),
                            z_position=float(_text(roi, "imageZposition", "nan")),
                            inclusion=_text(roi, "inclusion", "TRUE").upper() == "TRUE",
                            points_xy=points,
                        )
                    )
                readings.append(
                    LidcReading(reader, _text(nodule, "noduleID"), ratings, tuple(rois))
                )
    except ValueError as exc:
        raise ReaderError(f"{os.fspath(path)}: bad value: {exc}") from exc
    return series_uid, readings


def _reading_mask(
    reading: LidcReading, volume: Volume, slice_of: dict[str, int], z_of: npt.NDArray[np.float64]
) -> npt.NDArray[np.bool_]:
    mask = np.zeros(volume.shape, dtype=bool)
    for roi in sorted(reading.rois, key=lambda r: not r.inclusion):  # holes after fills
        k = slice_of.get(roi.sop_instance_uid)
        if k is None:
            k = int(np.argmin(np.abs(z_of - roi.z_position)))
        outline = np.zeros(volume.shape[1:], dtype=bool)
        for x, y in roi.points_xy:
            if 0 <= y < outline.shape[0] and 0 <= x < outline.shape[1]:
                outline[y, x] = True
        filled = ndimage.binary_fill_holes(outline)
        if roi.inclusion:
            mask[k] |= filled
        else:
            mask[k] &= ~(filled & ~outline)
    return mask


def _measure(
    mask: npt.NDArray[np.bool_], volume: Volume
) -> tuple[npt.NDArray[np.float64], float, float]:
    voxels = np.argwhere(mask)
    center = volume.voxel_to_world(voxels.mean(axis=0))
    diameter = 0.0
    for k in np.unique(voxels[:, 0]):
        pts = voxels[voxels[:, 0] == k][:, 1:] * np.asarray(volume.spacing[1:])
        if len(pts) > 1:
            hull = pts[:: max(1, len(pts) // 400)]
            diameter = max(
                diameter, float(np.sqrt(((hull[:, None] - hull[None]) ** 2).sum(-1)).max())
            )
    return (
        center,
        max(diameter, float(min(volume.spacing[1:]))),
        float(len(voxels) * np.prod(volume.spacing)),
    )


def read_lidc_scan(
    series_dir: str | os.PathLike[str], xml_path: str | os.PathLike[str] | None = None
) -> LidcScan:
    """Read a LIDC-IDRI series directory (DICOM slices + the readers' XML).

    Parameters
    ----------
    series_dir : path
        Directory with the ``.dcm`` slices (and the ``.xml`` unless ``xml_path`` is given).
    xml_path : path, optional
        The readers' XML; default: the one ``.xml`` file in ``series_dir``.

    Returns
    -------
    LidcScan
        Volume (acquired grid), readings and consensus nodules.

    Raises
    ------
    ai.errors.ReaderError
        No or several XML files, or an XML for another series.
    ai.errors.SeriesError
        The DICOM slices are not one volume.
    """
    from ai.volume import load_series, sort_slices

    directory = Path(series_dir)
    if xml_path is None:
        xmls = sorted(directory.glob("*.xml"))
        if len(xmls) != 1:
            raise ReaderError(f"{directory}: expected one readers' XML, found {len(xmls)}")
        xml_path = xmls[0]
    series_uid, readings = parse_lidc_xml(xml_path)
    datasets = [pydicom.dcmread(p) for p in sorted(directory.glob("*.dcm"))]
    uids = {str(ds.get("SeriesInstanceUID", "")) for ds in datasets}
    if series_uid and uids and series_uid not in uids:
        raise ReaderError(f"{os.fspath(xml_path)} is for series {series_uid}, not {sorted(uids)}")
    volume = load_series(datasets, spacing=None)
    ordered, _, _ = sort_slices(datasets)
    slice_of = {str(ds.SOPInstanceUID): k for k, ds in enumerate(ordered)}
    z_of = np.array([float(ds.ImagePositionPatient[2]) for ds in ordered])
    measured = []
    for reading in readings:
        mask = _reading_mask(reading, volume, slice_of, z_of)
        if mask.any():
            measured.append((reading, *_measure(mask, volume)))
    groups: list[list[int]] = []
    for i, (_, center, diameter, _) in enumerate(measured):
        for group in groups:
            j = group[0]
            if np.linalg.norm(center - measured[j][1]) <= max(diameter, measured[j][2]) / 2 + 1.5:
                group.append(i)
                break
        else:
            groups.append([i])
    nodules = []
    for group in groups:
        members = [measured[i] for i in group]
        ratings: dict[str, float] = {}
        for name in CHARACTERISTICS:
            values = [m[0].characteristics[name] for m in members if name in m[0].characteristics]
            if values:
                ratings[name] = float(np.median(values))
        center = np.mean([m[1] for m in members], axis=0)
        nodules.append(
            LidcNodule(
                center_xyz=(float(center[0]), float(center[1]), float(center[2])),
                diameter_mm=float(np.mean([m[2] for m in members])),
                volume_mm3=float(np.mean([m[3] for m in members])),
                readers=tuple(sorted({m[0].reader for m in members})),
                characteristics=ratings,
                small=all(
                    len(m[0].rois) == 1 and len(m[0].rois[0].points_xy) == 1 for m in members
                ),
            )
        )
    return LidcScan(
        series_instance_uid=series_uid or next(iter(uids), ""),
        volume=volume,
        readings=tuple(readings),
        nodules=tuple(nodules),
    )


def luna16_marks(
    scan: LidcScan,
) -> tuple[
    list[tuple[tuple[float, float, float], float]], list[tuple[tuple[float, float, float], float]]
]:
    """The LUNA16 reading of a scan's marks: (nodules, other marks), as (world centre, diameter).

    Nodules are the consensus lesions of 3 mm or more marked by at least 3 of
    the 4 readers; every other mark (smaller, single-point, or by fewer
    readers) is an irrelevant finding, neither a nodule nor a false positive.
    """
    nodules, others = [], []
    for nodule in scan.nodules:
        entry = (nodule.center_xyz, max(nodule.diameter_mm, 3.0))
        if not nodule.small and nodule.diameter_mm >= 3.0 and len(nodule.readers) >= 3:
            nodules.append(entry)
        else:
            others.append(entry)
    return nodules, others


def _ratings(texture: str, shape: str, diameter: float) -> dict[str, int]:
    """LIDC ratings that describe a phantom nodule (texture 1 = non-solid ... 5 = solid)."""
    return {
        "subtlety": 5 if diameter >= 10 else 3,
        "internalStructure": 1,
        "calcification": 6,
        "sphericity": 5 if shape == "round" else 3,
        "margin": 2 if shape == "spiculated" else 5,
        "lobulation": 4 if shape == "lobulated" else 1,
        "spiculation": 5 if shape == "spiculated" else 1,
        "texture": {"solid": 5, "part-solid": 3, "ground-glass": 1}[texture],
        "malignancy": 4 if diameter >= 15 or shape == "spiculated" else 2,
    }


def _sub(parent: ET.Element, tag: str, text: str | None = None) -> ET.Element:
    element = ET.SubElement(parent, _NS + tag)
    if text is not None:
        element.text = text
    return element


def write_lidc_sample(
    out_dir: str | os.PathLike[str], studies: Iterable[PhantomStudy], *, seed: int = 0
) -> list[Path]:
    """Write phantom studies as LIDC-IDRI-style series: DICOM slices + a readers' XML.

    Four reading sessions: readers 0-2 outline each nodule exactly (boundary
    pixels of the truth mask on every slice), reader 3 one pixel wider and
    skipping the smallest nodule. Odd patients are written feet-first, so the
    ``xCoord`` columns run to the patient's right there.

    Parameters
    ----------
    out_dir : path
        Output directory; each scan goes to ``LIDC-SYNTH-<p>/<study>/<series>/``.
    studies : iterable of ai.phantom.PhantomStudy
        E.g. :func:`ai.phantom.first_studies`.
    seed : int, optional
        Cohort seed the studies were made with (for their UIDs).

    Returns
    -------
    list of pathlib.Path
        The series directories.
    """
    import dataclasses

    from ai.phantom import identity_for, series_volume, study_datasets

    ET.register_namespace("", _NS.strip("{}"))
    dirs = []
    for study in studies:
        p = study.patient_index
        head_first = p % 2 == 0
        identity = identity_for(seed, p, study.study_index, head_first=head_first)
        series_dir = (
            Path(out_dir)
            / f"LIDC-SYNTH-{p:04d}"
            / identity.study_instance_uid
            / identity.series_instance_uid
        )
        series_dir.mkdir(parents=True, exist_ok=True)
        datasets = study_datasets(study, identity)
        masks = series_volume(
            dataclasses.replace(study.volume, array=study.nodule_mask), head_first
        )
        slice_ds = {}
        for ds in datasets:
            ds.save_as(series_dir / f"{int(ds.InstanceNumber):06d}.dcm", enforce_file_format=True)
            k = int(round(masks.world_to_voxel([float(v) for v in ds.ImagePositionPatient])[0]))
            slice_ds[k] = ds
        root = ET.Element(_NS + "LidcReadMessage", {"uid": identity.series_instance_uid + ".1"})
        header = _sub(root, "ResponseHeader")
        _sub(header, "SeriesInstanceUid", identity.series_instance_uid)
        _sub(header, "StudyInstanceUID", identity.study_instance_uid)
        smallest = min(
            range(len(study.nodules)), key=lambda i: study.nodules[i].diameter_mm, default=-1
        )
        for reader in range(4):
            session = _sub(root, "readingSession")
            _sub(session, "annotationVersion", "3.12")
            _sub(session, "servicingRadiologistID", f"phantom-reader-{reader}")
            for index, truth in enumerate(study.nodules):
                if reader == 3 and index == smallest:
                    continue
                nodule_mask = masks.array == index + 1
                if reader == 3:
                    nodule_mask = ndimage.binary_dilation(
                        nodule_mask, structure=np.ones((1, 3, 3), bool)
                    )
                element = _sub(session, "unblindedReadNodule")
                _sub(element, "noduleID", f"Nodule {index + 1:03d}")
                block = _sub(element, "characteristics")
                for name, value in _ratings(truth.texture, truth.shape, truth.diameter_mm).items():
                    _sub(block, name, str(value))
                for k in np.unique(np.nonzero(nodule_mask)[0]):
                    plane = nodule_mask[k]
                    edge = plane & ~ndimage.binary_erosion(plane)
                    ds = slice_ds[int(k)]
                    roi = _sub(element, "roi")
                    _sub(roi, "imageZposition", f"{float(ds.ImagePositionPatient[2]):.6f}")
                    _sub(roi, "imageSOP_UID", str(ds.SOPInstanceUID))
                    _sub(roi, "inclusion", "TRUE")
                    rows, cols = np.nonzero(edge)
                    order = np.argsort(np.arctan2(rows - rows.mean(), cols - cols.mean()))
                    for r, c in zip(rows[order], cols[order], strict=True):
                        point = _sub(roi, "edgeMap")
                        _sub(point, "xCoord", str(int(c)))
                        _sub(point, "yCoord", str(int(r)))
        ET.ElementTree(root).write(series_dir / "069.xml", encoding="UTF-8", xml_declaration=True)
        dirs.append(series_dir)
    logger.info("LIDC-IDRI sample: %d scans in %s", len(dirs), out_dir)
    return dirs
