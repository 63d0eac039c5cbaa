"""Typed settings: built-in defaults, then a TOML file, then ``DICOM_NODE_*``
environment variables, then command-line flags; validated once at start.

Every key of ``config/dicom-node.toml`` is a field below. Top-level keys map
to ``DICOM_NODE_<KEY>`` (``DICOM_NODE_PORT``), keys of a ``[section]`` to
``DICOM_NODE_<SECTION>_<KEY>`` (``DICOM_NODE_SERIES_IDLE_SECONDS``). Lists are
comma-separated in the environment. Unknown keys are errors, so a typo never
silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import logging
import os
import tempfile
import tomllib
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dicom_node.errors import SettingsError

__all__ = [
    "Destination",
    "NetworkSettings",
    "OutboxSettings",
    "PrivacySettings",
    "QualificationSettings",
    "SimilaritySettings",
    "SecuritySettings",
    "SeriesSettings",
    "Settings",
    "StorageSettings",
    "WorkerSettings",
    "load_settings",
]

logger = logging.getLogger(__name__)

ENV_PREFIX = "DICOM_NODE_"


@dataclass(frozen=True)
class NetworkSettings:
    """``[network]``: association limits and timeouts."""

    max_associations: int = 16
    """Concurrent associations accepted; further requests are rejected (transient)."""
    acse_timeout: float = 30.0
    """Seconds to wait for association messages (A-ASSOCIATE, A-RELEASE)."""
    dimse_timeout: float = 60.0
    """Seconds to wait for DIMSE messages within an association."""
    network_timeout: float = 60.0
    """Seconds of network silence before an association is aborted."""
    max_pdu: int = 262144
    """Maximum PDU length we receive, in bytes (0 = unlimited)."""


@dataclass(frozen=True)
class SecuritySettings:
    """``[security]``: who may associate, and DICOM TLS."""

    allowed_calling_ae_titles: tuple[str, ...] = ()
    """Calling AE titles accepted; empty = any (a warning is logged at start)."""
    allowed_peer_addresses: tuple[str, ...] = ()
    """Peer IP addresses or networks (CIDR) accepted; empty = any."""
    tls_certificate: str = ""
    """PEM certificate of the node; with ``tls_private_key`` turns TLS on."""
    tls_private_key: str = ""
    """PEM private key of the node."""
    tls_ca_certificates: str = ""
    """PEM bundle of CAs whose client certificates are accepted."""
    tls_require_client_certificate: bool = True
    """With a CA bundle: refuse peers without a valid client certificate."""

    @property
    def tls_enabled(self) -> bool:
        """True when a certificate and key are configured."""
        return bool(self.tls_certificate and self.tls_private_key)


@dataclass(frozen=True)
class StorageSettings:
    """``[storage]``: catalog and instance files."""

    catalog_url: str = ""
    """SQLAlchemy URL; empty = SQLite file ``catalog.sqlite3`` in ``data_dir``."""
    min_free_mb: int = 1024
    """Refuse instances (0xA700) when free disk space would fall under this."""
    fsync: bool = True
    """Flush each instance to stable storage before acknowledging it."""


@dataclass(frozen=True)
class SeriesSettings:
    """``[series]``: when a series counts as complete."""

    idle_seconds: float = 30.0
    """A series is complete after this many seconds without a new instance."""
    check_interval_seconds: float = 1.0
    """How often the completion watcher looks for idle series."""


@dataclass(frozen=True)
class WorkerSettings:
    """``[worker]``: processing of completed series."""

    threads: int = 1
    """Worker threads processing completed series in the node process."""
    device: str = "auto"
    """``auto`` (CUDA when present), ``cpu`` or ``cuda``."""
    min_nodule_probability: float = 0.5
    """Operating point: candidates whose probability of being a nodule (the false-positive
    reduction network, ``ai.fpr``) is under this are not indexed or reported. Chosen for
    about 1 false positive per scan (``dicom-node evaluate detection``, model card)."""
    min_nodule_diameter_mm: float = 4.0
    """Smallest equivalent diameter reported, mm (Lung-RADS counts from 4 mm; LUNA16 3 mm)."""
    model_dir: str = ""
    """Folder written by ``dicom-node train`` (weights + model card); empty = the shipped model."""


@dataclass(frozen=True)
class QualificationSettings:
    """``[qualification]``: which completed series are processed (rules as data).

    A series failing a rule becomes ``skipped`` with the rule's reason.
    """

    modalities: tuple[str, ...] = ("CT",)
    """Modality (0008,0060) values processed."""
    sop_class_uids: tuple[str, ...] = ("1.2.840.10008.5.1.4.1.1.2",)
    """SOP classes processed (CT Image Storage)."""
    image_type_includes: tuple[str, ...] = ("ORIGINAL", "AXIAL")
    """Values that ImageType (0008,0008) must all contain: axial original images."""
    max_slice_thickness_mm: float = 2.5
    """Thicker slices are skipped (the U-Net paper excludes > 2.5 mm)."""
    min_slices: int = 40
    """Fewer images cannot cover the lungs."""
    min_lung_volume_ml: float = 500.0
    """Less segmented lung than this: not a chest CT, or the lungs are cut off."""


@dataclass(frozen=True)
class SimilaritySettings:
    """``[similarity]``: the AE answering similar-case C-FIND queries."""

    ae_title: str = "DICOM_NODE_SIM"
    """AE title of the similarity C-FIND SCP."""
    port: int = 11113
    """Its TCP port (0 = any free port; -1 = no similarity AE)."""
    studies_per_folder: int = 10
    """Similar prior studies listed per index study."""
    matches_per_nodule: int = 10
    """Similar nodules fetched per query nodule before aggregating to studies."""


@dataclass(frozen=True)
class PrivacySettings:
    """``[privacy]``: who may see other patients' identity in results."""

    identities_visible_to: tuple[str, ...] = ()
    """Calling (or destination) AE titles that see other patients' names and IDs;
    everyone else gets de-identified case ids (``CASE-…``)."""


