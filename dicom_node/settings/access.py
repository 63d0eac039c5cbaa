"""``[access]``: who may do what, one row per calling AE title.

The node is closed by default, as Orthanc is: an AE title that is not in the
table gets the ``unlisted`` permissions, ``store`` only unless configured
otherwise (a PACS or modality may send; nobody unknown may query). Every
decision about a calling AE is one of two calls:

- :meth:`AccessSettings.allows` -- may this calling AE title use this
  permission (:class:`Permission`)?
- :meth:`AccessSettings.certificate_allows` -- with DICOM TLS, may the peer
  that presented this client certificate subject use this AE title? A row
  with ``tls_subjects`` is bound to those certificates: the title claimed by
  any other peer is refused (PS3.15 B.1: the AE title alone proves nothing).

``dicom_node.net.access`` applies both when an association is requested;
the handlers ask :meth:`AccessSettings.allows` per request.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from dicom_node.errors import SettingsError
from dicom_node.settings.checks import validate_ae_title

__all__ = [
    "AccessRule",
    "AccessSettings",
    "Permission",
    "certificate_subject",
    "parse_subject",
    "subject_text",
]


class Permission(StrEnum):
    """What a calling AE title may do."""

    STORE = "store"
    """C-STORE to the main AE."""
    FIND = "find"
    """Study Root C-FIND on the main AE: answers hold every patient's name, ID and
    birth date, so it needs ``identities`` too."""
    SIMILARITY = "similarity"
    """C-FIND on the similarity AE (similar-case folders)."""
    IDENTITIES = "identities"
    """See other patients' names, IDs, accession numbers and real Study Instance
    UIDs: in similarity answers (as the caller) and in the SR and key images
    (as a destination). Without it: case ids and opaque UIDs."""
    RETRIEVE = "retrieve"
    """C-MOVE / C-GET of stored instances (whole instances carry identities, so it
    needs ``identities`` too)."""


#: Permissions whose answers carry patient identities by nature.
_NEED_IDENTITIES = (Permission.FIND, Permission.RETRIEVE)

#: OpenSSL long attribute names (``ssl.SSLSocket.getpeercert``) -> RFC 4514 short names.
_SUBJECT_NAMES = {
    "commonname": "CN",
    "organizationname": "O",
    "organizationalunitname": "OU",
    "countryname": "C",
    "stateorprovincename": "ST",
    "localityname": "L",
    "streetaddress": "STREET",
    "domaincomponent": "DC",
    "userid": "UID",
    "emailaddress": "EMAILADDRESS",
    "serialnumber": "SERIALNUMBER",
}

Subject = frozenset[tuple[str, str]]


def _attribute(name: str) -> str:
    key = name.strip()
    return _SUBJECT_NAMES.get(key.lower(), key.upper())


def parse_subject(text: str, where: str = "access") -> Subject:
    """A certificate subject as a set of ``(attribute, value)`` pairs.

    Accepts RFC 4514 (``CN=pacs,O=Hospital``), OpenSSL's one-line form
    (``C = DE, O = Hospital, CN = pacs``) and the slash form
    (``/C=DE/O=Hospital/CN=pacs``); order and spaces around ``=`` do not
    matter, attribute names are case-insensitive, values are not.

    Raises
    ------
    SettingsError
        An element is not ``attribute=value``.
    """
    body = text.strip()
    parts = body.lstrip("/").split("/") if body.startswith("/") else re.split(r"(?<!\\),", body)
    pairs = set()
    for part in parts:
        name, equals, value = part.partition("=")
        if not (equals and name.strip() and value.strip()):
            raise SettingsError(
                f"{where}: certificate subject {text!r} is not a list of attribute=value "
                '(e.g. "CN=pacs.hospital.example,O=Hospital")'
            )
        pairs.add((_attribute(name), value.strip().replace("\\,", ",")))
    return frozenset(pairs)


def certificate_subject(certificate: Mapping[str, Any] | None) -> Subject | None:
    """The subject of a peer certificate as :meth:`ssl.SSLSocket.getpeercert` gives it.

    Returns None when there is no (verified) certificate.
    """
    if not certificate or "subject" not in certificate:
        return None
    return frozenset(
        (_attribute(name), str(value)) for rdn in certificate["subject"] for name, value in rdn
    )


def subject_text(subject: Subject) -> str:
    """``CN=...,O=...``: a subject as an administrator would type it (for messages)."""
    order = ["CN", "OU", "O", "L", "ST", "C"]
    ranked = sorted(subject, key=lambda p: (order.index(p[0]) if p[0] in order else 99, p))
    return ",".join(f"{name}={value}" for name, value in ranked)


def _permissions(values: Iterable[Any], where: str) -> frozenset[Permission]:
    result = set()
    for value in values:
        try:
            result.add(Permission(str(value).strip().lower()))
        except ValueError as exc:
            known = ", ".join(p.value for p in Permission)
            raise SettingsError(f"{where}: unknown permission {value!r} (known: {known})") from exc
    return frozenset(result)


def _check_identities(permissions: frozenset[Permission], where: str) -> None:
    for permission in _NEED_IDENTITIES:
        if permission in permissions and Permission.IDENTITIES not in permissions:
            raise SettingsError(
                f"{where}: {permission.value!r} answers with patients' names and IDs, so it "
                "needs 'identities' too (for similar cases without identities grant "
                "'similarity' alone)"
            )


@dataclass(frozen=True)
class AccessRule:
    """One row of ``[access.ae_titles]``: a calling AE title and what it may do."""

    ae_title: str
    permissions: frozenset[Permission]
    tls_subjects: tuple[str, ...] = ()
    """Client certificate subjects that may use this AE title (with DICOM TLS)."""

    def __post_init__(self) -> None:
        where = f"access.ae_titles.{self.ae_title}"
        validate_ae_title(self.ae_title, "access.ae_titles")
        _check_identities(self.permissions, where)
        for subject in self.tls_subjects:
            parse_subject(subject, where)

    @property
    def subjects(self) -> frozenset[Subject]:
        """The bound certificate subjects, parsed."""
        return frozenset(parse_subject(s) for s in self.tls_subjects)

    @classmethod
    def parse(cls, ae_title: str, value: Any, where: str = "access.ae_titles") -> AccessRule:
        """A row from TOML: a list of permissions, or a table with ``permissions``
        and ``tls_subjects``; from the environment: permissions joined by ``+``.

        Raises
        ------
        SettingsError
        """
        here = f"{where}.{ae_title}"
        if isinstance(value, str):
            return cls(ae_title, _permissions(filter(None, value.split("+")), here))
        if isinstance(value, (list, tuple)):
            return cls(ae_title, _permissions(value, here))
        if isinstance(value, Mapping):
            unknown = set(value) - {"permissions", "tls_subjects"}
            if unknown:
                raise SettingsError(
                    f"{here}: unknown key(s) {', '.join(sorted(unknown))} "
                    "(known keys: permissions, tls_subjects)"
                )
            subjects = value.get("tls_subjects", [])
            if not (
                isinstance(subjects, list)
                and all(isinstance(s, str) for s in subjects)
                and isinstance(value.get("permissions", []), list)
            ):
                raise SettingsError(f"{here}: permissions and tls_subjects are lists of strings")
            return cls(ae_title, _permissions(value.get("permissions", []), here), tuple(subjects))
        raise SettingsError(
            f"{here}: expected a list of permissions or a table "
            "{ permissions = [...], tls_subjects = [...] }"
        )


@dataclass(frozen=True)
class AccessSettings:
    """``[access]``: permissions per calling AE title (see the module docstring)."""

    unlisted: tuple[Permission, ...] = (Permission.STORE,)
    """Permissions of calling AE titles not in ``ae_titles``: ``store`` by default
    (a warning is logged at start); empty = only listed AEs may associate."""
    ae_titles: tuple[AccessRule, ...] = ()
    """One row per calling AE title (``[access.ae_titles]``)."""

    def __post_init__(self) -> None:
        _check_identities(frozenset(self.unlisted), "access.unlisted")
        titles = [rule.ae_title for rule in self.ae_titles]
        duplicates = sorted({t for t in titles if titles.count(t) > 1})
        if duplicates:
            raise SettingsError(f"access.ae_titles: {', '.join(duplicates)} listed twice")

    def rule(self, ae_title: str | None) -> AccessRule | None:
        """The row of a calling AE title, or None when it is not listed."""
        title = (ae_title or "").strip()
        for rule in self.ae_titles:
            if rule.ae_title == title:
                return rule
        return None

    def permissions_of(self, ae_title: str | None) -> frozenset[Permission]:
        """Everything a calling AE title may do."""
        rule = self.rule(ae_title)
        return rule.permissions if rule is not None else frozenset(self.unlisted)

    def allows(self, ae_title: str | None, permission: Permission | str) -> bool:
        """True if ``ae_title`` has ``permission`` (a :class:`Permission` or its name)."""
        return Permission(permission) in self.permissions_of(ae_title)

    def certificate_allows(self, ae_title: str | None, subject: Subject | None) -> bool:
        """The TLS identity check: may the peer with this certificate subject use ``ae_title``?

        A row with ``tls_subjects`` admits only a peer whose verified client
        certificate subject is one of them; a title without bound subjects
        (listed without them, or unlisted) is not bound to a certificate.
        """
        rule = self.rule(ae_title)
        if rule is None or not rule.tls_subjects:
            return True
        return subject is not None and subject in rule.subjects

    @property
    def open_to_unlisted(self) -> bool:
        """True when AE titles that are not listed may do anything at all."""
        return bool(self.unlisted)
