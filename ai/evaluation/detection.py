"""Detection metrics: FROC and CPM as in LUNA16, lung Dice, per-size-class figures.

Matching follows the LUNA16 evaluation: a candidate hits a truth nodule when
its centre lies within the nodule's radius of the nodule's centre. A truth
nodule counts as found at a threshold when any candidate hitting it reaches
that confidence; the other candidates hitting it are neither true nor false
positives. Candidates hitting a nodule that is left out of the evaluation
(smaller than ``min_diameter_mm``) or an ``ignored`` mark (a LIDC reader's
mark that is not a LUNA16 nodule) are ignored too ("irrelevant findings").
Every other candidate is a false positive.

Besides the FROC over all thresholds, the report reads the one threshold the
node uses, its **operating point**: false positives per scan, sensitivity
(all scored nodules and those of 5 mm or more) and how many nodules the node
reports per scan there.
"""

from __future__ import annotations

import logging
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import numpy.typing as npt

from ai.classes import SIZE_CLASS_LABELS, size_class

__all__ = [
    "FROC_FP_RATES",
    "Truth",
    "Detection",
    "ScanResult",
    "FrocResult",
    "SizeClassRow",
    "DetectionReport",
    "OperatingPoint",
    "MissedNodule",
    "dice",
    "froc",
    "operating_point",
    "size_class_rows",
    "evaluate_detection",
]

logger = logging.getLogger(__name__)

#: False positives per scan at which LUNA16 reads the FROC curve; CPM is the mean sensitivity there.
FROC_FP_RATES: tuple[float, ...] = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


@dataclass(frozen=True)
class Truth:
    """One annotated nodule: world LPS centre in mm and diameter in mm."""

    center_xyz: tuple[float, float, float]
    diameter_mm: float


@dataclass(frozen=True)
class Detection:
    """One candidate as the evaluation sees it."""

    center_xyz: tuple[float, float, float]
    confidence: float
    diameter_mm: float


@dataclass(frozen=True)
class ScanResult:
    """Truth and detections of one scan (series)."""

    series_instance_uid: str
    truths: tuple[Truth, ...]
    detections: tuple[Detection, ...]
    lung_dice: float | None = None
    ignored: tuple[Truth, ...] = ()
    """Marks neither true nor false when hit (LUNA16's irrelevant findings)."""


@dataclass(frozen=True)
class FrocResult:
    """A FROC curve and its reading at :data:`FROC_FP_RATES`.

    ``fps_per_scan`` and ``sensitivity`` are the curve (one point per
    distinct confidence, increasing FP rate); ``at_rates`` the sensitivity
    at each of ``rates``; ``cpm`` their mean.
    """

    rates: tuple[float, ...]
    at_rates: tuple[float, ...]
    cpm: float
    n_truths: int
    n_scans: int
    fps_per_scan: tuple[float, ...] = field(repr=False)
    sensitivity: tuple[float, ...] = field(repr=False)
    thresholds: tuple[float, ...] = field(repr=False)

    def threshold_at(self, rate: float) -> float:
        """Lowest confidence threshold whose FP rate stays at or under ``rate`` (inf if none)."""
        ok = [t for f, t in zip(self.fps_per_scan, self.thresholds, strict=True) if f <= rate]
        return min(ok) if ok else float("inf")


@dataclass(frozen=True)
class SizeClassRow:
    """Sensitivity and diameter error of one size class at one operating point."""

    size_class: int
    label: str
    n: int
    found: int
    sensitivity: float | None
    median_abs_diameter_error_mm: float | None


@dataclass(frozen=True)
class MissedNodule:
    """A nodule of 5 mm or more the node does not report at its operating point, and why.

    ``nearest_mm`` is the distance from the nodule's centre to the nearest detection at any
    probability (``None`` when the scan has none); a nearest detection within the nodule's
    radius was scored below the threshold, one outside it missed the nodule's centre (LUNA16
    counts a hit only within the radius), and none within ``diameter_mm`` means the detector
    gave no candidate there.
    """

    series_instance_uid: str
    center_xyz: tuple[float, float, float]
    diameter_mm: float
    nearest_mm: float | None
    nearest_probability: float | None
    nearest_diameter_mm: float | None

    @property
    def reason(self) -> str:
        """``below threshold``, ``off centre`` or ``no candidate``, as above."""
        radius = self.diameter_mm / 2.0
        if self.nearest_mm is not None and self.nearest_mm <= radius:
            return "below threshold"
        if self.nearest_mm is not None and self.nearest_mm <= self.diameter_mm:
            return "off centre"
        return "no candidate"


