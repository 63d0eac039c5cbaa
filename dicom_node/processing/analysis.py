"""The AI step: a completed CT series to indexed nodules.

:meth:`AnalysisStep.prepare` reads the series' headers once (they qualify
the series and later serve as the SR's evidence), applies the
``[qualification]`` rules and reads the pixel data once into an HU volume;
the worker runs it ahead, while it computes the series before.
:meth:`AnalysisStep.run` runs :func:`ai.pipeline.analyse_volume` (on the GPU
when there is one), stores every nodule with its codes in the catalog (one
transaction, idempotent per series and model version, written only while
this worker holds the job) and brings the in-memory index up to date. The
headers and stored nodules go on in the :class:`SeriesJob` to the steps
after it, which this step does not know. Anything that cannot be a lung CT
volume ends ``skipped`` with the reason; an unexpected error ends ``failed``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from ai.classes import size_class
from ai.errors import AIError
from ai.fpr.infer import FprModel
from ai.hashing.codes import TEXTURES, HashCodes
from ai.pipeline import SeriesAnalysis, analyse_volume, encode_at
from ai.types import Volume
from ai.volume import load_series
from dicom_node.model import LoadedModel, shipped_fpr
from dicom_node.processing.jobs import Outcome, SeriesJob
from dicom_node.processing.qualification import disqualification
from dicom_node.processing.reading import read_datasets, read_headers
from dicom_node.retrieval.similar import SimilarityIndex
from dicom_node.settings import QualificationSettings, WorkerSettings
from storage.catalog import Catalog, GivenNodule, NewNodule, SeriesState
from storage.instances import InstanceStore

__all__ = ["AnalysisStep", "given_nodules", "nodules_of", "reference_reason", "resolve_device"]

logger = logging.getLogger(__name__)


def resolve_device(name: str) -> str:
    """``auto`` → ``cuda`` when available, else ``cpu``; other names unchanged."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def nodules_of(analysis: SeriesAnalysis) -> list[NewNodule]:
    """The catalog's view of what the pipeline found."""
    codes = analysis.codes
    return [
        NewNodule(
            nodule_index=i,
            center_xyz=(
                float(nodule.center_xyz[0]),
                float(nodule.center_xyz[1]),
                float(nodule.center_xyz[2]),
            ),
            diameter_mm=float(nodule.diameter_mm),
            long_axis_mm=float(nodule.long_axis_mm),
            volume_mm3=float(nodule.volume_mm3),
            mean_hu=float(nodule.mean_hu),
            peak_hu=float(nodule.peak_hu),
            texture=str(nodule.texture),
            laterality=str(nodule.laterality),
            # the false-positive reduction network's probability of a nodule
            confidence=float(
                nodule.probability if nodule.probability is not None else nodule.confidence
            ),
            size_class=size_class(float(nodule.diameter_mm)),
            **_coded(codes, i, analysis.thumbnails[i]),
        )
        for i, nodule in enumerate(analysis.nodules)
    ]


def _coded(codes: HashCodes, i: int, thumbnail: np.ndarray) -> dict[str, Any]:
    """The fields of a catalog nodule that come from the network: ROI ``i``'s codes."""
    return {
        "predicted_size_class": int(codes.size_class[i]),
        "predicted_texture": TEXTURES[int(codes.texture[i])],
        "shallow": codes.shallow[i].tobytes(),
        "middle": codes.middle[i].tobytes(),
        "deep": codes.deep[i].tobytes(),
        "embedding": codes.embedding[i].astype("float32").tobytes(),
        "thumbnail": thumbnail.tobytes(),
    }


def given_nodules(
    volume: Volume, given: Sequence[GivenNodule], model: LoadedModel, *, device: str
) -> list[NewNodule]:
    """Given nodules (a reference series') encoded by ``model``: the catalog's rows for them.

    The ROIs are cut at the given centres as the worker cuts its own nodules
    (:func:`ai.pipeline.encode_at`; no lung mask: a crop holds no lungs), the
    measurements are the given ones.
    """
    _, codes, thumbnails = encode_at(
        volume,
        None,
        np.array([g.center_xyz for g in given], np.float64),
        model.net,
        device=device,
        model_version=model.version,
    )
    return [
        NewNodule(
            **g.measures(),
            size_class=size_class(g.diameter_mm),
            **_coded(codes, i, thumbnails[i]),
        )
        for i, g in enumerate(given)
    ]


def reference_reason(given: Sequence[GivenNodule], version: str) -> str:
    """The series reason of an encoded reference series."""
    sources = sorted({g.source for g in given})
    return (
        f"{', '.join(sources)} reference: {len(given)} given nodule(s) encoded with "
        f"{version}; not detected, no results"
    )


