"""The UIDs of the node's results, derived from what they describe.

One similar-case SR and one key-image montage exist per study and model
version. Their UIDs are not random: they are UUID-derived ``2.25.`` UIDs
(PS3.5 B.2) of name-based (SHA-1, version 5) UUIDs of their inputs, so the
same study, model version, kind and revision always give the same UID, in
any process and after any restart. (pydicom's ``generate_uid(prefix=None,
entropy_srcs=...)`` would not do: without a prefix it ignores the entropy
and returns a random UUID.) Consequences:

- a results step interrupted and run again makes the same objects, not new
  ones; the outbox's row per (destination, SOP Instance UID) keeps delivery
  to one;
- every revision of a study's SR (or montage) lives in the same series;
  revision *n* replaces revision *n - 1* (CONFORMANCE.md 6.3).

The series of the reference library (``dicom-node import-crops``) get their
UIDs the same way, from the public collection's own names
(:func:`reference_uid`), so importing a crop twice writes the same instances.
"""

from __future__ import annotations

import uuid

from storage.catalog import ResultKind

__all__ = ["reference_uid", "result_series_uid", "result_sop_instance_uid"]

_NAMESPACE = uuid.uuid5(uuid.NAMESPACE_URL, "urn:dicom-node:result")


def _derived_uid(*parts: str) -> str:
    """``2.25.`` and the integer of the version-5 UUID of ``parts``."""
    return f"2.25.{uuid.uuid5(_NAMESPACE, chr(0).join(parts)).int}"


def result_series_uid(study_instance_uid: str, model_version: str, kind: ResultKind) -> str:
    """The series of every revision of one kind of result of a study and model version."""
    return _derived_uid("series", study_instance_uid, model_version, kind.value)


def result_sop_instance_uid(
    study_instance_uid: str, model_version: str, kind: ResultKind, revision: int
) -> str:
    """The SOP Instance UID of one revision (1, 2, ...) of a result."""
    if revision < 1:
        raise ValueError(f"revisions start at 1, got {revision}")
    return _derived_uid("instance", study_instance_uid, model_version, kind.value, str(revision))


def reference_uid(kind: str, *names: str) -> str:
    """A UID of the reference library, from the names of what it identifies.

    Parameters
    ----------
    kind : str
        ``study``, ``series``, ``instance`` or ``frame``.
    names : str
        The collection's names (``"LIDC-IDRI"``, the patient, the nodule, the slice).
    """
    return _derived_uid("reference", kind, *names)
