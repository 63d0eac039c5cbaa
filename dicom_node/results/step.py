"""The results step: the similar-case SR and key-image montage of a study, once.

:class:`ResultsStep` (``indexed → reported``) takes the series' headers from
the job (read again only when the step runs alone, after a restart), the
nodules of every analysed series of the study for this model version, asks
:func:`dicom_node.retrieval.similar.similar_cases` for each nodule's similar
cases and same-patient priors, and builds the Comprehensive 3D SR
(:mod:`dicom_node.results.sr`) and the Secondary Capture montage
(:mod:`dicom_node.results.montage`).

One SR and one montage exist per study and model version, with UIDs derived
from them (:mod:`dicom_node.results.identity`). A run whose content equals
the current revision's (same content digest) makes nothing and sends
nothing; otherwise it keeps the next revision in the same series (the SR's
Predecessor Documents Sequence names the one it replaces), marks the old one
superseded (its pending deliveries are dropped) and queues the new one in
the outbox, unless the series was queued by ``dicom-node reindex`` without
``--send-results``. Other patients' identities in both objects follow the
privacy policy of the *destinations*: identities only if every destination
may see them, otherwise case ids and opaque study UIDs.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from pydicom.dataset import Dataset
from pydicom.uid import generate_uid

from dicom_node.intake.ingest import Ingest
from dicom_node.model import LoadedModel
from dicom_node.processing.jobs import Outcome, SeriesJob
from dicom_node.processing.reading import read_headers
from dicom_node.results.identity import result_series_uid, result_sop_instance_uid
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
from storage.catalog import Catalog, GeneratedResult, NoduleRecord, ResultKind, SeriesState
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
    algorithm_parameters : tuple of str
        The detection's settings quoted in the SR's algorithm identification
        (``AnalysisStep.algorithm_parameters``).
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
        algorithm_parameters: tuple[str, ...] = (),
    ) -> None:
        self.catalog = catalog
        self.store = store
        self.ingest = ingest
        self.outbox = outbox
        self.index = index
        self.model = model
        self.policy = policy
        self.matches_per_nodule = matches_per_nodule
        self.algorithm_parameters = algorithm_parameters

    @property
    def version(self) -> str:
        """The hashing model's version (results are redone for a new model)."""
        return self.model.version

    def run(self, job: SeriesJob) -> Outcome:
        """The study's SR and montage, made again when their content changed.

        The series becomes ``reported`` either way; the reason says whether a
        new revision was made and sent.
        """
        started = time.perf_counter()
        uid = job.series_instance_uid
        headers = job.headers
        if headers is None:
            headers = read_headers(self.store, self.catalog.workflow.series_instance_paths(uid))
        study_uid = str(headers[0].StudyInstanceUID)
        # One SR and one montage per study and model version: every analysed
        # series of the study with nodules of this version contributes.
        nodules = self.catalog.nodules.of(model_version=self.version, study_instance_uid=study_uid)
        evidence = list(headers)
        for other in sorted({n.series_instance_uid for n in nodules} - {uid}):
            evidence += read_headers(self.store, self.catalog.workflow.series_instance_paths(other))
        cases = similar_cases(
            self.index.retriever(), nodules, matches_per_nodule=self.matches_per_nodule
        )
        reveal = self.policy.all_may_see_identity(d.ae_title for d in self.outbox.destinations)
        model = ModelInfo(
            name=self.model.name, version=self.version, parameters=self.algorithm_parameters
        )
        findings, similar, priors, rows = [], {}, {}, []
        for number, case in enumerate(cases, start=1):
            finding = _finding(case.nodule, number)
            findings.append(finding)
            similar[finding.tracking_uid] = self._similar(case, reveal)
            priors[finding.tracking_uid] = _priors(case)
            rows.append(_montage_row(case, number))
        digest = _content_digest(model, findings, similar, priors, cases)

        def sr(uids: ReportUIDs, revision: int, replaces: GeneratedResult | None) -> Dataset:
            return build_similarity_sr(
                evidence,
                findings,
                similar,
                priors,
                model,
                uids,
                instance_number=revision,
                predecessors=[] if replaces is None else [_reference(replaces)],
            )

        def montage(uids: ReportUIDs, revision: int, replaces: GeneratedResult | None) -> Dataset:
            image = build_key_image_montage(
                evidence, rows, uids, model=model, instance_number=revision
            )
            if replaces is not None:
                image.ImageComments = (
                    f"Revision {revision}: replaces {replaces.sop_instance_uid} "
                    f"(revision {replaces.revision}) of this series"
                )
            return image

        if job.claim is not None:
            self.catalog.workflow.ensure_held(job.claim)  # taken over: leave it to the new holder
        made, current = self._publish(study_uid, uid, digest, ResultKind.SIMILARITY_SR, sr)
        if rows:
            kept, was = self._publish(study_uid, uid, digest, ResultKind.KEY_IMAGES, montage)
            made, current = made + kept, current + was
        job.timings["results"] = time.perf_counter() - started
        return Outcome(SeriesState.REPORTED, self._deliver(uid, made, current))

    def _publish(
        self,
        study_uid: str,
        source_series_uid: str,
        digest: str,
        kind: ResultKind,
        build: Callable[[ReportUIDs, int, GeneratedResult | None], Dataset],
    ) -> tuple[list[GeneratedResult], list[GeneratedResult]]:
        """Keep a new revision of one kind of result if its content changed.

        Returns
        -------
        (made, unchanged)
            The new revision (or nothing), and the current one when its
            content is the same (nothing is made then).
        """
        current = self.catalog.intake.current_result(study_uid, self.version, kind)
        if current is not None and current.content_digest == digest:
            return [], [current]
        revision = 1 if current is None else current.revision + 1
        uids = ReportUIDs(
            result_series_uid(study_uid, self.version, kind),
            result_sop_instance_uid(study_uid, self.version, kind, revision),
            _device_uid(self.version),
        )
        kept = self.ingest.keep(
            build(uids, revision, current),
            kind=kind,
            source_series_instance_uid=source_series_uid,
            model_version=self.version,
            revision=revision,
            content_digest=digest,
        )
        if current is not None:
            self.catalog.intake.supersede(current, kept.sop_instance_uid)
            self.catalog.deliveries.supersede(current.sop_instance_uid, kept.sop_instance_uid)
        return [kept], []

    def _deliver(
        self, series_uid: str, made: list[GeneratedResult], current: list[GeneratedResult]
    ) -> str:
        """Queue what is due for the destinations; return the outcome's reason."""
        kinds = " and ".join(_KIND_NAMES[r.kind] for r in made)
        what = (
            f"{kinds} revision {made[0].revision} kept"
            if made
            else f"results unchanged (revision {current[0].revision})"
        )
        if not self.catalog.workflow.send_results(series_uid):
            return f"{what}, not sent (reindex without --send-results)"
        if not self.catalog.backfill.may_send_results(series_uid):
            return f"{what}, not sent (backfilled)"
        # Unchanged results are queued too: only destinations that never had
        # them (added since, or a restart between keeping and queueing) get them.
        queued = sum(self.outbox.enqueue(result) for result in [*made, *current])
        return f"{what}, {queued} deliveries queued"

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
                study_instance_uid=self.policy.study_uid(
                    m.nodule.study_instance_uid, reveal=reveal
                ),
                study_date=m.nodule.study_date,
                patient_label=self.policy.label(
                    m.nodule.patient_id, m.nodule.patient_name, reveal=reveal
                ).patient_id,
            )
            for m in case.similar
        ]


