"""Training samples of the false-positive reduction network (training only).

Every sample is a candidate of the node's own detector (:func:`ai.nodules.find_nodules`
on the node's 1 mm grid), cut by :func:`ai.fpr.patches.candidate_patches`,
labelled by where it lies:

- **real crops** (:mod:`ai.readers.lidc_crops`, via
  :func:`ai.evaluation.measurement.crop_in_context`): a candidate whose centre
  lies inside the readers' nodule (grown by 1 mm) is a nodule; one farther
  than the nodule's radius plus :data:`AMBIGUOUS_MM` from its centre is not
  (vessels, walls and specks beside real nodules); in between is left out;
- **a real scan with its readers' XML** (LIDC-IDRI, :mod:`ai.readers.lidc`):
  nodules of 3 mm or more marked by at least 3 of the 4 readers are nodules
  (the LUNA16 rule); a candidate farther than :data:`READER_MARK_MM` beyond
  every other reader's mark is not;
- **phantoms** (:mod:`ai.phantom`): the truth list.

Patches are kept as ``uint8`` (channel 0, 1400/255 HU steps) and ``bool``
(visibility) at :data:`ai.fpr.patches.TRAIN_PATCH_SHAPE`; training crops
them at random to :data:`ai.fpr.patches.PATCH_SHAPE`.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import torch
from scipy import ndimage

from ai.evaluation.measurement import crop_in_context
from ai.fpr.patches import FEATURES, TRAIN_PATCH_SHAPE, candidate_features, candidate_patches
from ai.lungs import LungMask, segment_lungs
from ai.measure import NoduleCandidate
from ai.nodules import find_nodules
from ai.readers.lidc import luna16_marks, read_lidc_scan
from ai.readers.lidc_crops import CropNodule, load_crop
from ai.types import Volume
from ai.volume import resample

if TYPE_CHECKING:
    from ai.phantom.render import ScanGeometry

__all__ = [
    "AMBIGUOUS_MM",
    "READER_MARK_MM",
    "SampleSet",
    "concatenate",
    "crop_samples",
    "label_candidates",
    "lidc_scan_samples",
    "phantom_samples",
    "volume_samples",
]

logger = logging.getLogger(__name__)

#: Candidates this far (mm) beyond a crop's nodule radius are too close to call either way.
AMBIGUOUS_MM = 4.0
#: Candidates inside one crop's nodule kept as nodule samples (the most confident): the node
#: reports one detection per nodule, and the other pieces of a large nodule, inside it but
#: leaking, look like the attached-vessel candidates the network must learn to reject.
MAX_POSITIVES_PER_CROP = 1
#: Negatives of a real scan lie this far (mm) beyond every reader's mark.
READER_MARK_MM = 10.0
Mark = tuple[tuple[float, float, float], float]
"""A nodule or a reader's mark: world LPS centre (mm) and diameter (mm)."""


#: The node's processing grid (what :func:`ai.volume.load_series` gives the worker).
NODE_SPACING: tuple[float, float, float] = (1.0, 1.0, 1.0)


@dataclass(frozen=True)
class SampleSet:
    """Labelled candidate samples.

    Attributes
    ----------
    image : numpy.ndarray
        ``(n, z, y, x)`` uint8, windowed HU times 255.
    visible : numpy.ndarray
        ``(n, z, y, x)`` bool.
    features : numpy.ndarray
        ``(n, F)`` float32 (:data:`ai.fpr.patches.FEATURES`).
    label : numpy.ndarray
        ``(n,)`` int8: 1 nodule, 0 not.
    diameter_mm : numpy.ndarray
        ``(n,)`` float32, the candidate's diameter.
    source : numpy.ndarray
        ``(n,)`` str: ``crop``, ``scan`` or ``phantom``.
    patient : numpy.ndarray
        ``(n,)`` str, for patient-disjoint splits.
    """

    image: npt.NDArray[np.uint8]
    visible: npt.NDArray[np.bool_]
    features: npt.NDArray[np.float32]
    label: npt.NDArray[np.int8]
    diameter_mm: npt.NDArray[np.float32]
    source: npt.NDArray[np.str_]
    patient: npt.NDArray[np.str_]

    def __len__(self) -> int:
        return int(self.label.shape[0])

    def subset(self, keep: npt.NDArray[np.bool_] | npt.NDArray[np.intp]) -> SampleSet:
        """The samples selected by a boolean mask or an index array."""
        return SampleSet(**{name: getattr(self, name)[keep] for name in self.__dataclass_fields__})

    def to_arrays(self) -> dict[str, npt.NDArray[np.generic]]:
        """For ``numpy.savez`` (a cache of extracted samples)."""
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    @classmethod
    def from_arrays(cls, arrays: dict[str, npt.NDArray[np.generic]]) -> SampleSet:
        """Inverse of :meth:`to_arrays`."""
        return cls(**{name: arrays[name] for name in cls.__dataclass_fields__})  # type: ignore[arg-type]


