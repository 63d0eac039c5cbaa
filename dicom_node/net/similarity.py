"""Similar prior cases as DICOM sees them: virtual folders and C-FIND answers.

Each index study has a *similar-case folder*: a synthetic PatientID
(:func:`folder_id`) whose "studies" are the similar prior studies of other
patients, in rank order. A viewer finds them with an ordinary STUDY-level
C-FIND on the similarity AE; scripts may instead send the private key
``(0011,xx12)`` of private creator ``DICOM_NODE_SIM`` holding the index
StudyInstanceUID. Returned studies carry their real StudyInstanceUID (so the
viewer can retrieve them from the PACS), the rank, distance and matched
nodule in StudyDescription and in private attributes, and the other patient's
identity only if the calling AE may see it
(:class:`dicom_node.retrieval.privacy.PrivacyPolicy`). The similar studies
themselves come from :func:`dicom_node.retrieval.similar.similar_cases`, the
function the SR and ``dicom-node similar`` use.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from typing import Any

from pydicom.dataset import Dataset

from ai.classes import SIZE_CLASS_LABELS
from dicom_node.errors import InvalidQuery
from dicom_node.retrieval.privacy import PrivacyPolicy
from dicom_node.retrieval.search import SimilarStudy
from dicom_node.retrieval.similar import SimilarityIndex, rank_studies, similar_cases
from storage.catalog import Catalog

__all__ = [
    "PRIVATE_CREATOR",
    "FolderQuery",
    "SimilarityService",
    "folder_id",
    "index_study_of_query",
    "similar_study_identifier",
]

logger = logging.getLogger(__name__)

PRIVATE_CREATOR = "DICOM_NODE_SIM"
PRIVATE_GROUP = 0x0011
#: private element offsets in the DICOM_NODE_SIM block
RANK, DISTANCE, INDEX_STUDY, MATCHED_NODULE, DRIVING_LAYER, MATCHED_PATIENT, RANKING = (
    0x10,
    0x11,
    0x12,
    0x13,
    0x14,
    0x15,
    0x16,
)


def folder_id(study_instance_uid: str, accession_number: str | None) -> str:
    """The synthetic PatientID of an index study's similar-case folder."""
    if accession_number:
        return f"SIM-{accession_number}"[:64]
    return "SIM-" + hashlib.sha1(study_instance_uid.encode()).hexdigest()[:16].upper()


@dataclass(frozen=True)
class FolderQuery:
    """A parsed similarity C-FIND identifier."""

    study_instance_uid: str | None
    folder: str | None
    return_keys: tuple[str, ...]


def index_study_of_query(identifier: Dataset) -> FolderQuery:
    """Which index study a similarity query asks about.

    Raises
    ------
    InvalidQuery
        Not a STUDY-level query, or neither a folder PatientID nor the private key.
    """
    level = str(identifier.get("QueryRetrieveLevel", "") or "").strip().upper()
    if level != "STUDY":
        shown = level if level in {"PATIENT", "SERIES", "IMAGE"} else "(none or not a level)"
        raise InvalidQuery(f"the similarity AE answers STUDY level queries only, not {shown}")
    index_uid = None
    try:
        block = identifier.private_block(PRIVATE_GROUP, PRIVATE_CREATOR)
        if INDEX_STUDY in block:
            value = block[INDEX_STUDY].value
            if isinstance(value, bytes):  # VR UN when the peer does not know our dictionary
                value = value.decode("ascii", "replace")
            index_uid = str(value or "").strip("\x00 ") or None
    except KeyError:
        pass
    patient_id = str(identifier.get("PatientID", "") or "").strip()
    folder = (
        patient_id
        if patient_id.startswith("SIM-") and "*" not in patient_id and "?" not in patient_id
        else None
    )
    keys = tuple(
        e.keyword
        for e in identifier
        if e.keyword and e.keyword not in ("QueryRetrieveLevel", "SpecificCharacterSet")
    )
    return FolderQuery(index_uid, folder, keys)