@dataclass(frozen=True)
class OperatingPoint:
    """What the node reports at its threshold (``worker.min_nodule_probability``)."""

    threshold: float
    fps_per_scan: float
    """False positives per scan (irrelevant findings left out)."""
    false_positives: tuple[int, ...]
    """Per scan, in scan order."""
    reported: tuple[int, ...]
    """Detections reported per scan (true, false and irrelevant)."""
    sensitivity: float | None
    """Share of scored nodules found."""
    sensitivity_5mm: float | None
    """Share of nodules of 5 mm or more found."""
    missed_5mm: int
    """Nodules of 5 mm or more not found."""
    missed: tuple[MissedNodule, ...] = ()
    """Those nodules, each with its nearest detection."""


def operating_point(
    scans: Sequence[ScanResult], threshold: float, *, min_diameter_mm: float = 3.0
) -> OperatingPoint:
    """False positives, sensitivity and reports per scan at one threshold.

    Parameters
    ----------
    scans : sequence of ScanResult
    threshold : float
        Detections with ``confidence >= threshold`` are reported.
    min_diameter_mm : float
        Smallest scored nodule (smaller ones are irrelevant findings).

    Returns
    -------
    OperatingPoint
    """
    false_positives, reported = [], []
    missed: list[MissedNodule] = []
    found = total = found_5 = total_5 = 0
    for scan in scans:
        kept = [d.confidence >= threshold for d in scan.detections]
        fp = 0
        for ok, hit, ignored in zip(kept, _hits(scan), _ignored(scan), strict=True):
            if ok and not hit and not ignored:
                fp += 1
        false_positives.append(fp)
        reported.append(sum(kept))
        best = _best_detection(scan, threshold)
        for truth, det in zip(scan.truths, best, strict=True):
            if truth.diameter_mm >= min_diameter_mm:
                total += 1
                found += det is not None
            if truth.diameter_mm >= 5.0:
                total_5 += 1
                found_5 += det is not None
                if det is None:
                    missed.append(_missed(scan, truth))
    return OperatingPoint(
        threshold=threshold,
        fps_per_scan=float(np.mean(false_positives)) if scans else 0.0,
        false_positives=tuple(false_positives),
        reported=tuple(reported),
        sensitivity=found / total if total else None,
        sensitivity_5mm=found_5 / total_5 if total_5 else None,
        missed_5mm=total_5 - found_5,
        missed=tuple(missed),
    )


def _missed(scan: ScanResult, truth: Truth) -> MissedNodule:
    """``truth`` with the detection of ``scan`` nearest to its centre."""
    nearest_mm: float | None = None
    nearest_probability: float | None = None
    nearest_diameter_mm: float | None = None
    if scan.detections:
        centres = np.asarray([d.center_xyz for d in scan.detections], dtype=np.float64)
        distances = np.linalg.norm(centres - np.asarray(truth.center_xyz), axis=1)
        i = int(np.argmin(distances))
        nearest_mm = float(distances[i])
        nearest_probability = float(scan.detections[i].confidence)
        nearest_diameter_mm = float(scan.detections[i].diameter_mm)
    return MissedNodule(
        series_instance_uid=scan.series_instance_uid,
        center_xyz=truth.center_xyz,
        diameter_mm=float(truth.diameter_mm),
        nearest_mm=nearest_mm,
        nearest_probability=nearest_probability,
        nearest_diameter_mm=nearest_diameter_mm,
    )


@dataclass(frozen=True)
class DetectionReport:
    """Everything ``dicom-node evaluate detection`` reports."""

    n_scans: int
    lung_dice_mean: float | None
    lung_dice_min: float | None
    froc_all: FrocResult
    froc_5mm: FrocResult
    sensitivity_5mm_at_4fp: float
    median_abs_diameter_error_mm: float | None
    size_classes: tuple[SizeClassRow, ...]
    operating_fps_per_scan: float
    operating_point: OperatingPoint | None = None

    def to_dict(self) -> dict[str, object]:
        """JSON-ready summary (curves left out)."""

        def froc_dict(f: FrocResult) -> dict[str, object]:
            return {
                "cpm": f.cpm,
                "n_truths": f.n_truths,
                "sensitivity_at_fps_per_scan": {
                    str(r): s for r, s in zip(f.rates, f.at_rates, strict=True)
                },
                # The probability to set as worker.min_nodule_probability for each FP rate.
                "confidence_threshold_at_fps_per_scan": {
                    str(r): f.threshold_at(r) for r in f.rates
                },
            }

        return {
            "n_scans": self.n_scans,
            "lung_dice_mean": self.lung_dice_mean,
            "lung_dice_min": self.lung_dice_min,
            "froc_3mm": froc_dict(self.froc_all),
            "froc_5mm": froc_dict(self.froc_5mm),
            "cpm": self.froc_all.cpm,
            "sensitivity_5mm_at_4fp": self.sensitivity_5mm_at_4fp,
            "median_abs_diameter_error_mm": self.median_abs_diameter_error_mm,
            "operating_fps_per_scan": self.operating_fps_per_scan,
            "size_classes": [asdict(row) for row in self.size_classes],
            "operating_point": (
                None
                if self.operating_point is None
                else {
                    **asdict(self.operating_point),
                    "missed": [
                        {**asdict(m), "reason": m.reason} for m in self.operating_point.missed
                    ],
                }
            ),
        }


