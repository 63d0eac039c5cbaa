from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from dicom_node.errors import SettingsError
from dicom_node.settings import Settings, load_settings

REPO = Path(__file__).resolve().parents[3]
EXAMPLE = REPO / "config" / "dicom-node.toml"


def _leaf_keys(cls: type, prefix: str = "") -> set[str]:
    keys = set()
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore[misc]
        if dataclasses.is_dataclass(default):
            keys |= _leaf_keys(type(default), f"{f.name}.")
        else:
            keys.add(prefix + f.name)
    return keys


def test_example_file_documents_every_key_with_its_default(tmp_path) -> None:
    loaded = load_settings(EXAMPLE, environ={}, check_paths=False)
    assert loaded == Settings()
    text = EXAMPLE.read_text()
    for key in _leaf_keys(Settings):
        name = key.split(".")[-1]
        assert (
            re.search(rf"^# .+\n(# .*\n)*{name} = ", text, re.M)
            or re.search(rf"^# .+\n(# .*\n)*(\w+ = .*\n)*{name} = ", text, re.M)
            # a table of rows: documented above its [section.key] header
            or re.search(rf"^# .+\n(# .*\n)*\[\w+\.{name}\]\n", text, re.M)
        ), f"{key} is not documented in config/dicom-node.toml"


def test_precedence_file_then_environment_then_flags(tmp_path) -> None:
    config = tmp_path / "node.toml"
    config.write_text('port = 2000\nae_title = "FROMFILE"\n[series]\nidle_seconds = 7\n')
    settings = load_settings(
        config,
        environ={"DICOM_NODE_PORT": "3000", "DICOM_NODE_SERIES_IDLE_SECONDS": "5"},
        overrides={"port": 4000, "data_dir": tmp_path / "d"},
    )
    assert settings.port == 4000
    assert settings.ae_title == "FROMFILE"
    assert settings.series.idle_seconds == 5.0
    assert settings.data_dir == tmp_path / "d"


def test_environment_lists_and_booleans(tmp_path) -> None:
    settings = load_settings(
        environ={
            "DICOM_NODE_SECURITY_ALLOWED_PEER_ADDRESSES": "10.0.0.5, 10.1.0.0/16",
            "DICOM_NODE_STORAGE_FSYNC": "no",
            "DICOM_NODE_DATA_DIR": str(tmp_path),
        }
    )
    assert settings.security.allowed_peer_addresses == ("10.0.0.5", "10.1.0.0/16")
    assert settings.storage.fsync is False


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"DICOM_NODE_PORT": "70000"}, "port: 70000 is not a TCP port"),
        ({"DICOM_NODE_PORT": "eleven"}, "DICOM_NODE_PORT: expected an integer"),
        ({"DICOM_NODE_AE_TITLE": "A_TITLE_OF_17_CHR"}, "17 characters (maximum 16)"),
        ({"DICOM_NODE_AE_TITLE": "  "}, "must not be empty"),
        (
            {"DICOM_NODE_SERIES_IDLE_SECOND": "5"},
            "DICOM_NODE_SERIES_IDLE_SECOND is not a known setting",
        ),
        (
            {"DICOM_NODE_SECURITY_ALLOWED_PEER_ADDRESSES": "10.0.0.0/33"},
            "not an IP address or network",
        ),
        (
            {"DICOM_NODE_SECURITY_TLS_CERTIFICATE": "/x.pem"},
            "needs both tls_certificate and tls_private_key",
        ),
        ({"DICOM_NODE_WORKER_DEVICE": "tpu"}, "is not auto, cpu or cuda"),
        ({"DICOM_NODE_STORAGE_CATALOG_URL": "mysql://x"}, "only sqlite"),
        (
            {"DICOM_NODE_WORKER_MIN_NODULE_PROBABILITY": "1.5"},
            "worker.min_nodule_probability must be within 0..1",
        ),
        (
            {"DICOM_NODE_WORKER_MIN_NODULE_DIAMETER_MM": "-1"},
            "worker.min_nodule_diameter_mm must be within 0..30",
        ),
        (
            {"DICOM_NODE_WORKER_MIN_NODULE_CONFIDENCE": "0.15"},
            "DICOM_NODE_WORKER_MIN_NODULE_CONFIDENCE is not a known setting",
        ),
    ],
)
def test_bad_values_give_clear_messages(environ, message) -> None:
    with pytest.raises(SettingsError, match=re.escape(message)):
        load_settings(environ=environ, check_paths=False)


