"""Who may see other patients' identities, and the pseudonyms everyone else sees.

One policy labels every other patient the node shows: in the similar-case
SR and montage (identities only if every destination may see them), in the
similarity AE's C-FIND answers (if the calling AE may), and in
``dicom-node similar`` (with ``--show-phi``). Whoever lacks the
``identities`` permission (``[access]``) sees a case id instead of the
patient's name and ID, and an opaque UID instead of the other patient's
real Study Instance UID: nothing in the answer leads back to the patient,
and the opaque UID is known to no archive.

Both are keyed hashes. The key is one for every machine of the catalog
(:func:`privacy_key`, kept in the catalog's ``secrets``): the SR a
``dicom-node worker`` writes and the similarity AE of the receiving node
give the same case ids.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from dicom_node.settings import AccessSettings, Permission
from storage.catalog import Catalog

__all__ = ["KEY_NAME", "PatientLabel", "PrivacyPolicy", "privacy_key"]

KEY_NAME = "privacy-key"
"""The name of the key in the catalog's secrets."""


def privacy_key(catalog: Catalog, *, legacy_file: Path | None = None) -> bytes:
    """The key of case ids and opaque UIDs: the same for every machine of the catalog.

    Parameters
    ----------
    catalog : Catalog
    legacy_file : pathlib.Path, optional
        ``data_dir/privacy.key`` of a node older than the shared key: its key
        is proposed first, so that node keeps its case ids.

    Returns
    -------
    bytes
        The first key any process proposed; concurrent first callers agree.
    """
    if legacy_file is not None and legacy_file.exists():
        proposal = legacy_file.read_bytes()
    else:
        proposal = os.urandom(32)
    return catalog.secrets.agree(KEY_NAME, proposal)


@dataclass(frozen=True)
class PatientLabel:
    """How another patient is shown: real identity or a case id in both fields."""

    patient_id: str
    patient_name: str


class PrivacyPolicy:
    """Which AEs see other patients' identity; pseudonyms for the others.

    Parameters
    ----------
    access : AccessSettings
        AE titles with the ``identities`` permission see identities.
    key : bytes
        A random key (:func:`privacy_key`), so pseudonyms are stable for the
        catalog and not reversible by guessing IDs.
    """

    def __init__(self, access: AccessSettings, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("the privacy key must be at least 16 bytes")
        self.access = access
        self._key = key

    def may_see_identity(self, ae_title: str | None) -> bool:
        """True if ``ae_title`` may see other patients' names, IDs and study UIDs."""
        return ae_title is not None and self.access.allows(ae_title, Permission.IDENTITIES)

    def all_may_see_identity(self, ae_titles: Iterable[str]) -> bool:
        """True if there is at least one AE title and every one may see identities."""
        titles = list(ae_titles)
        return bool(titles) and all(self.may_see_identity(title) for title in titles)

    def study_uid(self, study_instance_uid: str, *, reveal: bool) -> str:
        """The study's real UID when ``reveal``, else an opaque UID (``2.25.``, PS3.5 B.2).

        The opaque UID is stable for this node and cannot be turned back into
        the real one without the node's key.
        """
        if reveal:
            return study_instance_uid
        digest = hmac.new(self._key, b"study\0" + study_instance_uid.encode(), hashlib.sha256)
        return "2.25." + str(int.from_bytes(digest.digest()[:16], "big"))

    def case_id(self, patient_id: str | None) -> str:
        """A stable de-identified id for a patient."""
        digest = hmac.new(self._key, (patient_id or "").encode(), hashlib.sha256).hexdigest()
        return f"CASE-{digest[:12].upper()}"

    def label(
        self, patient_id: str | None, patient_name: str | None, *, reveal: bool
    ) -> PatientLabel:
        """The patient as shown: identity when ``reveal``, else the case id in both fields."""
        if reveal:
            return PatientLabel(patient_id or "", patient_name or "")
        case = self.case_id(patient_id)
        return PatientLabel(case, case)
