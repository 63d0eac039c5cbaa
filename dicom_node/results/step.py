"""The results step: the similar-case SR and key-image montage of an indexed series.

:class:`ResultsStep` (``indexed → reported``) takes the series' nodules and
headers from the job (read again only when the step runs alone, after a
restart), asks :func:`dicom_node.retrieval.similar.similar_cases` for each
nodule's similar cases and same-patient priors, builds the Comprehensive 3D
SR (:mod:`dicom_node.results.sr`) and the Secondary Capture montage
(:mod:`dicom_node.results.montage`), keeps both as generated results of the
study (:meth:`dicom_node.intake.ingest.Ingest.keep`: stored like any
instance, catalogued apart from received series) and queues them in the
outbox for every destination. Other patients' identities in both objects
follow the privacy policy of the *destinations*: identities only if every
destination may see them, otherwise case ids.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from dicom_node.intake.ingest import Ingest
from dicom_node.model import LoadedModel
from dicom_node.processing.jobs import Outcome, SeriesJob
from dicom_node.processing.reading import read_headers
from dicom_node.results.montage import MontageRow, build_key_image_montage
from dicom_node.results.outbox import Outbox
from dicom_node.results.sr import (
    ModelInfo,
    NoduleFinding,
    PriorMeasurement,
    ReportUIDs,
    SimilarCase,
    build_similarity_sr,
)
from dicom_node.retrieval.privacy import PrivacyPolicy
from dicom_node.retrieval.similar import NoduleCases, SimilarityIndex, similar_cases
from storage.catalog import Catalog, NoduleRecord, ResultKind, SeriesState
from storage.instances import InstanceStore

__all__ = ["ResultsStep"]

logger = logging.getLogger(__name__)


class ResultsStep:
    """Build, keep and queue the results of an indexed series.

    Parameters
    ----------
    catalog, store, ingest, outbox
        The node's storage and sender.
    index : SimilarityIndex
    model : LoadedModel
    policy : PrivacyPolicy
    matches_per_nodule : int
        Similar cases per nodule (``similarity.matches_per_nodule``).
    """

    name = "results"
    requires = SeriesState.INDEXED
    produces = SeriesState.REPORTED
    on_error = SeriesState.INDEXED  # the nodules stay searchable; the reason says what failed

    def __init__(
        self,
        catalog: Catalog,
        store: InstanceStore,
        ingest: Ingest,
        outbox: Outbox,
        index: SimilarityIndex,
        model: LoadedModel,
        policy: PrivacyPolicy,
        *,
        matches_per_nodule: int,
    ) -> None:
        self.catalog = catalog
        self.store = store
        self.ingest = ingest
        self.outbox = outbox
        self.index = index
        self.model = model
        self.policy = policy
        self.matches_per_nodule = matches_per_nodule

    @property
    def version(self) -> str:
        """The hashing model's version (results are redone for a new model)."""
        return self.model.version

    def run(self, job: SeriesJob) -> Outcome:
        """SR and montage for an indexed series; the series becomes ``reported``."""
        started = time.perf_counter()
        uid = job.series_instance_uid
        nodules = job.nodules
        if nodules is None:
            nodules = self.catalog.nodules.of(model_version=self.version, series_instance_uid=uid)
        headers = job.headers
        if headers is None:
            headers = read_headers(self.store, self.catalog.workflow.series_instance_paths(uid))
        cases = similar_cases(
            self.index.retriever(), nodules, matches_per_nodule=self.matches_per_nodule
        )
        reveal = self.policy.all_may_see_identity(d.ae_title for d in self.outbox.destinations)
        model = ModelInfo(name=self.model.name, version=self.version)
        findings, similar, priors, rows = [], {}, {}, []
        for number, case in enumerate(cases, start=1):
            finding = _finding(case.nodule, number, uid)
            findings.append(finding)
            similar[finding.tracking_uid] = self._similar(case, reveal)
            priors[finding.tracking_uid] = _priors(case)
            rows.append(_montage_row(case, number))
        sr = build_similarity_sr(
            headers,
            findings,
            similar,
            priors,
            model,
            ReportUIDs(generate_uid(), generate_uid(), _device_uid(self.version)),
        )
        made: list[tuple[Dataset, ResultKind]] = [(sr, ResultKind.SIMILARITY_SR)]
        if rows:
            montage = build_key_image_montage(
                headers,
                rows,
                ReportUIDs(generate_uid(), generate_uid(), _device_uid(self.version)),
                model=model,
            )
            made.append((montage, ResultKind.KEY_IMAGES))
        if job.claim is not None:
            self.catalog.workflow.ensure_held(job.claim)  # taken over: leave it to the new holder
        queued = 0
        send = self.catalog.backfill.may_send_results(uid)  # backfilled: only with --send-results
        for dataset, kind in made:
            kept = self.ingest.keep(
                dataset, kind=kind, source_series_instance_uid=uid, model_version=self.version
            )
            if send:
                queued += self.outbox.enqueue(kept)
        job.timings["results"] = time.perf_counter() - started
        return Outcome(
            SeriesState.REPORTED,
            f"SR{' and key images' if rows else ''} kept, "
            + (f"{queued} deliveries queued" if send else "not sent (backfilled)"),
        )

    def _similar(self, case: NoduleCases, reveal: bool) -> list[SimilarCase]:
        return [
            SimilarCase(
                rank=m.rank,
                distance=m.distance,
                embedding_distance=m.embedding_distance,
                driving_layer=m.driving_layer,
                diameter_mm=m.nodule.diameter_mm,
                size_class=m.nodule.size_class,
                texture=m.nodule.texture,
                study_instance_uid=m.nodule.study_instance_uid,
                study_date=m.nodule.study_date,
                patient_label=self.policy.label(
                    m.nodule.patient_id, m.nodule.patient_name, reveal=reveal
                ).patient_id,
            )
            for m in case.similar
        ]