def _empty() -> SampleSet:
    return SampleSet(
        image=np.zeros((0, *TRAIN_PATCH_SHAPE), np.uint8),
        visible=np.zeros((0, *TRAIN_PATCH_SHAPE), bool),
        features=np.zeros((0, len(FEATURES)), np.float32),
        label=np.zeros(0, np.int8),
        diameter_mm=np.zeros(0, np.float32),
        source=np.zeros(0, "<U8"),
        patient=np.zeros(0, "<U32"),
    )


def concatenate(sets: Iterable[SampleSet]) -> SampleSet:
    """All samples of several sets, in order."""
    parts = [s for s in sets if len(s)]
    if not parts:
        return _empty()
    return SampleSet(
        **{
            name: np.concatenate([getattr(p, name) for p in parts])
            for name in SampleSet.__dataclass_fields__
        }
    )


def _samples(
    volume: Volume,
    candidates: Sequence[NoduleCandidate],
    labels: Sequence[int],
    *,
    source: str,
    patient: str,
    data_box: tuple[tuple[int, int], tuple[int, int], tuple[int, int]] | None = None,
    device: str | torch.device = "cpu",
) -> SampleSet:
    kept = [(c, y) for c, y in zip(candidates, labels, strict=True) if y >= 0]
    if not kept:
        return _empty()
    chosen = [c for c, _ in kept]
    patches = candidate_patches(
        volume, chosen, shape=TRAIN_PATCH_SHAPE, data_box=data_box, device=device
    )
    n = len(chosen)
    return SampleSet(
        image=np.clip(np.rint(patches[:, 0] * 255.0), 0, 255).astype(np.uint8),
        visible=patches[:, 1] > 0.5,
        features=np.stack([candidate_features(c) for c in chosen]).astype(np.float32),
        label=np.array([y for _, y in kept], np.int8),
        diameter_mm=np.array([c.diameter_mm for c in chosen], np.float32),
        source=np.array([source] * n),
        patient=np.array([patient] * n),
    )


def label_candidates(
    candidates: Sequence[NoduleCandidate],
    truths: Sequence[Mark],
    *,
    exclusions: Sequence[Mark] = (),
    margin_mm: float = AMBIGUOUS_MM,
) -> list[int]:
    """1 for a candidate within a truth's radius, 0 for one clear of everything, -1 between.

    Parameters
    ----------
    candidates : sequence of NoduleCandidate
    truths : sequence of (centre_xyz, diameter_mm)
        Nodules, world LPS mm.
    exclusions : sequence of (centre_xyz, diameter_mm)
        Marks that are neither (smaller nodules, other readers' marks): a
        candidate near one is left out (-1).
    margin_mm : float
        A candidate within radius + margin of a truth or an exclusion, but
        not within a truth's radius, is left out.

    Returns
    -------
    list of int
    """
    result = []
    for cand in candidates:
        c = np.asarray(cand.center_xyz)
        label = 0
        for centre, diameter in (*truths, *exclusions):
            if np.linalg.norm(c - np.asarray(centre)) <= diameter / 2.0 + margin_mm:
                label = -1
        for centre, diameter in truths:
            if np.linalg.norm(c - np.asarray(centre)) <= max(diameter / 2.0, 1.5):
                label = 1
        result.append(label)
    return result


def volume_samples(
    volume: Volume,
    truths: Sequence[Mark],
    *,
    source: str,
    patient: str,
    exclusions: Sequence[Mark] = (),
    margin_mm: float = AMBIGUOUS_MM,
    lungs: LungMask | None = None,
    max_negatives: int | None = None,
    seed: int = 0,
    device: str | torch.device = "cpu",
) -> tuple[SampleSet, list[NoduleCandidate]]:
    """Detect on a whole volume (node grid) as the node does, and label the candidates.

    Returns
    -------
    samples : SampleSet
    candidates : list of NoduleCandidate
        Every candidate the detector gave (for evaluations).
    """
    mask = lungs if lungs is not None else segment_lungs(volume, device=device)
    candidates = find_nodules(volume, mask, device=device)
    labels = label_candidates(candidates, truths, exclusions=exclusions, margin_mm=margin_mm)
    if max_negatives is not None:
        negatives = [i for i, y in enumerate(labels) if y == 0]
        if len(negatives) > max_negatives:
            rng = np.random.default_rng(seed)
            for i in rng.choice(negatives, len(negatives) - max_negatives, replace=False):
                labels[int(i)] = -1
    samples = _samples(volume, candidates, labels, source=source, patient=patient, device=device)
    logger.info(
        "%s %s: %d candidates, %d nodules, %d not",
        source,
        patient,
        len(candidates),
        int((samples.label == 1).sum()),
        int((samples.label == 0).sum()),
    )
    return samples, candidates