def dice(a: npt.ArrayLike, b: npt.ArrayLike) -> float:
    """Dice coefficient of two boolean masks (1.0 when both are empty)."""
    x, y = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if x.shape != y.shape:
        raise ValueError(f"mask shapes differ: {x.shape} vs {y.shape}")
    total = int(x.sum()) + int(y.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(x, y).sum()) / total


def _hit_lists(detections: Sequence[Detection], marks: Sequence[Truth]) -> list[list[int]]:
    if not marks:
        return [[] for _ in detections]
    centres = np.asarray([t.center_xyz for t in marks], dtype=np.float64)
    radii = np.asarray([t.diameter_mm / 2.0 for t in marks], dtype=np.float64)
    result = []
    for det in detections:
        d = np.linalg.norm(centres - np.asarray(det.center_xyz), axis=1)
        result.append([int(i) for i in np.flatnonzero(d <= radii)])
    return result


def _hits(scan: ScanResult) -> list[list[int]]:
    """For each detection, the indices of the truths it hits."""
    return _hit_lists(scan.detections, scan.truths)


def _ignored(scan: ScanResult) -> list[bool]:
    """For each detection, whether it hits an ignored mark."""
    return [bool(h) for h in _hit_lists(scan.detections, scan.ignored)]


def _scored(
    scans: Sequence[ScanResult], min_diameter_mm: float
) -> tuple[list[float], list[bool], int]:
    """Per scored candidate: confidence and whether it is a true positive; number of truths."""
    confidences: list[float] = []
    positives: list[bool] = []
    n_truths = 0
    for scan in scans:
        counted = [t.diameter_mm >= min_diameter_mm for t in scan.truths]
        n_truths += sum(counted)
        best: dict[int, float] = {}
        for det, hit, ignored in zip(scan.detections, _hits(scan), _ignored(scan), strict=True):
            if not hit:
                if not ignored:
                    confidences.append(det.confidence)
                    positives.append(False)
                continue
            for i in hit:
                if counted[i]:
                    best[i] = max(best.get(i, -np.inf), det.confidence)
        for conf in best.values():
            confidences.append(conf)
            positives.append(True)
    return confidences, positives, n_truths


def froc(
    scans: Sequence[ScanResult],
    *,
    min_diameter_mm: float = 3.0,
    rates: Sequence[float] = FROC_FP_RATES,
) -> FrocResult:
    """FROC curve and CPM over scans.

    Parameters
    ----------
    scans : sequence of ScanResult
        Truth and detections per scan.
    min_diameter_mm : float
        Truth nodules smaller than this are left out (and candidates on them ignored).
    rates : sequence of float
        False positives per scan at which the sensitivity is read.

    Returns
    -------
    FrocResult
        Curve, sensitivities at ``rates`` (linear interpolation; beyond the
        curve's last point its last sensitivity) and their mean, the CPM.

    Raises
    ------
    ValueError
        If there are no scans.
    """
    if not scans:
        raise ValueError("FROC needs at least one scan")
    confidences, positives, n_truths = _scored(scans, min_diameter_mm)
    n_scans = len(scans)
    order = np.argsort(-np.asarray(confidences, dtype=np.float64), kind="stable")
    conf = np.asarray(confidences, dtype=np.float64)[order]
    pos = np.asarray(positives, dtype=bool)[order]
    tp = np.cumsum(pos)
    fp = np.cumsum(~pos)
    # one point per distinct threshold: the last index of each run of equal confidences
    last = np.flatnonzero(np.r_[conf[1:] != conf[:-1], True]) if conf.size else np.zeros(0, int)
    sens = tp[last] / max(n_truths, 1)
    fps = fp[last] / n_scans
    curve_fps = np.r_[0.0, fps]
    curve_sens = np.r_[0.0, sens]
    at = []
    for rate in rates:
        if curve_fps[-1] <= rate:
            at.append(float(curve_sens[-1]))
        else:
            at.append(float(np.interp(rate, curve_fps, curve_sens)))
    return FrocResult(
        rates=tuple(float(r) for r in rates),
        at_rates=tuple(at),
        cpm=float(np.mean(at)) if n_truths else 0.0,
        n_truths=n_truths,
        n_scans=n_scans,
        fps_per_scan=tuple(float(f) for f in fps),
        sensitivity=tuple(float(s) for s in sens),
        thresholds=tuple(float(c) for c in conf[last]),
    )


