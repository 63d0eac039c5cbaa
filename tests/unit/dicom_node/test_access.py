"""The permission table: one row per calling AE title, closed by default, TLS subjects bound."""

from __future__ import annotations

import pytest

from dicom_node.errors import SettingsError
from dicom_node.settings import AccessSettings, Permission, Settings, load_settings
from dicom_node.settings.access import certificate_subject, parse_subject


def _settings(tmp_path, text: str) -> Settings:
    config = tmp_path / "node.toml"
    config.write_text(text)
    return load_settings(config, environ={}, check_paths=False)


def test_closed_by_default_unknown_ae_may_store_only() -> None:
    access = Settings().access
    assert access.allows("ANY_MODALITY", Permission.STORE)
    for permission in ("find", "similarity", "identities", "retrieve"):
        assert not access.allows("ANY_MODALITY", permission)
    assert Settings().host == "127.0.0.1"


def test_rows_from_toml_lists_and_tables(tmp_path) -> None:
    settings = _settings(
        tmp_path,
        """
[access]
unlisted = []
[access.ae_titles]
PACS = { permissions = ["store", "find", "identities", "retrieve"] }
VIEWER = ["similarity"]
""",
    )
    access = settings.access
    assert access.permissions_of("PACS") == {
        Permission.STORE,
        Permission.FIND,
        Permission.IDENTITIES,
        Permission.RETRIEVE,
    }
    assert access.allows("VIEWER ", "similarity")  # AE titles are space-padded on the wire
    assert not access.allows("VIEWER", "identities")
    assert access.permissions_of("STRANGER") == frozenset()
    # the start-up log shows the table as it was written
    assert settings.describe()["access"]["ae_titles"][1] == {
        "ae_title": "VIEWER",
        "permissions": ["similarity"],
        "tls_subjects": [],
    }


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('[access.ae_titles]\nV = ["find"]', "'find' answers with patients' names"),
        ('[access.ae_titles]\nV = ["retrieve"]', "'retrieve' answers with patients' names"),
        ('[access]\nunlisted = ["find"]', "access.unlisted: 'find'"),
        ('[access.ae_titles]\nV = ["stroe"]', "unknown permission 'stroe'"),
        ('[access.ae_titles]\nA_TITLE_OF_17_CHR = ["store"]', "17 characters"),
        ('[access.ae_titles]\nV = { permission = ["store"] }', "unknown key(s) permission"),
        (
            '[access.ae_titles]\nV = { permissions = ["store"], tls_subjects = ["CN=v"] }',
            "tls_subjects need DICOM TLS with client certificates",
        ),
        ('[privacy]\nidentities_visible_to = ["X"]', "grant the 'identities' permission"),
        ('[security]\nallowed_calling_ae_titles = ["X"]', "access.unlisted = []"),
    ],
)
def test_bad_tables_name_the_row_and_the_fix(tmp_path, text, message) -> None:
    with pytest.raises(SettingsError) as raised:
        _settings(tmp_path, text)
    assert message in str(raised.value)


def test_environment_form_of_the_table() -> None:
    settings = load_settings(
        environ={
            "DICOM_NODE_ACCESS_AE_TITLES": "PACS=store+find+identities, VIEWER=similarity",
            "DICOM_NODE_ACCESS_UNLISTED": "",
        },
        check_paths=False,
    )
    assert settings.access.allows("PACS", "find")
    assert settings.access.allows("VIEWER", "similarity")
    assert settings.access.unlisted == ()


def test_client_certificates_bind_every_listed_title(tmp_path) -> None:
    tls = """
[security]
tls_certificate = "/n.crt"
tls_private_key = "/n.key"
tls_ca_certificates = "/ca.crt"
"""
    with pytest.raises(SettingsError, match="name the certificate subject"):
        _settings(tmp_path, tls + '[access.ae_titles]\nPACS = ["store"]')
    settings = _settings(
        tmp_path,
        tls + '[access.ae_titles]\nPACS = { permissions = ["store"], '
        'tls_subjects = ["CN=pacs.example,O=Hospital"] }',
    )
    access = settings.access
    # what ssl.SSLSocket.getpeercert() returns, in certificate (DER) order
    pacs = certificate_subject(
        {"subject": ((("organizationName", "Hospital"),), (("commonName", "pacs.example"),))}
    )
    viewer = certificate_subject({"subject": ((("commonName", "viewer.example"),),)})
    assert access.certificate_allows("PACS", pacs)
    assert not access.certificate_allows("PACS", viewer)
    assert not access.certificate_allows("PACS", None)
    # an unlisted title is not bound: it only ever gets the unlisted permissions
    assert access.certificate_allows("OTHER", viewer)


def test_subject_forms_are_equivalent() -> None:
    expected = parse_subject("CN=pacs.example,O=Hospital,C=DE")
    assert parse_subject("C = DE, O = Hospital, CN = pacs.example") == expected
    assert parse_subject("/C=DE/O=Hospital/CN=pacs.example") == expected
    assert parse_subject("commonName=pacs.example,organizationName=Hospital,C=DE") == expected
    assert parse_subject("CN=pacs.example,O=Other,C=DE") != expected
    with pytest.raises(SettingsError, match="attribute=value"):
        parse_subject("pacs.example")


def test_duplicate_rows_are_refused() -> None:
    from dicom_node.settings import AccessRule

    with pytest.raises(SettingsError, match="listed twice"):
        AccessSettings(
            ae_titles=(
                AccessRule("PACS", frozenset({Permission.STORE})),
                AccessRule("PACS", frozenset({Permission.SIMILARITY})),
            )
        )