def test_unknown_key_in_file_is_an_error(tmp_path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("[series]\nidle_second = 5\n")
    with pytest.raises(SettingsError, match="unknown key 'idle_second'"):
        load_settings(config, environ={}, check_paths=False)


def test_invalid_toml_and_missing_file(tmp_path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text("port = \n")
    with pytest.raises(SettingsError, match="not valid TOML"):
        load_settings(config, environ={}, check_paths=False)
    with pytest.raises(SettingsError, match="does not exist"):
        load_settings(tmp_path / "missing.toml", environ={}, check_paths=False)


def test_unwritable_data_directory(tmp_path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    with pytest.raises(SettingsError, match="is not a writable directory"):
        load_settings(environ={}, overrides={"data_dir": blocker / "data"})


def test_cli_reports_configuration_errors(capsys) -> None:
    from dicom_node.cli import main

    assert main(["serve", "--port", "99999"]) == 2
    assert "configuration error: port: 99999" in capsys.readouterr().err


def test_describe_masks_the_database_password() -> None:
    settings = dataclasses.replace(
        Settings(),
        storage=dataclasses.replace(
            Settings().storage, catalog_url="postgresql+psycopg://node:s3cret@db/node"
        ),
    )
    assert settings.describe()["storage"]["catalog_url"] == "postgresql+psycopg://node:***@db/node"
    trusted = "postgresql+psycopg://postgres@127.0.0.1:5432/node"  # no password: unchanged
    settings = dataclasses.replace(
        settings, storage=dataclasses.replace(settings.storage, catalog_url=trusted)
    )
    assert settings.describe()["storage"]["catalog_url"] == trusted


def test_every_setting_is_read_outside_the_settings_package() -> None:
    """A key no code reads is a promise the node does not keep (DESIGN.md lists the readers)."""
    import ast

    read: set[str] = set()
    for path in (REPO / "dicom_node").rglob("*.py"):
        if "settings" in path.relative_to(REPO / "dicom_node").parts:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        read |= {node.attr for node in ast.walk(tree) if isinstance(node, ast.Attribute)}
    unread = sorted(key for key in _leaf_keys(Settings) if key.split(".")[-1] not in read)
    assert not unread, f"settings no code reads: {unread}"


def test_sections_validate_themselves_and_destinations_are_parsed_once() -> None:
    from dicom_node.settings import (
        Destination,
        NetworkSettings,
        OutboxSettings,
        SimilaritySettings,
    )

    with pytest.raises(SettingsError, match="network.max_pdu"):
        NetworkSettings(max_pdu=100)
    with pytest.raises(SettingsError, match="network.receivers must be 1..64"):
        NetworkSettings(receivers=0)
    with pytest.raises(SettingsError, match="matches_per_nodule must be at least 1"):
        SimilaritySettings(matches_per_nodule=0)
    with pytest.raises(SettingsError, match="retry_initial_seconds must be positive"):
        OutboxSettings(retry_initial_seconds=0)
    with pytest.raises(SettingsError, match="similarity.ae_title must differ"):
        Settings(ae_title="SAME", similarity=SimilaritySettings(ae_title="SAME"))
    with pytest.raises(SettingsError, match="is not AE@host:port"):
        Destination.parse("PACS-at-host")
    with pytest.raises(SettingsError, match="port is not 1-65535"):
        Destination.parse("PACS@host:0")
    settings = load_settings(
        environ={"DICOM_NODE_OUTBOX_DESTINATIONS": "PACS@10.0.0.5:104,ARCH@[fe80::1]:11112"},
        check_paths=False,
    )
    assert settings.outbox.destinations == (
        Destination("PACS", "10.0.0.5", 104),
        Destination("ARCH", "fe80::1", 11112),
    )
    described = settings.describe()["outbox"]["destinations"]
    assert described == ["PACS@10.0.0.5:104", "ARCH@[fe80::1]:11112"]
    assert tuple(Destination.parse(text) for text in described) == settings.outbox.destinations