def _best_detection(scan: ScanResult, threshold: float) -> list[Detection | None]:
    """Per truth, its most confident hitting detection at or above ``threshold``."""
    best: list[Detection | None] = [None] * len(scan.truths)
    for det, hit in zip(scan.detections, _hits(scan), strict=True):
        if det.confidence < threshold:
            continue
        for i in hit:
            current = best[i]
            if current is None or det.confidence > current.confidence:
                best[i] = det
    return best


def size_class_rows(scans: Sequence[ScanResult], threshold: float) -> tuple[SizeClassRow, ...]:
    """Sensitivity and median absolute diameter error per size class at one threshold."""
    found: dict[int, list[float]] = {}
    counts: dict[int, int] = {}
    for scan in scans:
        for truth, det in zip(scan.truths, _best_detection(scan, threshold), strict=True):
            cls = size_class(truth.diameter_mm)
            counts[cls] = counts.get(cls, 0) + 1
            if det is not None:
                found.setdefault(cls, []).append(abs(det.diameter_mm - truth.diameter_mm))
    rows = []
    for cls in range(1, len(SIZE_CLASS_LABELS)):
        n = counts.get(cls, 0)
        errors = found.get(cls, [])
        rows.append(
            SizeClassRow(
                size_class=cls,
                label=SIZE_CLASS_LABELS[cls],
                n=n,
                found=len(errors),
                sensitivity=len(errors) / n if n else None,
                median_abs_diameter_error_mm=statistics.median(errors) if errors else None,
            )
        )
    return tuple(rows)


def evaluate_detection(
    scans: Sequence[ScanResult],
    *,
    min_diameter_mm: float = 3.0,
    operating_fps_per_scan: float = 4.0,
    threshold: float | None = None,
) -> DetectionReport:
    """All detection figures of a cohort.

    Parameters
    ----------
    scans : sequence of ScanResult
        One per series.
    min_diameter_mm : float
        Smallest nodule scored in the main FROC (LUNA16: 3 mm).
    operating_fps_per_scan : float
        FP rate whose threshold the per-size-class table and the diameter
        error use when no ``threshold`` is given.
    threshold : float, optional
        The node's operating point: read at it (:func:`operating_point`), and
        the per-size-class table and the diameter error use it.

    Returns
    -------
    DetectionReport
    """
    froc_all = froc(scans, min_diameter_mm=min_diameter_mm)
    froc_5 = froc(scans, min_diameter_mm=5.0, rates=(*FROC_FP_RATES,))
    table_threshold = (
        threshold if threshold is not None else froc_all.threshold_at(operating_fps_per_scan)
    )
    rows = size_class_rows(scans, table_threshold)
    errors = []
    for scan in scans:
        for truth, det in zip(scan.truths, _best_detection(scan, table_threshold), strict=True):
            if det is not None and truth.diameter_mm >= min_diameter_mm:
                errors.append(abs(det.diameter_mm - truth.diameter_mm))
    dices = [s.lung_dice for s in scans if s.lung_dice is not None]
    return DetectionReport(
        n_scans=len(scans),
        lung_dice_mean=float(np.mean(dices)) if dices else None,
        lung_dice_min=float(np.min(dices)) if dices else None,
        froc_all=froc_all,
        froc_5mm=froc_5,
        sensitivity_5mm_at_4fp=froc_5.at_rates[FROC_FP_RATES.index(4.0)],
        median_abs_diameter_error_mm=statistics.median(errors) if errors else None,
        size_classes=rows,
        operating_fps_per_scan=operating_fps_per_scan,
        operating_point=(
            None
            if threshold is None
            else operating_point(scans, threshold, min_diameter_mm=min_diameter_mm)
        ),
    )