def _finding(nodule: NoduleRecord, number: int, series_instance_uid: str) -> NoduleFinding:
    return NoduleFinding(
        tracking_uid=str(
            generate_uid(
                entropy_srcs=[series_instance_uid, nodule.model_version, str(nodule.nodule_index)]
            )
        ),
        tracking_id=f"Nodule {number}",
        center_xyz=nodule.center_xyz,
        diameter_mm=nodule.diameter_mm,
        long_axis_mm=nodule.long_axis_mm,
        volume_mm3=nodule.volume_mm3,
        mean_hu=nodule.mean_hu,
        texture=nodule.texture,
        laterality=nodule.laterality,
    )


def _priors(case: NoduleCases) -> Sequence[PriorMeasurement]:
    return [
        PriorMeasurement(
            study_instance_uid=p.study_instance_uid,
            study_date=p.study_date,
            diameter_mm=p.nodule.diameter_mm,
            growth_mm=p.growth_mm,
            growth_percent=p.growth_percent,
        )
        for p in case.priors
    ]


def _montage_row(case: NoduleCases, number: int) -> MontageRow:
    """Captions: the rank beside the distance that ranks (the float embedding's)."""
    nodule = case.nodule
    return MontageRow(
        label=f"Nodule {number}\n{nodule.diameter_mm:.1f} mm {nodule.texture}",
        query=_thumbnail(nodule),
        matches=[
            (
                f"#{m.rank} d={m.embedding_distance:.3g}\n{m.nodule.diameter_mm:.1f} mm "
                f"{_date(m.nodule.study_date)}",
                _thumbnail(m.nodule),
            )
            for m in case.similar
        ],
    )


def _date(study_date: str | None) -> str:
    """``YYYY-MM-DD`` of a DICOM date, as a reader reads it ("" when absent)."""
    if not study_date or len(study_date) != 8 or not study_date.isdigit():
        return study_date or ""
    return f"{study_date[:4]}-{study_date[4:6]}-{study_date[6:]}"


def _device_uid(version: str) -> str:
    """The device observer UID: changes whenever the model weights change (IHE AIR)."""
    return str(generate_uid(entropy_srcs=["dicom-node hashing model", version]))


def _thumbnail(nodule: NoduleRecord) -> np.ndarray:
    image = nodule.thumbnail_image()
    return np.zeros((64, 64), np.uint8) if image is None else image
