"""The catalog's tables and the states its rows move through.

One :data:`metadata` for SQLite and PostgreSQL alike (SQLAlchemy Core).
Column lengths follow the DICOM value representations (PS3.5 6.2).
"""

from __future__ import annotations

from enum import Enum, StrEnum
from typing import Any

import sqlalchemy as sa

__all__ = [
    "BackfillStudyState",
    "DeliveryState",
    "JobState",
    "ResultKind",
    "SeriesState",
    "backfill_series",
    "backfill_studies",
    "backfill_windows",
    "deliveries",
    "instances",
    "jobs",
    "metadata",
    "nodule_removals",
    "nodules",
    "reference_nodules",
    "registration_images",
    "results",
    "secrets",
    "series",
    "studies",
]


class SeriesState(str, Enum):
    """Where a series stands (DESIGN: the catalog's series state is the truth)."""

    RECEIVING = "receiving"
    """Instances are arriving; the series is not idle long enough yet."""
    COMPLETE = "complete"
    """No new instance for ``series.idle_seconds``; waiting for the processor."""
    PROCESSING = "processing"
    """A worker has claimed the series."""
    INDEXED = "indexed"
    """Nodules found and their codes are in the index."""
    REPORTED = "reported"
    """Results were sent back (SR, montage)."""
    REFERENCE = "reference"
    """A reference-library series (``dicom-node import-crops``): its nodules were given
    (readers' centres and masks), not detected; they are encoded and indexed for the
    model version of its ``analysis`` job; no results are made for it."""
    SKIPPED = "skipped"
    """Does not qualify for processing; ``reason`` says why."""
    FAILED = "failed"
    """Processing failed; ``reason`` says why."""


class JobState(str, Enum):
    """Where one job (a step run on a series for a version) stands."""

    PENDING = "pending"
    """Due to run: the step before it finished and handed the series on."""
    RUNNING = "running"
    """A worker holds it (``worker``, ``lease_expires_at``)."""
    DONE = "done"
    """The step ran to an outcome (``outcome``: the series state it left)."""
    FAILED = "failed"
    """The step raised; ``detail`` says why."""


class ResultKind(str, Enum):
    """The objects the node generates for a processed series."""

    SIMILARITY_SR = "similarity-sr"
    """Comprehensive 3D SR: nodules, similar cases, same-patient priors."""
    KEY_IMAGES = "key-images"
    """Secondary Capture montage: each nodule beside its similar cases."""


class DeliveryState(str, Enum):
    """Where one outbox delivery stands."""

    PENDING = "pending"
    """Waiting for its next attempt."""
    DONE = "done"
    """The destination answered Success or Warning."""
    FAILED = "failed"
    """The destination answered Failure, or retries ran out; ``last_error`` says why."""
    SUPERSEDED = "superseded"
    """A newer revision of the object was made before this one was delivered; not sent."""


class BackfillStudyState(StrEnum):
    """Where one study of a backfill stands (``dicom-node backfill``)."""

    DONE = "done"
    """Every CT instance of the study is in the catalog (fetched now or known before)."""
    FAILED = "failed"
    """Some instances could not be fetched or stored; ``detail`` says why; retried next run."""


metadata = sa.MetaData()

UID = sa.String(64)

studies = sa.Table(
    "studies",
    metadata,
    sa.Column("study_instance_uid", UID, primary_key=True),
    sa.Column("patient_id", sa.String(64), index=True),
    sa.Column("patient_name", sa.String(324)),
    sa.Column("patient_birth_date", sa.String(8)),
    sa.Column("patient_sex", sa.String(16)),
    sa.Column("study_date", sa.String(8)),
    sa.Column("study_time", sa.String(16)),
    sa.Column("accession_number", sa.String(16), index=True),
    sa.Column("study_id", sa.String(16)),
    sa.Column("study_description", sa.String(64)),
    sa.Column("referring_physician_name", sa.String(324)),
    sa.Column("created_at", sa.Float, nullable=False),
)

series = sa.Table(
    "series",
    metadata,
    sa.Column("series_instance_uid", UID, primary_key=True),
    sa.Column(
        "study_instance_uid",
        UID,
        sa.ForeignKey("studies.study_instance_uid"),
        nullable=False,
        index=True,
    ),
    sa.Column("modality", sa.String(16)),
    sa.Column("series_number", sa.Integer),
    sa.Column("series_description", sa.String(64)),
    sa.Column("calling_ae_title", sa.String(16)),
    sa.Column("state", sa.String(16), nullable=False, index=True),
    sa.Column("reason", sa.Text),
    sa.Column("instance_count", sa.Integer, nullable=False, default=0),
    sa.Column("first_received_at", sa.Float, nullable=False),
    sa.Column("last_received_at", sa.Float, nullable=False),
    sa.Column("state_changed_at", sa.Float, nullable=False),
    # False after `dicom-node reindex` without --send-results: the results made
    # by that run are kept, not sent. A new instance sets it again.
    sa.Column("send_results", sa.Boolean, nullable=False, default=True),
    # The oldest series waiting in a state: what a worker claims next.
    sa.Index("ix_series_state_changed", "state", "state_changed_at"),
)