@dataclass(frozen=True)
class Destination:
    """A DICOM peer results are sent to, parsed from ``AE@host:port``."""

    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str, where: str = "outbox.destinations") -> Destination:
        """Parse ``AE@host:port``; raise SettingsError with the reason."""
        ae_title, at, address = text.partition("@")
        host, colon, port = address.rpartition(":")
        if not at or not colon or not host:
            raise SettingsError(f"{where}: {text!r} is not AE@host:port")
        validate_ae_title(ae_title, where)
        try:
            number = int(port)
        except ValueError as exc:
            raise SettingsError(f"{where}: {text!r} has no numeric port") from exc
        if not 1 <= number <= 65535:
            raise SettingsError(f"{where}: {text!r} port is not 1-65535")
        return cls(ae_title, host.strip("[]"), number)

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


@dataclass(frozen=True)
class OutboxSettings:
    """``[outbox]``: where results (SR, key images) are sent, and how hard we try."""

    destinations: tuple[str, ...] = ()
    """Peers as ``AE@host:port``, e.g. ``["PACS@10.0.0.5:104"]``; empty = keep results locally."""
    calling_ae_title: str = ""
    """Calling AE title for sending; empty = ``ae_title``."""
    retry_initial_seconds: float = 10.0
    """First wait after a failed delivery; doubles on each further failure."""
    retry_max_seconds: float = 600.0
    """Longest wait between two attempts."""
    give_up_after_hours: float = 72.0
    """A delivery still failing this long after it was queued is marked failed."""

    def parsed_destinations(self) -> tuple[Destination, ...]:
        """The destinations, parsed."""
        return tuple(Destination.parse(text) for text in self.destinations)


