"""Loading the settings: built-in defaults, a TOML file, ``DICOM_NODE_*``, flags.

Every key of ``config/dicom-node.toml`` is a field of a section in
:mod:`dicom_node.settings.sections`. Top-level keys map to
``DICOM_NODE_<KEY>`` (``DICOM_NODE_PORT``), keys of a ``[section]`` to
``DICOM_NODE_<SECTION>_<KEY>`` (``DICOM_NODE_SERIES_IDLE_SECONDS``). Lists are
comma-separated in the environment. Unknown keys are errors, so a typo never
silently falls back to a default.

Each source is turned into a table of typed values (naming the file or the
variable when a value has the wrong type), the tables are merged in order of
precedence, and the settings are constructed once from the result: the
sections validate their own values.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
import tomllib
import typing
from collections.abc import Mapping
from enum import Enum
from pathlib import Path
from typing import Any

from dicom_node.errors import SettingsError
from dicom_node.settings.access import AccessRule
from dicom_node.settings.sections import Destination, Settings

__all__ = ["ENV_PREFIX", "check_files", "load_settings", "settings_from_table"]

ENV_PREFIX = "DICOM_NODE_"

Table = dict[str, Any]

#: Keys of earlier versions, and where their meaning went (named in the error).
MOVED_KEYS = {
    "security.allowed_calling_ae_titles": "list the AE titles in [access.ae_titles] with "
    "their permissions, and set access.unlisted = [] to refuse every other calling AE",
    "privacy": "grant the 'identities' permission in [access.ae_titles] instead of "
    "privacy.identities_visible_to",
    "privacy.identities_visible_to": "grant the 'identities' permission in "
    "[access.ae_titles] instead",
    "retrieve.allowed_ae_titles": "grant the 'retrieve' permission (with 'identities') in "
    "[access.ae_titles] instead; retrieve.move_destinations stays where C-MOVE may send",
}


def _moved(key: str, where: str) -> None:
    if key in MOVED_KEYS:
        raise SettingsError(f"{where}: {key} is no longer a setting: {MOVED_KEYS[key]}")


def _hints(cls: type) -> dict[str, Any]:
    hints: dict[str, Any] = typing.get_type_hints(cls)
    return hints


def _is_section(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _convert(value: Any, tp: Any, where: str, *, from_env: bool) -> Any:
    """Coerce a TOML, environment or flag value to the field type, or raise."""
    if tp is bool:
        if isinstance(value, bool):
            return value
        lowered = value.strip().lower() if from_env and isinstance(value, str) else None
        if lowered in {"1", "true", "yes", "on"}:
            return True
        if lowered in {"0", "false", "no", "off"}:
            return False
        raise SettingsError(f"{where}: expected true or false, got {value!r}")
    if tp in (int, float):
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if tp is int and not isinstance(value, int):
                raise SettingsError(f"{where}: expected an integer, got {value!r}")
            return tp(value)
        if from_env and isinstance(value, str):
            try:
                return tp(value.strip())
            except ValueError:
                pass
        kind = "an integer" if tp is int else "a number"
        raise SettingsError(f"{where}: expected {kind}, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise SettingsError(f"{where}: expected a string, got {value!r}")
    if tp is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
        raise SettingsError(f"{where}: expected a path, got {value!r}")
    if typing.get_origin(tp) is tuple:
        item = typing.get_args(tp)[0]
        if item is AccessRule:
            return _access_rules(value, where, from_env=from_env)
        if from_env and isinstance(value, str):
            value = [item.strip() for item in value.split(",") if item.strip()]
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            if item is Destination:
                return tuple(Destination.parse(text, where) for text in value)
            if isinstance(item, type) and issubclass(item, Enum):
                return tuple(_enum_value(item, text, where) for text in value)
            return tuple(value)
        raise SettingsError(f"{where}: expected a list of strings, got {value!r}")
    raise SettingsError(f"{where}: unsupported type {tp}")  # pragma: no cover


def _enum_value(enum: type[Enum], text: str, where: str) -> Any:
    try:
        return enum(text.strip().lower())
    except ValueError as exc:
        known = ", ".join(str(member.value) for member in enum)
        raise SettingsError(f"{where}: unknown value {text!r} (known: {known})") from exc


def _access_rules(value: Any, where: str, *, from_env: bool) -> tuple[AccessRule, ...]:
    """``[access.ae_titles]`` rows: a TOML table, or ``AE=perm+perm,AE2=perm`` (environment)."""
    if from_env and isinstance(value, str):
        rows: dict[str, Any] = {}
        for item in filter(None, (part.strip() for part in value.split(","))):
            title, equals, permissions = item.partition("=")
            if not equals:
                raise SettingsError(f"{where}: {item!r} is not AE=permission+permission")
            rows[title.strip()] = permissions.strip()
        value = rows
    if not isinstance(value, Mapping):
        raise SettingsError(f"{where}: expected a table of AE titles, got {value!r}")
    return tuple(AccessRule.parse(title, row, where) for title, row in value.items())


def _typed_table(cls: type, values: Mapping[str, Any], where: str, section: str = "") -> Table:
    """Check the keys of a TOML-like table and convert its values to the field types."""
    hints = _hints(cls)
    table: Table = {}
    for key, value in values.items():
        if key not in hints:
            _moved(f"{section}.{key}" if section else key, where)
            raise SettingsError(
                f"{where}: unknown key {key!r} (known keys: {', '.join(sorted(hints))})"
            )
        tp = hints[key]
        if _is_section(tp):
            if not isinstance(value, Mapping):
                raise SettingsError(f"{where}: [{key}] must be a table")
            table[key] = _typed_table(tp, value, f"{where} [{key}]".strip(), key)
        else:
            table[key] = _convert(value, tp, f"{where} {key}".strip(), from_env=False)
    return table


def _env_table(environ: Mapping[str, str]) -> Table:
    """``DICOM_NODE_*`` variables as a table of typed values."""
    hints = _hints(Settings)
    table: Table = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name == ENV_PREFIX + "CONFIG":
            continue
        key = name[len(ENV_PREFIX) :].lower()
        if key in hints and not _is_section(hints[key]):
            table[key] = _convert(raw, hints[key], name, from_env=True)
            continue
        for section, tp in hints.items():
            if not (_is_section(tp) and key.startswith(section + "_")):
                continue
            sub = key[len(section) + 1 :]
            section_hints = _hints(tp)
            if sub in section_hints:
                table.setdefault(section, {})[sub] = _convert(
                    raw, section_hints[sub], name, from_env=True
                )
                break
        else:
            for moved in MOVED_KEYS:
                if key == moved.replace(".", "_"):
                    _moved(moved, f"environment variable {name}")
            raise SettingsError(f"environment variable {name} is not a known setting")
    return table


def _merge(base: Table, update: Mapping[str, Any]) -> Table:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _build(table: Mapping[str, Any]) -> Settings:
    hints = _hints(Settings)
    values = {
        key: hints[key](**value) if _is_section(hints[key]) else value
        for key, value in table.items()
    }
    return Settings(**values)


def settings_from_table(table: Mapping[str, Any], where: str = "settings") -> Settings:
    """Settings from a TOML-like table of overrides of the defaults.

    Parameters
    ----------
    table : mapping
        Top-level keys and ``{section: {key: value}}`` tables, as in the TOML
        file (lists for list values, ``"AE@host:port"`` text for destinations).
    where : str
        Named in error messages.

    Raises
    ------
    SettingsError
    """
    return _build(_typed_table(Settings, table, where))


def load_settings(
    config_file: Path | str | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
    check_paths: bool = True,
) -> Settings:
    """Build and validate the settings.

    Parameters
    ----------
    config_file : path, optional
        TOML file; if None, ``DICOM_NODE_CONFIG`` from the environment, else
        built-in defaults only.
    environ : mapping, optional
        Environment to read ``DICOM_NODE_*`` from (default ``os.environ``).
    overrides : mapping, optional
        Command-line values (top-level keys such as ``port``, ``ae_title``,
        ``data_dir``), applied last; None values are ignored.
    check_paths : bool
        Create and write-test the data directory and check TLS files.

    Returns
    -------
    Settings

    Raises
    ------
    SettingsError
        With a message naming the key, the value and what is expected.
    """
    environ = os.environ if environ is None else environ
    table: Table = {}
    if config_file is None:
        config_file = environ.get(ENV_PREFIX + "CONFIG") or None
    if config_file is not None:
        path = Path(config_file)
        try:
            with path.open("rb") as handle:
                document = tomllib.load(handle)
        except FileNotFoundError as exc:
            raise SettingsError(f"configuration file {path} does not exist") from exc
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"configuration file {path} is not valid TOML: {exc}") from exc
        except OSError as exc:
            raise SettingsError(f"cannot read configuration file {path}: {exc.strerror}") from exc
        table = _typed_table(Settings, document, str(path))
    table = _merge(table, _env_table(environ))
    if overrides:
        flags = {k: (str(v) if isinstance(v, Path) else v) for k, v in overrides.items()}
        table = _merge(
            table,
            _typed_table(
                Settings, {k: v for k, v in flags.items() if v is not None}, "command line"
            ),
        )
    settings = _build(table)
    if check_paths:
        check_files(settings)
    return settings


def check_files(settings: Settings) -> None:
    """Create and write-test the data directory; check the TLS files are readable.

    Raises
    ------
    SettingsError
    """
    path = settings.data_dir
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise SettingsError(
            f"data_dir: {path} is not a writable directory ({exc.strerror})"
        ) from exc
    for name in ("tls_certificate", "tls_private_key", "tls_ca_certificates"):
        value = getattr(settings.security, name)
        if value and not os.access(value, os.R_OK):
            raise SettingsError(f"security.{name}: {value} does not exist or is not readable")
