"""Similar prior cases as DICOM sees them: virtual folders, privacy, C-FIND answers.

Each index study has a *similar-case folder*: a synthetic PatientID
(:func:`folder_id`) whose "studies" are the similar prior studies of other
patients, in rank order. A viewer finds them with an ordinary STUDY-level
C-FIND on the similarity AE; scripts may instead send the private key
``(0011,xx12)`` of private creator ``DICOM_NODE_SIM`` holding the index
StudyInstanceUID. Returned studies carry their real StudyInstanceUID (so the
viewer can retrieve them from the PACS), the rank, distance and matched
nodule in StudyDescription and in private attributes, and the other patient's
identity only if the calling AE may see it (:class:`PrivacyPolicy`).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydicom.dataset import Dataset

from ai.classes import SIZE_CLASS_LABELS
from dicom_node.errors import InvalidQuery
from dicom_node.retrieval.search import Retriever, SimilarStudy, add_rows, build_index
from dicom_node.settings import PrivacySettings
from storage.catalog import Catalog
from storage.index import HashIndex

__all__ = [
    "PRIVATE_CREATOR",
    "PrivacyPolicy",
    "SimilarityIndex",
    "SimilarityService",
    "folder_id",
    "index_study_of_query",
    "similar_study_identifier",
]

logger = logging.getLogger(__name__)

PRIVATE_CREATOR = "DICOM_NODE_SIM"
PRIVATE_GROUP = 0x0011
#: private element offsets in the DICOM_NODE_SIM block
RANK, DISTANCE, INDEX_STUDY, MATCHED_NODULE, DRIVING_LAYER, MATCHED_PATIENT = (
    0x10,
    0x11,
    0x12,
    0x13,
    0x14,
    0x15,
)


def folder_id(study_instance_uid: str, accession_number: str | None) -> str:
    """The synthetic PatientID of an index study's similar-case folder."""
    if accession_number:
        return f"SIM-{accession_number}"[:64]
    return "SIM-" + hashlib.sha1(study_instance_uid.encode()).hexdigest()[:16].upper()