instances = sa.Table(
    "instances",
    metadata,
    sa.Column("sop_instance_uid", UID, primary_key=True),
    sa.Column(
        "series_instance_uid",
        UID,
        sa.ForeignKey("series.series_instance_uid"),
        nullable=False,
        index=True,
    ),
    sa.Column("sop_class_uid", UID, nullable=False),
    sa.Column("instance_number", sa.Integer),
    sa.Column("transfer_syntax_uid", UID, nullable=False),
    sa.Column("relative_path", sa.String(200), nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("received_at", sa.Float, nullable=False),
)

# One row per (series, step, version). Workers (threads of the node, or
# ``dicom-node worker`` processes on other machines) claim due jobs with
# ``FOR UPDATE SKIP LOCKED``; ``worker`` names the holder and
# ``lease_expires_at`` is renewed while it works, so a job whose holder died
# is taken over once its lease has run out (``WorkflowCatalog.claim_next``).
jobs = sa.Table(
    "jobs",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column(
        "series_instance_uid", UID, sa.ForeignKey("series.series_instance_uid"), nullable=False
    ),
    sa.Column("step", sa.String(32), nullable=False),
    sa.Column("version", sa.String(64), nullable=False),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("worker", sa.String(120)),
    sa.Column("lease_expires_at", sa.Float),
    sa.Column("outcome", sa.String(16)),
    sa.Column("detail", sa.Text),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("started_at", sa.Float),
    sa.Column("finished_at", sa.Float),
    sa.UniqueConstraint("series_instance_uid", "step", "version", name="uq_job"),
    sa.Index("ix_jobs_state_created", "state", "created_at"),
)

# Objects the node generated (SR, key images): results of their study, never
# instances of a received series, so they never enter series completion.
results = sa.Table(
    "results",
    metadata,
    sa.Column("sop_instance_uid", UID, primary_key=True),
    sa.Column(
        "study_instance_uid",
        UID,
        sa.ForeignKey("studies.study_instance_uid"),
        nullable=False,
        index=True,
    ),
    sa.Column("series_instance_uid", UID, nullable=False, index=True),
    sa.Column(
        "source_series_instance_uid",
        UID,
        sa.ForeignKey("series.series_instance_uid"),
        nullable=False,
    ),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("model_version", sa.String(64), nullable=False),
    sa.Column("sop_class_uid", UID, nullable=False),
    sa.Column("transfer_syntax_uid", UID, nullable=False),
    sa.Column("relative_path", sa.String(200), nullable=False),
    sa.Column("size", sa.BigInteger, nullable=False),
    sa.Column("sha256", sa.String(64), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("revision", sa.Integer, nullable=False, default=1),
    sa.Column("content_digest", sa.String(64)),
    sa.Column("superseded_by", UID),
    sa.UniqueConstraint(
        "study_instance_uid", "model_version", "kind", "revision", name="uq_result_revision"
    ),
)


def _growing_key(name: str) -> sa.Column[int]:
    """A 64-bit key that only grows (with ``sqlite_autoincrement``: never reused)."""
    return sa.Column(
        name, sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True,
        autoincrement=True,
    )  # fmt: skip


def _measurement_columns() -> list[sa.Column[Any]]:
    """Where a nodule is and what it measures: the same columns for detected
    nodules (``nodules``) and given ones (``reference_nodules``)."""
    return [
        sa.Column("center_x", sa.Float, nullable=False),
        sa.Column("center_y", sa.Float, nullable=False),
        sa.Column("center_z", sa.Float, nullable=False),
        sa.Column("diameter_mm", sa.Float, nullable=False),
        sa.Column("long_axis_mm", sa.Float, nullable=False),
        sa.Column("volume_mm3", sa.Float, nullable=False),
        sa.Column("mean_hu", sa.Float, nullable=False),
        sa.Column("peak_hu", sa.Float, nullable=False),
        sa.Column("texture", sa.String(16), nullable=False),
        sa.Column("laterality", sa.String(8), nullable=False),
        sa.Column("confidence", sa.Float, nullable=False),
    ]


nodules = sa.Table(
    "nodules",
    metadata,
    _growing_key("id"),
    sa.Column(
        "series_instance_uid", UID, sa.ForeignKey("series.series_instance_uid"), nullable=False
    ),
    sa.Column(
        "study_instance_uid",
        UID,
        sa.ForeignKey("studies.study_instance_uid"),
        nullable=False,
    ),
    sa.Column("model_version", sa.String(64), nullable=False),
    sa.Column("nodule_index", sa.Integer, nullable=False),
    *_measurement_columns(),
    sa.Column("size_class", sa.Integer, nullable=False),
    sa.Column("predicted_size_class", sa.Integer, nullable=False),
    sa.Column("predicted_texture", sa.String(16), nullable=False),
    sa.Column("shallow", sa.LargeBinary, nullable=False),
    sa.Column("middle", sa.LargeBinary, nullable=False),
    sa.Column("deep", sa.LargeBinary, nullable=False),
    sa.Column("embedding", sa.LargeBinary, nullable=False),
    sa.Column("thumbnail", sa.LargeBinary),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.UniqueConstraint("series_instance_uid", "model_version", "nodule_index", name="uq_nodule"),
    # Study first: a lone model_version index matches every row of an archive
    # (one version) and, without statistics, SQLite may choose it for
    # "nodules of this study" and scan a million rows (300 ms instead of 1).
    sa.Index("ix_nodules_study_version", "study_instance_uid", "model_version"),
    # Ids are never reused (SQLite would otherwise hand out a deleted largest
    # id again): an index follows the rows after the last id it has seen.
    sqlite_autoincrement=True,
)

# The compact image of each analysed series (``ai.registration.RegistrationImage``
# bytes, 100-300 KB): a later scan of the patient is registered to it, so the same
# nodule is matched after the patient moved on the table. Written with the nodules.
registration_images = sa.Table(
    "registration_images",
    metadata,
    sa.Column(
        "series_instance_uid", UID, sa.ForeignKey("series.series_instance_uid"), primary_key=True
    ),
    sa.Column("image", sa.LargeBinary, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)

# Nodules given, not detected, with the series of a reference library (``dicom-node
# import-crops``: public crops with their readers' nodules). The worker encodes
# these instead of detecting when such a series is processed again (a new model).
reference_nodules = sa.Table(
    "reference_nodules",
    metadata,
    sa.Column(
        "series_instance_uid", UID, sa.ForeignKey("series.series_instance_uid"), primary_key=True
    ),
    sa.Column("nodule_index", sa.Integer, primary_key=True),
    *_measurement_columns(),
    sa.Column("source", sa.String(64), nullable=False),
    sa.Column("source_nodule", sa.String(128), nullable=False),
    sa.Column("readers", sa.Integer, nullable=False),
    sa.Column("ratings", sa.Text, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)

# One row per nodule row deleted (a series processed again replaces its
# nodules): with the nodule ids, which only grow, the cursor an index follows
# (snapshot + the rows after it). Writers of nodules take the catalog's
# nodule lock, so both sequences commit in order (``NoduleCatalog``).
nodule_removals = sa.Table(
    "nodule_removals",
    metadata,
    _growing_key("seq"),
    sa.Column("nodule_id", sa.BigInteger, nullable=False),
    sa.Column("model_version", sa.String(64), nullable=False),
    sa.Column("removed_at", sa.Float, nullable=False),
    sqlite_autoincrement=True,
)

# Values every machine sharing the catalog must agree on, made once by the
# first process that needs one (the privacy key that makes case ids).
secrets = sa.Table(
    "secrets",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("value", sa.LargeBinary, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)

deliveries = sa.Table(
    "outbox",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("destination", sa.String(120), nullable=False),
    sa.Column("sop_instance_uid", UID, nullable=False),
    sa.Column("sop_class_uid", UID, nullable=False),
    sa.Column("transfer_syntax_uid", UID, nullable=False),
    sa.Column("relative_path", sa.String(200), nullable=False),
    sa.Column("state", sa.String(16), nullable=False, index=True),
    sa.Column("attempts", sa.Integer, nullable=False, default=0),
    sa.Column("next_attempt_at", sa.Float, nullable=False),
    sa.Column("last_error", sa.Text),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("done_at", sa.Float),
    sa.UniqueConstraint("destination", "sop_instance_uid", name="uq_outbox_destination_instance"),
)

# Backfill checkpoints (``dicom-node backfill``). A *window* is one query of
# the source archive (a StudyDate, ``YYYYMMDD``); it is done when every study
# it found is done. ``source`` names the archive (Orthanc URL or PACS AE@host:port).
backfill_windows = sa.Table(
    "backfill_windows",
    metadata,
    sa.Column("source", sa.String(200), primary_key=True),
    sa.Column("window", sa.String(32), primary_key=True),
    sa.Column("studies", sa.Integer, nullable=False),
    sa.Column("done_at", sa.Float, nullable=False),
)

backfill_studies = sa.Table(
    "backfill_studies",
    metadata,
    sa.Column("source", sa.String(200), primary_key=True),
    sa.Column("study_instance_uid", UID, primary_key=True),
    sa.Column("study_date", sa.String(8)),
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("instances_fetched", sa.Integer, nullable=False),
    sa.Column("bytes_fetched", sa.BigInteger, nullable=False),
    sa.Column("detail", sa.Text),
    sa.Column("updated_at", sa.Float, nullable=False),
)

# Series that came from a backfill: whether their results may be sent to the
# outbox destinations, and whether their pixel data is dropped once indexed.
backfill_series = sa.Table(
    "backfill_series",
    metadata,
    sa.Column("series_instance_uid", UID, primary_key=True),
    sa.Column("study_instance_uid", UID, nullable=False),
    sa.Column("source", sa.String(200), nullable=False),
    sa.Column("send_results", sa.Boolean, nullable=False),
    sa.Column("index_only", sa.Boolean, nullable=False),
    sa.Column("pixel_data_released_at", sa.Float),
    sa.Column("created_at", sa.Float, nullable=False),
)
