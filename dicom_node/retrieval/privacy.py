"""Who may see other patients' identities, and the pseudonyms everyone else sees.

One policy labels every other patient the node shows: in the similar-case
SR and montage (identities only if every destination may see them), in the
similarity AE's C-FIND answers (if the calling AE may), and in
``dicom-node similar`` (with ``--show-phi``).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from dicom_node.settings import PrivacySettings

__all__ = ["PatientLabel", "PrivacyPolicy"]


@dataclass(frozen=True)
class PatientLabel:
    """How another patient is shown: real identity or a case id in both fields."""

    patient_id: str
    patient_name: str


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

    def all_may_see_identity(self, ae_titles: Iterable[str]) -> bool:
        """True if there is at least one AE title and every one may see identities."""
        titles = list(ae_titles)
        return bool(titles) and all(self.may_see_identity(title) for title in titles)

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