def crop_samples(crop: CropNodule, *, device: str | torch.device = "cpu") -> SampleSet:
    """Samples of one real nodule crop (module docstring)."""
    volume, reference = load_crop(crop)
    context = crop_in_context(volume, reference, spacing=NODE_SPACING)
    candidates = find_nodules(
        context.volume, context.lungs, device=device, background_hu=context.background_hu
    )
    ref = context.reference
    if ref is None or not ref.any():
        ref = np.zeros(context.volume.shape, np.bool_)
    grown = ref
    if ref.any():
        grown = ndimage.binary_dilation(ref, iterations=1)
        centre = context.volume.voxel_to_world(np.argwhere(ref).mean(axis=0))
        volume_mm3 = float(ref.sum() * np.prod(context.volume.spacing))
        radius = (3.0 * volume_mm3 / (4.0 * np.pi)) ** (1.0 / 3.0)
    else:
        centre, radius = np.asarray(crop.center_xyz), crop.diameter_mm / 2.0
    labels = []
    inside = 0
    for cand in candidates:  # most confident first
        zyx = np.clip(np.rint(cand.center_zyx).astype(int), 0, np.asarray(ref.shape) - 1)
        if grown[tuple(zyx)]:
            # the other parts of a large nodule are left out
            labels.append(1 if inside < MAX_POSITIVES_PER_CROP else -1)
            inside += 1
        elif np.linalg.norm(np.asarray(cand.center_xyz) - centre) > radius + AMBIGUOUS_MM:
            labels.append(0)
        else:
            labels.append(-1)
    return _samples(
        context.volume,
        candidates,
        labels,
        source="crop",
        patient=crop.patient_id,
        data_box=context.data_box,
        device=device,
    )


def lidc_scan_samples(
    series_dir: str, *, device: str | torch.device = "cpu"
) -> tuple[SampleSet, list[NoduleCandidate], Volume]:
    """Samples of a real LIDC-IDRI scan (DICOM slices + readers' XML), on the node's grid.

    Returns
    -------
    samples : SampleSet
    candidates : list of NoduleCandidate
    volume : Volume
        The scan on the node's grid.
    """
    scan = read_lidc_scan(series_dir)
    volume = resample(scan.volume, NODE_SPACING)
    truths, exclusions = luna16_marks(scan)
    samples, candidates = volume_samples(
        volume,
        truths,
        exclusions=exclusions,
        margin_mm=READER_MARK_MM,
        source="scan",
        patient=scan.series_instance_uid[-12:],
        device=device,
    )
    return samples, candidates, volume


def phantom_samples(
    seed: int,
    patients: int,
    *,
    family: str = "a",
    studies: int = 1,
    max_negatives: int = 30,
    device: str | torch.device = "cpu",
    geometry: ScanGeometry | None = None,
    anatomy_scale: float = 1.0,
    workers: int = 1,
) -> SampleSet:
    """Samples of phantom studies, rendered at 0.7 x 0.7 x 1.25 mm (``geometry``) and read
    on 1 mm.

    ``workers`` > 1 renders and detects the patients in that many processes on the CPU
    (:func:`ai.phantom.render.process_pool`); each patient has its own seeds, so the samples
    are the same for any number of workers.
    """
    patient = functools.partial(
        _phantom_patient_samples,
        seed=seed,
        family=family,
        studies=studies,
        max_negatives=max_negatives,
        geometry=geometry,
        anatomy_scale=anatomy_scale,
        device=device,
    )
    if workers > 1 and patients > 1 and torch.device(device).type == "cpu":
        from ai.phantom.render import process_pool

        with process_pool(min(workers, patients)) as pool:
            parts = list(pool.map(patient, range(patients)))
    else:
        parts = [patient(p) for p in range(patients)]
    return concatenate(parts)


def _phantom_patient_samples(
    p: int,
    *,
    seed: int,
    family: str,
    studies: int,
    max_negatives: int,
    geometry: ScanGeometry | None,
    anatomy_scale: float,
    device: str | torch.device,
) -> SampleSet:
    """The samples of phantom patient ``p`` of cohort ``seed`` (all its studies)."""
    from ai.phantom import DEFAULT_GEOMETRY, plan_patient, render_study

    plan = plan_patient(seed, p, n_studies=studies, family=family, anatomy_scale=anatomy_scale)
    parts = []
    for s in range(studies):
        study = render_study(plan, s, geometry or DEFAULT_GEOMETRY)
        volume = resample(study.volume, NODE_SPACING)
        truths = [(n.center_xyz, n.diameter_mm) for n in study.nodules]
        samples, _ = volume_samples(
            volume,
            truths,
            source=f"phantom-{family}",
            patient=f"phantom-{family}-{seed}-{p}",
            max_negatives=max_negatives,
            seed=seed * 1000 + p * 10 + s,
            device=device,
        )
        parts.append(samples)
    logger.info("phantom-%s %d-%d: %d samples", family, seed, p, sum(len(x) for x in parts))
    return concatenate(parts)
