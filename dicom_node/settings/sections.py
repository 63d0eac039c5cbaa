"""The settings sections: frozen dataclasses that validate their own fields.

Each section checks its values in ``__post_init__`` (as highdicom's
builders check theirs) and raises :class:`dicom_node.errors.SettingsError`
naming the key, so no invalid section exists. :class:`Settings` checks what
spans sections (the two AEs' titles and ports). Checks that touch the file
system (a writable data directory, readable TLS files) are not values and
run at load time (:func:`dicom_node.settings.loading.check_files`).
"""

from __future__ import annotations

import dataclasses
import ipaddress
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from dicom_node.errors import SettingsError
from dicom_node.settings.access import AccessSettings
from dicom_node.settings.checks import require as _require
from dicom_node.settings.checks import validate_ae_title

__all__ = [
    "Destination",
    "IndexSettings",
    "LoggingSettings",
    "NetworkSettings",
    "OutboxSettings",
    "QualificationSettings",
    "RetrieveSettings",
    "SecuritySettings",
    "SeriesSettings",
    "Settings",
    "SimilaritySettings",
    "StorageSettings",
    "WorkerSettings",
    "validate_ae_title",
]


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
    receivers: int = 1
    """Processes accepting associations on the main port (1 = the node's own process).

    More use more cores to receive: each extra one is a child process of the
    node serving the main AE (Verification, Storage, C-FIND, C-MOVE, C-GET)
    on the same listening socket, with its own catalog connection.
    ``max_associations`` is shared out among them (each takes its share,
    rounded up)."""

    def __post_init__(self) -> None:
        _require(self.max_associations >= 1, "network.max_associations must be at least 1")
        for name in ("acse_timeout", "dimse_timeout", "network_timeout"):
            _require(getattr(self, name) > 0, f"network.{name} must be positive seconds")
        _require(
            self.max_pdu == 0 or 4096 <= self.max_pdu <= 2**32 - 1,
            "network.max_pdu must be 0 (unlimited) or 4096..4294967295 bytes",
        )
        _require(1 <= self.receivers <= 64, "network.receivers must be 1..64 processes")


@dataclass(frozen=True)
class SecuritySettings:
    """``[security]``: which networks may connect, and DICOM TLS (AE permissions: ``[access]``)."""

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

    def __post_init__(self) -> None:
        for address in self.allowed_peer_addresses:
            try:
                ipaddress.ip_network(address, strict=False)
            except ValueError as exc:
                raise SettingsError(
                    f"security.allowed_peer_addresses: {address!r} is not an IP address or network"
                ) from exc
        _require(
            bool(self.tls_certificate) == bool(self.tls_private_key),
            "security: TLS needs both tls_certificate and tls_private_key",
        )
        _require(
            not self.tls_ca_certificates or self.tls_enabled,
            "security.tls_ca_certificates is set but TLS is off (no certificate/key)",
        )

    @property
    def tls_enabled(self) -> bool:
        """True when a certificate and key are configured."""
        return bool(self.tls_certificate and self.tls_private_key)


@dataclass(frozen=True)
class StorageSettings:
    """``[storage]``: catalog and instance files."""

    catalog_url: str = ""
    """SQLAlchemy URL; empty = SQLite file ``catalog.sqlite3`` in ``data_dir``."""
    instances_dir: str = ""
    """Where instance files live; empty = ``data_dir/instances``. Scaled out, a
    shared (network) path that every receiving node and worker mounts."""
    min_free_mb: int = 1024
    """Refuse instances (0xA700) when free disk space would fall under this."""
    fsync: bool = True
    """Flush each instance to stable storage before acknowledging it."""

    def __post_init__(self) -> None:
        _require(self.min_free_mb >= 0, "storage.min_free_mb must not be negative")
        url = self.catalog_url
        _require(
            not url or url.startswith(("sqlite:", "postgresql")),
            "storage.catalog_url: only sqlite:/// and postgresql+psycopg:// URLs, "
            f"got {url.split(':')[0]!r}",
        )