class AnalysisStep:
    """Completed series → nodules, codes, index (``complete → indexed``).

    Parameters
    ----------
    qualification : QualificationSettings
        Which series are processed.
    worker : WorkerSettings
        Device and detector operating point.
    store : InstanceStore
    catalog : Catalog
    model : LoadedModel
    index : SimilarityIndex
        Index of ``model.version``; synced after each series is stored.
    fpr : ai.fpr.FprModel, optional
        False-positive reduction network; default the shipped one.
    """

    name = "analysis"
    requires = SeriesState.COMPLETE
    produces = SeriesState.INDEXED
    on_error = SeriesState.FAILED

    def __init__(
        self,
        qualification: QualificationSettings,
        worker: WorkerSettings,
        store: InstanceStore,
        catalog: Catalog,
        model: LoadedModel,
        index: SimilarityIndex,
        fpr: FprModel | None = None,
    ) -> None:
        self.rules = qualification
        self.min_probability = worker.min_nodule_probability
        self.min_diameter_mm = worker.min_nodule_diameter_mm
        self.store = store
        self.catalog = catalog
        self.model = model
        self.index = index
        self.device = resolve_device(worker.device)
        self.model.net.to(self.device)
        self.fpr = fpr if fpr is not None else shipped_fpr(self.device)

    @property
    def version(self) -> str:
        """The hashing model's version: a new model processes the archive again."""
        return self.model.version

    @property
    def algorithm_parameters(self) -> tuple[str, ...]:
        """What besides the hashing model decides which nodules are reported.

        Quoted in the SR's algorithm identification (TID 4019 Algorithm
        Parameters), so that a reader of a report can tell which
        false-positive reduction model and thresholds produced its findings.
        """
        return (
            f"false-positive reduction model {self.fpr.version}",
            f"minimum nodule probability {self.min_probability:g}",
            f"minimum nodule diameter {self.min_diameter_mm:g} mm",
        )

    def prepare(self, job: SeriesJob) -> None:
        """Read the series: its headers, and its HU volume if it qualifies (see ReadsAhead).

        Run ahead by the worker while it computes another series, or by
        :meth:`run`; what ``job`` holds already is not read again.

        Raises
        ------
        AIError
            The files do not make a volume.
        """
        if job.headers is not None and (
            job.volume is not None or disqualification(job.headers, self.rules) is not None
        ):
            return
        started = time.perf_counter()
        paths = self.catalog.workflow.series_instance_paths(job.series_instance_uid)
        if job.headers is None:
            job.headers = read_headers(self.store, paths)
        if disqualification(job.headers, self.rules) is None:
            job.volume = load_series(read_datasets(self.store, paths))
        job.timings["read"] = time.perf_counter() - started

    def run(self, job: SeriesJob) -> Outcome:
        """Process one completed series (see the module docstring)."""
        uid = job.series_instance_uid
        started = time.perf_counter()
        given = self.catalog.reference.of_series(uid)
        if given:
            return self._encode_given(job, given)
        try:
            self.prepare(job)
        except AIError as exc:
            return Outcome(SeriesState.SKIPPED, f"{exc.__class__.__name__}: {exc}")
        assert job.headers is not None
        reason = disqualification(job.headers, self.rules)
        if reason is not None:
            return Outcome(SeriesState.SKIPPED, reason)
        assert job.volume is not None
        volume, job.volume = job.volume, None  # not kept for the steps after this one
        try:
            analysis = analyse_volume(
                volume,
                self.model.net,
                fpr=self.fpr,
                device=self.device,
                model_version=self.version,
                min_probability=self.min_probability,
                min_diameter_mm=self.min_diameter_mm,
            )
        except AIError as exc:
            return Outcome(SeriesState.SKIPPED, f"{exc.__class__.__name__}: {exc}")
        job.timings |= analysis.seconds
        if analysis.lung_volume_ml < self.rules.min_lung_volume_ml:
            return Outcome(
                SeriesState.SKIPPED,
                f"lungs {analysis.lung_volume_ml:.0f} ml, "
                f"under {self.rules.min_lung_volume_ml:.0f} ml",
            )
        stored = time.perf_counter()
        job.nodules = self.catalog.nodules.replace(
            uid,
            self.version,
            nodules_of(analysis),
            claim=job.claim,
            registration_image=(
                analysis.registration.to_bytes() if analysis.registration is not None else None
            ),
        )
        self.index.sync()
        job.timings["store"] = time.perf_counter() - stored
        return Outcome(
            SeriesState.INDEXED,
            f"{len(job.nodules)} nodules, lungs {analysis.lung_volume_ml:.0f} ml, "
            f"{time.perf_counter() - started:.1f} s on {self.device}",
        )

    def _encode_given(self, job: SeriesJob, given: list[GivenNodule]) -> Outcome:
        """A reference series: its given nodules encoded, no detection, no results after."""
        if job.volume is None:
            paths = self.catalog.workflow.series_instance_paths(job.series_instance_uid)
            job.volume = load_series(read_datasets(self.store, paths))
        volume, job.volume = job.volume, None
        job.nodules = self.catalog.nodules.replace(
            job.series_instance_uid,
            self.version,
            given_nodules(volume, given, self.model, device=self.device),
            claim=job.claim,
        )
        self.index.sync()
        return Outcome(SeriesState.REFERENCE, reference_reason(given, self.version))