def similar_study_identifier(
    similar: SimilarStudy,
    *,
    folder: str,
    index_study_instance_uid: str,
    return_keys: tuple[str, ...],
    policy: PrivacyPolicy,
    calling_ae_title: str | None,
) -> Dataset:
    """The C-FIND response identifier of one similar prior study.

    Without the ``identities`` permission the caller sees a case id for the
    patient and an opaque UID for the study (:class:`PrivacyPolicy`);
    ``index_study_instance_uid`` is what the caller may see of the index study.
    """
    best = similar.matches[0]
    nodule = best.nodule
    # The distance beside the rank is the one that ranks (the float embedding's).
    description = (
        f"#{similar.rank} d={best.embedding_distance:.3g} {nodule.diameter_mm:.1f}mm "
        f"{nodule.texture} class {SIZE_CLASS_LABELS[nodule.size_class]} ({best.driving_layer})"
    )[:64]
    reveal = policy.may_see_identity(calling_ae_title)
    label = policy.label(nodule.patient_id, nodule.patient_name, reveal=reveal)
    study_instance_uid = policy.study_uid(similar.study_instance_uid, reveal=reveal)
    values: dict[str, Any] = {
        "StudyInstanceUID": study_instance_uid,
        "StudyDate": similar.study_date or "",
        "StudyDescription": description,
        # Ordinary matching semantics: every study of the folder has its PatientID.
        "PatientID": folder,
        "PatientName": label.patient_name,
        "ModalitiesInStudy": "CT",
        "AccessionNumber": (nodule.accession_number or "") if reveal else "",
    }
    result = Dataset()
    result.QueryRetrieveLevel = "STUDY"
    result.SpecificCharacterSet = "ISO_IR 192"
    for keyword in return_keys:
        if keyword in values:
            setattr(result, keyword, values[keyword])
        elif keyword:
            setattr(result, keyword, "")
    result.StudyInstanceUID = study_instance_uid
    block = result.private_block(PRIVATE_GROUP, PRIVATE_CREATOR, create=True)
    block.add_new(RANK, "IS", similar.rank)
    block.add_new(DISTANCE, "DS", f"{best.distance:.1f}")
    block.add_new(INDEX_STUDY, "UI", index_study_instance_uid)
    block.add_new(MATCHED_NODULE, "LO", description)
    block.add_new(DRIVING_LAYER, "CS", best.driving_layer.upper())
    block.add_new(MATCHED_PATIENT, "LO", label.patient_id[:64])
    block.add_new(RANKING, "DS", f"{best.embedding_distance:.6g}"[:16])
    return result


class SimilarityService:
    """What the similarity AE needs: catalog, index, privacy and limits.

    Parameters
    ----------
    catalog : Catalog
    index : SimilarityIndex or None
        None while no model is loaded: every folder is empty.
    policy : PrivacyPolicy
    studies_per_folder, matches_per_nodule : int
    """

    def __init__(
        self,
        catalog: Catalog,
        index: SimilarityIndex | None,
        policy: PrivacyPolicy,
        *,
        studies_per_folder: int = 10,
        matches_per_nodule: int = 10,
    ) -> None:
        self.catalog = catalog
        self.index = index
        self.policy = policy
        self.studies_per_folder = studies_per_folder
        self.matches_per_nodule = matches_per_nodule

    def study_of_folder(self, folder: str) -> str | None:
        """The index study whose folder id is ``folder``, or None."""
        accession = folder[len("SIM-") :]
        for uid in self.catalog.find.study_uids_with_accession(accession):
            if folder_id(uid, accession) == folder:
                return uid
        for uid in self.catalog.find.study_uids_with_accession(None):
            if folder_id(uid, None) == folder:
                return uid
        return None

    def answer(self, query: FolderQuery) -> tuple[str | None, str | None, list[SimilarStudy]]:
        """``(index study UID, folder id, similar studies)`` for a parsed query."""
        if self.index is None:
            return None, None, []
        study_uid = query.study_instance_uid or (
            self.study_of_folder(query.folder) if query.folder else None
        )
        if study_uid is None:
            return None, None, []
        study = self.catalog.intake.study(study_uid)
        if study is None:
            return None, None, []
        folder = folder_id(study_uid, study.accession_number)
        nodules = self.catalog.nodules.of(
            model_version=self.index.model_version, study_instance_uid=study_uid
        )
        cases = similar_cases(
            self.index.retriever(),
            nodules,
            matches_per_nodule=self.matches_per_nodule,
            with_priors=False,
        )
        return study_uid, folder, rank_studies(cases, self.studies_per_folder)