@dataclass(frozen=True)
class SeriesSettings:
    """``[series]``: when a series counts as complete."""

    idle_seconds: float = 30.0
    """A series is complete after this many seconds without a new instance."""
    check_interval_seconds: float = 1.0
    """How often the completion watcher looks for idle series."""

    def __post_init__(self) -> None:
        _require(self.idle_seconds >= 0, "series.idle_seconds must not be negative")
        _require(self.check_interval_seconds > 0, "series.check_interval_seconds must be positive")


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
    lease_seconds: float = 60.0
    """A claimed job stays a worker's this long without renewal (renewed every
    third of it); a worker that dies loses its jobs to others after this time."""
    poll_seconds: float = 2.0
    """With nothing due, a worker looks at the catalog again after this many seconds."""
    read_ahead: bool = True
    """Claim and read the next series while computing the current one."""

    def __post_init__(self) -> None:
        _require(
            self.threads >= 0,
            "worker.threads must not be negative (0 = no processing in this process)",
        )
        _require(self.lease_seconds >= 3, "worker.lease_seconds must be at least 3")
        _require(self.poll_seconds > 0, "worker.poll_seconds must be positive")
        _require(
            self.device in {"auto", "cpu", "cuda"},
            f"worker.device: {self.device!r} is not auto, cpu or cuda",
        )
        _require(
            0.0 <= self.min_nodule_probability <= 1.0,
            "worker.min_nodule_probability must be within 0..1",
        )
        _require(
            0.0 <= self.min_nodule_diameter_mm <= 30.0,
            "worker.min_nodule_diameter_mm must be within 0..30",
        )


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

    def __post_init__(self) -> None:
        _require(
            self.max_slice_thickness_mm > 0,
            "qualification.max_slice_thickness_mm must be positive",
        )
        _require(self.min_slices >= 1, "qualification.min_slices must be at least 1")
        _require(
            self.min_lung_volume_ml >= 0, "qualification.min_lung_volume_ml must not be negative"
        )


@dataclass(frozen=True)
class SimilaritySettings:
    """``[similarity]``: the AE answering similar-case C-FIND queries, and how many cases."""

    ae_title: str = "DICOM_NODE_SIM"
    """AE title of the similarity C-FIND SCP."""
    port: int = 11113
    """Its TCP port (0 = any free port; -1 = no similarity AE)."""
    studies_per_folder: int = 10
    """Similar prior studies listed per index study."""
    matches_per_nodule: int = 10
    """Similar nodules per query nodule: listed in the SR and the key-image montage,
    the default of ``dicom-node similar``, and grouped by study for the folders."""

    def __post_init__(self) -> None:
        validate_ae_title(self.ae_title, "similarity.ae_title")
        _require(-1 <= self.port <= 65535, f"similarity.port: {self.port} is not -1..65535")
        _require(
            self.studies_per_folder >= 1 and self.matches_per_nodule >= 1,
            "similarity: studies_per_folder and matches_per_nodule must be at least 1",
        )


@dataclass(frozen=True)
class IndexSettings:
    """``[index]``: the in-memory similarity index, kept current from the catalog."""

    poll_seconds: float = 1.0
    """How often the index takes in the nodules other workers stored (and removed)."""
    snapshot_minutes: float = 10.0
    """While nodules change, the index is saved this often (and at stop) in
    ``data_dir/index``; a start reads that snapshot and only the rows after it."""

    def __post_init__(self) -> None:
        _require(self.poll_seconds > 0, "index.poll_seconds must be positive")
        _require(self.snapshot_minutes > 0, "index.snapshot_minutes must be positive")


@dataclass(frozen=True)
class LoggingSettings:
    """``[logging]``: the node's log file (it also logs to stderr, e.g. the journal)."""

    file: str = "logs/dicom-node.log"
    """Log file of ``dicom-node serve``, relative to ``data_dir`` (or absolute); empty = none."""
    max_mb: int = 10
    """The file is rotated when it reaches this size (MiB) ..."""
    backups: int = 5
    """... keeping this many older files (``dicom-node.log.1`` ...)."""

    def __post_init__(self) -> None:
        _require(self.max_mb >= 1, "logging.max_mb must be at least 1")
        _require(self.backups >= 0, "logging.backups must not be negative")


@dataclass(frozen=True)
class Destination:
    """A DICOM peer results are sent to, parsed once from ``AE@host:port``."""

    ae_title: str
    host: str
    port: int

    def __post_init__(self) -> None:
        validate_ae_title(self.ae_title, "outbox.destinations")
        _require(bool(self.host), "outbox.destinations: a destination needs a host")
        _require(1 <= self.port <= 65535, f"outbox.destinations: {self} port is not 1-65535")

    @classmethod
    def parse(cls, text: str, where: str = "outbox.destinations") -> Destination:
        """Parse ``AE@host:port`` (IPv6 hosts in brackets); raise SettingsError with the reason."""
        ae_title, at, address = text.partition("@")
        host, colon, port = address.rpartition(":")
        _require(bool(at and colon and host), f"{where}: {text!r} is not AE@host:port")
        try:
            number = int(port)
        except ValueError as exc:
            raise SettingsError(f"{where}: {text!r} has no numeric port") from exc
        return cls(ae_title, host.strip("[]"), number)

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.ae_title}@{host}:{self.port}"