class PrivacyPolicy:
    """Which AEs see other patients' identity; pseudonyms for the others.

    Parameters
    ----------
    settings : PrivacySettings
    key_file : pathlib.Path
        A random key made at first start (kept in the data directory), so
        pseudonyms are stable for this node and not reversible by guessing IDs.
    """

    def __init__(self, settings: PrivacySettings, key_file: Path) -> None:
        self.visible_to = set(settings.identities_visible_to)
        if not key_file.exists():
            key_file.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(key_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(os.urandom(32))
        self._key = key_file.read_bytes()

    def may_see_identity(self, ae_title: str | None) -> bool:
        """True if ``ae_title`` may see other patients' names and IDs."""
        return ae_title is not None and ae_title.strip() in self.visible_to

    def case_id(self, patient_id: str | None) -> str:
        """A stable de-identified id for a patient."""
        digest = hmac.new(self._key, (patient_id or "").encode(), hashlib.sha256).hexdigest()
        return f"CASE-{digest[:12].upper()}"

    def patient_label(self, row: dict[str, Any], ae_title: str | None) -> tuple[str, str]:
        """``(PatientID, PatientName)`` to show ``ae_title`` for a catalog row."""
        if self.may_see_identity(ae_title):
            return str(row.get("patient_id") or ""), str(row.get("patient_name") or "")
        case = self.case_id(row.get("patient_id"))
        return case, case


class SimilarityIndex:
    """The in-memory hash index of the current model version, built from the catalog.

    Parameters
    ----------
    catalog : Catalog
    model_version : str
    index_factory : callable, optional
        Makes the index (default: rebuilt from the catalog with :func:`build_index`).
    """

    def __init__(
        self,
        catalog: Catalog,
        model_version: str,
        *,
        index_factory: Callable[[Catalog, str], HashIndex] = build_index,
    ) -> None:
        self.catalog = catalog
        self.model_version = model_version
        self._factory = index_factory
        self._index: HashIndex | None = None
        self._lock = threading.Lock()

    @property
    def index(self) -> HashIndex:
        """The index, built on first use."""
        with self._lock:
            if self._index is None:
                self._index = self._factory(self.catalog, self.model_version)
            return self._index

    def replace_series(self, old_ids: list[int], new_ids: list[int]) -> None:
        """Swap a re-processed series' nodules in the index."""
        index = self.index  # built from the catalog on first use: may hold new_ids already
        present = set(index.ids.tolist())
        gone = [i for i in old_ids if i in present]
        if gone:
            index.remove(gone)
        missing = [i for i in new_ids if i not in present]
        rows = self.catalog.nodules_by_id(missing)
        add_rows(index, [rows[i] for i in missing])

    def retriever(self, **kwargs: Any) -> Retriever:
        """A retriever over this index."""
        return Retriever(self.catalog, self.index, self.model_version, **kwargs)

    def similar_studies(
        self, study_instance_uid: str, k: int, per_nodule: int
    ) -> list[SimilarStudy]:
        """Similar prior studies of other patients for an index study."""
        study = self.catalog.study(study_instance_uid)
        if study is None:
            return []
        queries = self.catalog.nodules_of(
            model_version=self.model_version, study_instance_uid=study_instance_uid
        )
        if not queries:
            return []
        return self.retriever().similar_studies(
            queries, k, per_nodule=per_nodule, exclude_patient_id=study.get("patient_id")
        )


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
        raise InvalidQuery(
            f"the similarity AE answers STUDY level queries only, not {level or '(none)'}"
        )
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
    """The C-FIND response identifier of one similar prior study."""
    best = similar.matches[0]
    nodule = best.nodule
    description = (
        f"#{similar.rank} d={best.distance:.0f} {nodule['diameter_mm']:.1f}mm {nodule['texture']} "
        f"class {SIZE_CLASS_LABELS[int(nodule['size_class'])]} ({best.driving_layer})"
    )[:64]
    patient_id, patient_name = policy.patient_label(nodule, calling_ae_title)
    values: dict[str, Any] = {
        "StudyInstanceUID": similar.study_instance_uid,
        "StudyDate": similar.study_date or "",
        "StudyDescription": description,
        # Ordinary matching semantics: every study of the folder has its PatientID.
        "PatientID": folder,
        "PatientName": patient_name,
        "ModalitiesInStudy": "CT",
        "AccessionNumber": (nodule.get("accession_number") or "")
        if policy.may_see_identity(calling_ae_title)
        else "",
    }
    result = Dataset()
    result.QueryRetrieveLevel = "STUDY"
    result.SpecificCharacterSet = "ISO_IR 192"
    for keyword in return_keys:
        if keyword in values:
            setattr(result, keyword, values[keyword])
        elif keyword:
            setattr(result, keyword, "")
    result.StudyInstanceUID = similar.study_instance_uid
    block = result.private_block(PRIVATE_GROUP, PRIVATE_CREATOR, create=True)
    block.add_new(RANK, "IS", similar.rank)
    block.add_new(DISTANCE, "DS", f"{best.distance:.1f}")
    block.add_new(INDEX_STUDY, "UI", index_study_instance_uid)
    block.add_new(MATCHED_NODULE, "LO", description)
    block.add_new(DRIVING_LAYER, "CS", best.driving_layer.upper())
    block.add_new(MATCHED_PATIENT, "LO", patient_id[:64])
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
        from dicom_node.net.query import Match, MatchKind

        accession = folder[len("SIM-") :]
        rows = list(
            self.catalog.find("STUDY", [Match("AccessionNumber", MatchKind.SINGLE, (accession,))])
        )
        for row in rows:
            if folder_id(row["StudyInstanceUID"], row.get("AccessionNumber")) == folder:
                return str(row["StudyInstanceUID"])
        if self.index is None:
            return None
        for uid in self.catalog.studies_with_nodules(self.index.model_version):
            study = self.catalog.study(uid)
            if study is not None and folder_id(uid, study.get("accession_number")) == folder:
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
        study = self.catalog.study(study_uid)
        if study is None:
            return None, None, []
        folder = folder_id(study_uid, study.get("accession_number"))
        similar = self.index.similar_studies(
            study_uid, self.studies_per_folder, self.matches_per_nodule
        )
        return study_uid, folder, similar