@dataclass(frozen=True)
class Settings:
    """Everything the node is configured with, created once and passed down."""

    ae_title: str = "DICOM_NODE"
    """Our AE title (1 to 16 characters)."""
    host: str = "0.0.0.0"
    """Address the SCP listens on."""
    port: int = 11112
    """TCP port the SCP listens on (0 = any free port)."""
    data_dir: Path = Path("./dicom-node-data")
    """Directory for the catalog, instances, outbox and logs."""
    network: NetworkSettings = field(default_factory=NetworkSettings)
    security: SecuritySettings = field(default_factory=SecuritySettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    series: SeriesSettings = field(default_factory=SeriesSettings)
    worker: WorkerSettings = field(default_factory=WorkerSettings)
    outbox: OutboxSettings = field(default_factory=OutboxSettings)
    qualification: QualificationSettings = field(default_factory=QualificationSettings)
    similarity: SimilaritySettings = field(default_factory=SimilaritySettings)
    privacy: PrivacySettings = field(default_factory=PrivacySettings)

    @property
    def instances_dir(self) -> Path:
        """Where instance files live."""
        return self.data_dir / "instances"

    @property
    def catalog_url(self) -> str:
        """The effective catalog URL."""
        if self.storage.catalog_url:
            return self.storage.catalog_url
        return f"sqlite:///{(self.data_dir / 'catalog.sqlite3').resolve()}"

    def describe(self) -> dict[str, Any]:
        """The effective configuration for the start-up log, secrets masked."""
        result: dict[str, Any] = _to_dict(self)
        url = result["storage"]["catalog_url"]
        if "@" in url and ":" in url.split("@")[0]:
            scheme, rest = url.split("://", 1)
            user = rest.split(":", 1)[0]
            result["storage"]["catalog_url"] = f"{scheme}://{user}:***@{rest.split('@', 1)[1]}"
        return result


def _to_dict(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _to_dict(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return list(value)
    return value


# -- loading ---------------------------------------------------------------


def _hints(cls: type) -> dict[str, Any]:
    hints: dict[str, Any] = typing.get_type_hints(cls)
    return hints


def _is_section(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _convert(value: Any, tp: Any, where: str, *, from_env: bool) -> Any:
    """Coerce a TOML or environment value to the field type, or raise."""
    origin = typing.get_origin(tp)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if from_env and isinstance(value, str):
            lowered = value.strip().lower()
            if lowered in {"1", "true", "yes", "on"}:
                return True
            if lowered in {"0", "false", "no", "off"}:
                return False
        raise SettingsError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if from_env and isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
        raise SettingsError(f"{where}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if from_env and isinstance(value, str):
            try:
                return float(value.strip())
            except ValueError:
                pass
        raise SettingsError(f"{where}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise SettingsError(f"{where}: expected a string, got {value!r}")
    if tp is Path:
        if isinstance(value, (str, Path)):
            return Path(value)
        raise SettingsError(f"{where}: expected a path, got {value!r}")
    if origin is tuple:
        if from_env and isinstance(value, str):
            value = [item.strip() for item in value.split(",") if item.strip()]
        if isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return tuple(value)
        raise SettingsError(f"{where}: expected a list of strings, got {value!r}")
    if origin in (types.UnionType, typing.Union):  # pragma: no cover - not used yet
        raise SettingsError(f"{where}: unsupported type {tp}")
    raise SettingsError(f"{where}: unsupported type {tp}")  # pragma: no cover


def _apply(cls: type, base: Any, values: Mapping[str, Any], where: str) -> Any:
    """Return ``base`` (an instance of ``cls``) updated from a TOML table."""
    hints = _hints(cls)
    changes: dict[str, Any] = {}
    for key, value in values.items():
        if key not in hints:
            known = ", ".join(sorted(hints))
            raise SettingsError(f"{where}: unknown key {key!r} (known keys: {known})")
        tp = hints[key]
        if _is_section(tp):
            if not isinstance(value, Mapping):
                raise SettingsError(f"{where}: [{key}] must be a table")
            changes[key] = _apply(tp, getattr(base, key), value, f"[{key}]")
        else:
            changes[key] = _convert(value, tp, f"{where} {key}".strip(), from_env=False)
    return dataclasses.replace(base, **changes)


def _env_table(environ: Mapping[str, str]) -> dict[str, Any]:
    """Turn ``DICOM_NODE_*`` variables into a nested table of raw strings."""
    hints = _hints(Settings)
    table: dict[str, Any] = {}
    for name, raw in environ.items():
        if not name.startswith(ENV_PREFIX) or name == ENV_PREFIX + "CONFIG":
            continue
        key = name[len(ENV_PREFIX) :].lower()
        if key in hints and not _is_section(hints[key]):
            table[key] = raw
            continue
        for section, tp in hints.items():
            if _is_section(tp) and key.startswith(section + "_"):
                sub = key[len(section) + 1 :]
                if sub in _hints(tp):
                    table.setdefault(section, {})[sub] = raw
                    break
        else:
            raise SettingsError(f"environment variable {name} is not a known setting")
    return table


def _apply_env(base: Settings, table: Mapping[str, Any]) -> Settings:
    hints = _hints(Settings)
    changes: dict[str, Any] = {}
    for key, value in table.items():
        tp = hints[key]
        if _is_section(tp):
            section_hints = _hints(tp)
            sub_changes = {
                sub: _convert(
                    raw,
                    section_hints[sub],
                    f"{ENV_PREFIX}{key.upper()}_{sub.upper()}",
                    from_env=True,
                )
                for sub, raw in value.items()
            }
            changes[key] = dataclasses.replace(getattr(base, key), **sub_changes)
        else:
            changes[key] = _convert(value, tp, f"{ENV_PREFIX}{key.upper()}", from_env=True)
    return dataclasses.replace(base, **changes)


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
    settings = Settings()
    if config_file is None:
        config_file = environ.get(ENV_PREFIX + "CONFIG") or None
    if config_file is not None:
        path = Path(config_file)
        try:
            with path.open("rb") as handle:
                table = tomllib.load(handle)
        except FileNotFoundError as exc:
            raise SettingsError(f"configuration file {path} does not exist") from exc
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"configuration file {path} is not valid TOML: {exc}") from exc
        except OSError as exc:
            raise SettingsError(f"cannot read configuration file {path}: {exc.strerror}") from exc
        settings = _apply(Settings, settings, table, str(path))
    settings = _apply_env(settings, _env_table(environ))
    if overrides:
        settings = _apply(
            Settings,
            settings,
            {
                k: (str(v) if isinstance(v, Path) else v)
                for k, v in overrides.items()
                if v is not None
            },
            "command line",
        )
    validate(settings, check_paths=check_paths)
    return settings


# -- validation ------------------------------------------------------------


def validate_ae_title(value: str, where: str) -> None:
    """Raise SettingsError unless ``value`` is a valid AE title (PS3.5 AE VR)."""
    if not value.strip():
        raise SettingsError(f"{where}: an AE title must not be empty")
    if len(value) > 16:
        raise SettingsError(f"{where}: AE title {value!r} is {len(value)} characters (maximum 16)")
    if "\\" in value or any(ord(c) < 32 or ord(c) > 126 for c in value):
        raise SettingsError(
            f"{where}: AE title {value!r} has a backslash or a non-printable character"
        )


def validate(settings: Settings, *, check_paths: bool = True) -> None:
    """Check every value; raise SettingsError on the first problem."""
    validate_ae_title(settings.ae_title, "ae_title")
    if not 0 <= settings.port <= 65535:
        raise SettingsError(f"port: {settings.port} is not a TCP port (0-65535)")
    try:
        ipaddress.ip_address(settings.host)
    except ValueError as exc:
        raise SettingsError(f"host: {settings.host!r} is not an IP address") from exc
    net = settings.network
    if net.max_associations < 1:
        raise SettingsError("network.max_associations must be at least 1")
    for name in ("acse_timeout", "dimse_timeout", "network_timeout"):
        if getattr(net, name) <= 0:
            raise SettingsError(f"network.{name} must be positive seconds")
    if net.max_pdu != 0 and not 4096 <= net.max_pdu <= 2**32 - 1:
        raise SettingsError("network.max_pdu must be 0 (unlimited) or 4096..4294967295 bytes")
    sec = settings.security
    for title in sec.allowed_calling_ae_titles:
        validate_ae_title(title, "security.allowed_calling_ae_titles")
    for address in sec.allowed_peer_addresses:
        try:
            ipaddress.ip_network(address, strict=False)
        except ValueError as exc:
            raise SettingsError(
                f"security.allowed_peer_addresses: {address!r} is not an IP address or network"
            ) from exc
    if bool(sec.tls_certificate) != bool(sec.tls_private_key):
        raise SettingsError("security: TLS needs both tls_certificate and tls_private_key")
    if sec.tls_ca_certificates and not sec.tls_enabled:
        raise SettingsError(
            "security.tls_ca_certificates is set but TLS is off (no certificate/key)"
        )
    if settings.storage.min_free_mb < 0:
        raise SettingsError("storage.min_free_mb must not be negative")
    url = settings.storage.catalog_url
    if url and not (url.startswith("sqlite:") or url.startswith("postgresql")):
        raise SettingsError(
            f"storage.catalog_url: only sqlite:/// and postgresql+psycopg:// URLs, got {url.split(':')[0]!r}"
        )
    if settings.series.idle_seconds < 0:
        raise SettingsError("series.idle_seconds must not be negative")
    if settings.series.check_interval_seconds <= 0:
        raise SettingsError("series.check_interval_seconds must be positive")
    if settings.worker.threads < 0:
        raise SettingsError(
            "worker.threads must not be negative (0 = no processing in this process)"
        )
    if not 0.0 <= settings.worker.min_nodule_probability <= 1.0:
        raise SettingsError("worker.min_nodule_probability must be within 0..1")
    if not 0.0 <= settings.worker.min_nodule_diameter_mm <= 30.0:
        raise SettingsError("worker.min_nodule_diameter_mm must be within 0..30")
    if settings.worker.device not in {"auto", "cpu", "cuda"}:
        raise SettingsError(f"worker.device: {settings.worker.device!r} is not auto, cpu or cuda")
    sim = settings.similarity
    validate_ae_title(sim.ae_title, "similarity.ae_title")
    if sim.ae_title == settings.ae_title:
        raise SettingsError("similarity.ae_title must differ from ae_title")
    if not -1 <= sim.port <= 65535 or (sim.port == settings.port and sim.port > 0):
        raise SettingsError(
            f"similarity.port: {sim.port} must be -1, 0 or a free TCP port other than port"
        )
    if sim.studies_per_folder < 1 or sim.matches_per_nodule < 1:
        raise SettingsError(
            "similarity: studies_per_folder and matches_per_nodule must be at least 1"
        )
    for title in settings.privacy.identities_visible_to:
        validate_ae_title(title, "privacy.identities_visible_to")
    rules = settings.qualification
    if rules.max_slice_thickness_mm <= 0 or rules.min_slices < 1 or rules.min_lung_volume_ml < 0:
        raise SettingsError(
            "qualification: thickness must be positive, min_slices at least 1, volume not negative"
        )
    outbox = settings.outbox
    outbox.parsed_destinations()
    if outbox.calling_ae_title:
        validate_ae_title(outbox.calling_ae_title, "outbox.calling_ae_title")
    if outbox.retry_initial_seconds <= 0 or outbox.retry_max_seconds < outbox.retry_initial_seconds:
        raise SettingsError(
            "outbox: retry_initial_seconds must be positive and not above retry_max_seconds"
        )
    if outbox.give_up_after_hours <= 0:
        raise SettingsError("outbox.give_up_after_hours must be positive")
    if check_paths:
        _check_data_dir(settings.data_dir)
        for name in ("tls_certificate", "tls_private_key", "tls_ca_certificates"):
            value = getattr(sec, name)
            if value and not os.access(value, os.R_OK):
                raise SettingsError(f"security.{name}: {value} does not exist or is not readable")


def _check_data_dir(path: Path) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".write-test-"):
            pass
    except OSError as exc:
        raise SettingsError(
            f"data_dir: {path} is not a writable directory ({exc.strerror})"
        ) from exc