@dataclass(frozen=True)
class OutboxSettings:
    """``[outbox]``: where results (SR, key images) are sent, and how hard we try."""

    destinations: tuple[Destination, ...] = ()
    """Peers as ``AE@host:port``, e.g. ``["PACS@10.0.0.5:104"]``; empty = keep results locally."""
    calling_ae_title: str = ""
    """Calling AE title for sending; empty = ``ae_title``."""
    retry_initial_seconds: float = 10.0
    """First wait after a failed delivery; doubles on each further failure."""
    retry_max_seconds: float = 600.0
    """Longest wait between two attempts."""
    give_up_after_hours: float = 72.0
    """A delivery still failing this long after it was queued is marked failed."""

    def __post_init__(self) -> None:
        _require(
            all(isinstance(d, Destination) for d in self.destinations),
            "outbox.destinations: give Destination values (parse text with Destination.parse)",
        )
        if self.calling_ae_title:
            validate_ae_title(self.calling_ae_title, "outbox.calling_ae_title")
        _require(
            0 < self.retry_initial_seconds <= self.retry_max_seconds,
            "outbox: retry_initial_seconds must be positive and not above retry_max_seconds",
        )
        _require(self.give_up_after_hours > 0, "outbox.give_up_after_hours must be positive")


@dataclass(frozen=True)
class RetrieveSettings:
    """``[retrieve]``: where C-MOVE may send what the node holds.

    Who may C-MOVE and C-GET is the ``retrieve`` permission of ``[access]``
    (closed until granted: retrieval hands out whole studies, identities
    included).
    """

    move_destinations: tuple[Destination, ...] = ()
    """Where C-MOVE may send, as ``AE@host:port``; a Move Destination not listed
    is refused (0xA801): the address never comes from the request."""

    def __post_init__(self) -> None:
        _require(
            all(isinstance(d, Destination) for d in self.move_destinations),
            "retrieve.move_destinations: give Destination values (Destination.parse)",
        )
        titles = [d.ae_title for d in self.move_destinations]
        _require(
            len(set(titles)) == len(titles),
            "retrieve.move_destinations: an AE title is listed twice",
        )


@dataclass(frozen=True)
class Settings:
    """Everything the node is configured with, created once and passed down."""

    ae_title: str = "DICOM_NODE"
    """Our AE title (1 to 16 characters)."""
    host: str = "127.0.0.1"
    """Address the SCPs listen on: loopback until configured (``0.0.0.0`` = every interface)."""
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
    access: AccessSettings = field(default_factory=AccessSettings)
    index: IndexSettings = field(default_factory=IndexSettings)
    logging: LoggingSettings = field(default_factory=LoggingSettings)
    retrieve: RetrieveSettings = field(default_factory=RetrieveSettings)

    def __post_init__(self) -> None:
        validate_ae_title(self.ae_title, "ae_title")
        _require(0 <= self.port <= 65535, f"port: {self.port} is not a TCP port (0-65535)")
        try:
            ipaddress.ip_address(self.host)
        except ValueError as exc:
            raise SettingsError(f"host: {self.host!r} is not an IP address") from exc
        sim = self.similarity
        _require(sim.ae_title != self.ae_title, "similarity.ae_title must differ from ae_title")
        _require(
            not (sim.port == self.port and sim.port > 0),
            f"similarity.port: {sim.port} must be -1, 0 or a free TCP port other than port",
        )
        self._check_tls_bindings()

    def _check_tls_bindings(self) -> None:
        """With client certificates every listed AE title is bound to its certificates."""
        verified = bool(self.security.tls_ca_certificates)
        for rule in self.access.ae_titles:
            where = f"access.ae_titles.{rule.ae_title}"
            _require(
                verified or not rule.tls_subjects,
                f"{where}: tls_subjects need DICOM TLS with client certificates "
                "(security.tls_certificate, tls_private_key and tls_ca_certificates)",
            )
            _require(
                not verified or bool(rule.tls_subjects),
                f"{where}: with client certificates (security.tls_ca_certificates) name the "
                "certificate subject(s) that may use this AE title, e.g. "
                '{ permissions = [...], tls_subjects = ["CN=pacs.hospital.example"] }',
            )

    @property
    def instances_dir(self) -> Path:
        """Where instance files (received and generated) live."""
        if self.storage.instances_dir:
            return Path(self.storage.instances_dir)
        return self.data_dir / "instances"

    @property
    def index_dir(self) -> Path:
        """Where the similarity index's snapshots live."""
        return self.data_dir / "index"

    @property
    def catalog_url(self) -> str:
        """The effective catalog URL."""
        if self.storage.catalog_url:
            return self.storage.catalog_url
        return f"sqlite:///{(self.data_dir / 'catalog.sqlite3').resolve()}"

    def describe(self) -> dict[str, Any]:
        """The effective configuration for the start-up log, secrets masked."""
        result: dict[str, Any] = _to_dict(self)
        scheme, _, rest = result["storage"]["catalog_url"].partition("://")
        credentials, at, host = rest.rpartition("@")
        if at and ":" in credentials:  # user:password@host; a URL without password stays
            user = credentials.split(":", 1)[0]
            result["storage"]["catalog_url"] = f"{scheme}://{user}:***@{host}"
        return result


def _to_dict(value: Any) -> Any:
    if isinstance(value, Destination):
        return str(value)
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, frozenset):
        return sorted(_to_dict(v) for v in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _to_dict(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, tuple):
        return [_to_dict(v) for v in value]
    return value
