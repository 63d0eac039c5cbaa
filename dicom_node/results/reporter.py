"""After indexing: the similar-case SR and key-image montage, kept and sent back.

For an indexed series, :class:`Reporter` gathers each nodule's similar cases
(other patients) and the same patient's earlier measurements, builds the
Comprehensive 3D SR (``dicom_node.results.sr``) and the Secondary Capture
montage (``dicom_node.results.montage``) with UIDs it generates, stores both through
``Ingest.keep`` (so they are catalogued like any instance) and queues them in
the outbox for every destination. Other patients' identities in both objects
follow the privacy policy of the *destinations*: identities only if every
destination may see them, otherwise case ids.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
from pydicom import dcmread
from pydicom.uid import generate_uid

from dicom_node.intake.ingest import Ingest
from dicom_node.model import LoadedModel
from dicom_node.net.similarity import PrivacyPolicy, SimilarityIndex
from dicom_node.processing.jobs import Outcome
from dicom_node.results.outbox import Outbox
from storage.catalog import Catalog, SeriesState
from storage.instances import InstanceStore

__all__ = ["Reporter"]

logger = logging.getLogger(__name__)


class Reporter:
    """Build, keep and queue the results of an indexed series.

    Parameters
    ----------
    catalog, store, ingest, outbox
        The node's storage and sender.
    index : SimilarityIndex
    model : LoadedModel
    policy : PrivacyPolicy
    ae_title : str
        Our AE title (recorded as the sender of the kept objects).
    matches_per_nodule : int
    """

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
        ae_title: str,
        matches_per_nodule: int = 5,
    ) -> None:
        self.catalog = catalog
        self.store = store
        self.ingest = ingest
        self.outbox = outbox
        self.index = index
        self.model = model
        self.policy = policy
        self.ae_title = ae_title
        self.matches_per_nodule = matches_per_nodule

    def _show_identities(self) -> bool:
        destinations = [d.ae_title for d in self.outbox.destinations.values()]
        return bool(destinations) and all(self.policy.may_see_identity(ae) for ae in destinations)

    def report(self, series_instance_uid: str) -> Outcome:
        """SR and montage for an indexed series; the series becomes ``reported``."""
        from dicom_node.results.montage import MontageRow, build_key_image_montage
        from dicom_node.results.sr import (
            ModelInfo,
            NoduleFinding,
            PriorMeasurement,
            ReportUIDs,
            SimilarCase,
            build_similarity_sr,
        )

        version = self.model.version
        nodules = self.catalog.nodules_of(
            model_version=version, series_instance_uid=series_instance_uid
        )
        paths = self.catalog.series_instance_paths(series_instance_uid)
        evidence = [dcmread(self.store.path_of(p), stop_before_pixels=True) for p in paths]
        evidence_study = self.catalog.study(evidence[0].StudyInstanceUID) or {}
        patient_id, study_date = evidence_study.get("patient_id"), evidence_study.get("study_date")
        retriever = self.index.retriever()
        identities = self._show_identities()
        findings, similar, priors, rows = [], {}, {}, []
        for number, nodule in enumerate(nodules, start=1):
            tracking_uid = str(
                generate_uid(entropy_srcs=[series_instance_uid, version, str(nodule["nodule_index"])])
            )
            findings.append(
                NoduleFinding(
                    tracking_uid=tracking_uid,
                    tracking_id=f"Nodule {number}",
                    center_xyz=(nodule["center_x"], nodule["center_y"], nodule["center_z"]),
                    diameter_mm=nodule["diameter_mm"],
                    long_axis_mm=nodule["long_axis_mm"],
                    volume_mm3=nodule["volume_mm3"],
                    mean_hu=nodule["mean_hu"],
                    texture=nodule["texture"],
                    laterality=nodule["laterality"],
                )
            )
            matches = retriever.similar_nodules(
                nodule, self.matches_per_nodule, exclude_patient_id=patient_id
            )
            similar[tracking_uid] = [
                SimilarCase(
                    rank=m.rank,
                    distance=m.distance,
                    driving_layer=m.driving_layer,
                    diameter_mm=float(m.nodule["diameter_mm"]),
                    size_class=int(m.nodule["size_class"]),
                    texture=str(m.nodule["texture"]),
                    study_instance_uid=str(m.nodule["study_instance_uid"]),
                    study_date=m.nodule.get("study_date"),
                    patient_label=(
                        str(m.nodule.get("patient_id") or "")
                        if identities
                        else self.policy.case_id(m.nodule.get("patient_id"))
                    ),
                )
                for m in matches
            ]
            priors[tracking_uid] = [
                PriorMeasurement(
                    study_instance_uid=p.study_instance_uid,
                    study_date=p.study_date,
                    diameter_mm=float(p.nodule["diameter_mm"]),
                    growth_mm=p.growth_mm,
                    growth_percent=p.growth_percent,
                )
                for p in retriever.own_priors(nodule, patient_id, study_date)
            ]
            rows.append(
                MontageRow(
                    label=f"Nodule {number}: {nodule['diameter_mm']:.1f} mm {nodule['texture']}",
                    query=_thumbnail(nodule),
                    matches=[
                        (
                            f"#{m.rank} h={m.distance:.0f} {m.nodule['diameter_mm']:.1f} mm {m.nodule.get('study_date') or ''}",
                            _thumbnail(m.nodule),
                        )
                        for m in matches
                    ],
                )
            )
        model = ModelInfo(name=self.model.name, version=version)
        sr = build_similarity_sr(
            evidence,
            findings,
            similar,
            priors,
            model,
            ReportUIDs(generate_uid(), generate_uid(), _device_uid(version)),
        )
        kept = [self.ingest.keep(sr, calling_ae_title=self.ae_title)]
        if rows:
            montage = build_key_image_montage(
                evidence,
                rows,
                ReportUIDs(generate_uid(), generate_uid(), _device_uid(version)),
                model=model,
            )
            kept.append(self.ingest.keep(montage, calling_ae_title=self.ae_title))
        queued = 0
        for received, dataset in zip(kept, [sr, *([montage] if rows else [])], strict=True):
            queued += self.outbox.enqueue(
                str(dataset.SOPInstanceUID), str(dataset.SOPClassUID), received.relative_path
            )
        return Outcome(
            SeriesState.REPORTED,
            f"{len(nodules)} nodules; SR{' and key images' if rows else ''} kept, {queued} deliveries queued",
        )


def _device_uid(version: str) -> str:
    """The device observer UID: changes whenever the model weights change (IHE AIR)."""
    return str(generate_uid(entropy_srcs=["dicom-node hashing model", version]))


def _thumbnail(row: dict[str, Any]) -> np.ndarray:
    blob = row.get("thumbnail")
    if not blob:
        return np.zeros((64, 64), np.uint8)
    side = int(round(len(blob) ** 0.5))
    return np.frombuffer(blob, np.uint8).reshape(side, side)