_KIND_NAMES = {ResultKind.SIMILARITY_SR: "SR", ResultKind.KEY_IMAGES: "key images"}


def _reference(result: GeneratedResult) -> Dataset:
    """What the Predecessor Documents Sequence needs of an earlier revision."""
    reference = Dataset()
    reference.StudyInstanceUID = result.study_instance_uid
    reference.SeriesInstanceUID = result.series_instance_uid
    reference.SOPInstanceUID = result.sop_instance_uid
    reference.SOPClassUID = result.sop_class_uid
    return reference


def _content_digest(
    model: ModelInfo,
    findings: Sequence[NoduleFinding],
    similar: dict[str, list[SimilarCase]],
    priors: dict[str, Sequence[PriorMeasurement]],
    cases: Sequence[NoduleCases],
) -> str:
    """SHA-256 of everything the SR and the montage show: equal digests, equal content.

    UIDs of the objects, their creation times and the evidence lists are
    left out: a late instance that changes no finding makes no new revision.
    """
    thumbnails = [
        hashlib.sha256(nodule.thumbnail or b"").hexdigest()
        for case in cases
        for nodule in (case.nodule, *(m.nodule for m in case.similar))
    ]
    document = {
        "model": dataclasses.asdict(model),
        "findings": [dataclasses.asdict(f) for f in findings],
        "similar": {k: [dataclasses.asdict(c) for c in v] for k, v in sorted(similar.items())},
        "priors": {k: [dataclasses.asdict(p) for p in v] for k, v in sorted(priors.items())},
        "thumbnails": thumbnails,
    }
    text = json.dumps(_rounded(document), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def _rounded(value: Any) -> Any:
    """Floats to 3 decimals (micrometres, thousandths of HU): the last bits of a
    float computed on another thread count are no change of content."""
    if isinstance(value, float):
        return round(value, 3)
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_rounded(v) for v in value]
    return value


def _finding(nodule: NoduleRecord, number: int) -> NoduleFinding:
    return NoduleFinding(
        tracking_uid=str(
            generate_uid(
                entropy_srcs=[
                    nodule.series_instance_uid,
                    nodule.model_version,
                    str(nodule.nodule_index),
                ]
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
        probability=nodule.confidence,
        series_instance_uid=nodule.series_instance_uid,
    )


def _priors(case: NoduleCases) -> Sequence[PriorMeasurement]:
    return [
        PriorMeasurement(
            study_instance_uid=p.study_instance_uid,
            study_date=p.study_date,
            diameter_mm=p.nodule.diameter_mm,
            growth_mm=p.growth_mm,
            growth_percent=p.growth_percent,
            volume_mm3=p.nodule.volume_mm3,
            volume_change_percent=p.volume_change_percent,
            volume_doubling_days=p.volume_doubling_days,
        )
        for p in case.priors
    ]


def _montage_row(case: NoduleCases, number: int) -> MontageRow:
    """Captions: the nodule's size, texture and probability; the rank beside the
    distance that ranks (the float embedding's)."""
    nodule = case.nodule
    return MontageRow(
        label=(
            f"Nodule {number}, prob. {nodule.confidence:.2f}\n"
            f"{nodule.diameter_mm:.1f} mm {nodule.texture}"
        ),
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
