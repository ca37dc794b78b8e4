"""SQLAlchemy 2 models: configuration (AEs, sources, destinations) and state (series, instances,
jobs, the outbox, exports, events).

State columns are strings without a default; their values and every transition between them are
dicom_node.jobs' (dicom_node.jobs.states names them).

Field checks use dicom_node.validation, the same validators as the config loader, the REST schemas
and the command line.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    true,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship, validates

from dicom_node.db.times import utcnow
from dicom_node.validation import (
    DestinationKind,
    Role,
    WebAuth,
    check_ae_title,
    check_ca_file,
    check_destination_kind,
    check_dicomweb_url,
    check_host,
    check_keep_days,
    check_max_wait_seconds,
    check_output_kinds,
    check_port,
    check_quiet_seconds,
    check_role,
    check_user_name,
    check_web_auth,
    check_web_secret,
    require,
)

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dt.datetime: DateTime(timezone=True), dict[str, Any]: JSON, list[Any]: JSON}


local_ae_destinations = Table(
    "local_ae_destinations",
    Base.metadata,
    Column("local_ae_id", ForeignKey("local_aes.id", ondelete="CASCADE"), primary_key=True),
    Column("destination_id", ForeignKey("destinations.id", ondelete="CASCADE"), primary_key=True),
)

# The API tokens that may store instances into a local AE by STOW-RS (POST /dicomweb/<title>/studies,
# dicom_node.admin.stow): the per-AE allow-list of DICOMweb senders, as sources are of DIMSE ones.
local_ae_stow_tokens = Table(
    "local_ae_stow_tokens",
    Base.metadata,
    Column("local_ae_id", ForeignKey("local_aes.id", ondelete="CASCADE"), primary_key=True),
    Column("token_id", ForeignKey("api_tokens.id", ondelete="CASCADE"), primary_key=True),
)


class LocalAE(Base):
    """An AE title this node listens as, each on its own port."""

    __tablename__ = "local_aes"

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(16), unique=True)
    port: Mapped[int] = mapped_column(Integer, unique=True)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    # No defaults here: dicom_node.configuration.add_local_ae fills them from the settings.
    quiet_seconds: Mapped[float] = mapped_column(Float)
    max_wait_seconds: Mapped[float] = mapped_column(Float)
    # Which series are analysed; see dicom_node.jobs.filters.SeriesFilter for the keys.
    filters: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # Storage SOP classes accepted here besides CT and Enhanced CT.
    extra_sop_classes: Mapped[list[Any]] = mapped_column(JSON, default=list)
    # Also send results back to the calling AE where its return port is known (sources.port).
    return_to_caller: Mapped[bool] = mapped_column(Boolean, default=False)
    # A calling AE not on the allow-list is refused unless this is turned off.
    require_known_source: Mapped[bool] = mapped_column(Boolean, default=True)
    description: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    # Why the listeners can not bind this AE's port ("port in use ..."), "" while they listen;
    # written by the listener processes, shown by `ae list`, the admin pages and /health.
    listen_error: Mapped[str] = mapped_column(String(200), default="", server_default="")
    listen_error_at: Mapped[dt.datetime | None] = mapped_column(nullable=True)
    # Days this AE's series' images are kept once finished; None: retention.images_days.
    keep_images_days: Mapped[float | None] = mapped_column(Float, nullable=True)

    destinations: Mapped[list["Destination"]] = relationship(secondary=local_ae_destinations, lazy="selectin")
    # The API tokens allowed to send here by STOW-RS; none: STOW-RS to this AE is refused.
    stow_tokens: Mapped[list["ApiToken"]] = relationship(
        secondary=local_ae_stow_tokens, lazy="selectin", order_by="ApiToken.id"
    )

    @validates("title")
    def _v_title(self, key: str, value: str) -> str:
        return require("title", check_ae_title, value)

    @validates("port")
    def _v_port(self, key: str, value: int) -> int:
        return require("port", check_port, value)

    @validates("quiet_seconds")
    def _v_quiet(self, key: str, value: float) -> float:
        return float(require("quiet_seconds", check_quiet_seconds, value))

    @validates("max_wait_seconds")
    def _v_max_wait(self, key: str, value: float) -> float:
        return float(require("max_wait_seconds", check_max_wait_seconds, value))

    @validates("keep_images_days")
    def _v_keep_days(self, key: str, value: float | None) -> float | None:
        return None if value is None else float(require("keep_images_days", check_keep_days, value))


class Source(Base):
    """A calling AE allowed to send to this node (title, optionally host, optional return port)."""

    __tablename__ = "sources"
    __table_args__ = (UniqueConstraint("title", "host", name="uq_sources_title_host"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(16))
    # None: any host may use this title.
    host: Mapped[str | None] = mapped_column(String(253), nullable=True)
    # Port of the source's own storage SCP, for sending results back to it.
    port: Mapped[int | None] = mapped_column(Integer, nullable=True)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    description: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    @validates("title")
    def _v_title(self, key: str, value: str) -> str:
        return require("title", check_ae_title, value)

    @validates("host")
    def _v_host(self, key: str, value: str | None) -> str | None:
        return None if value in (None, "") else require("host", check_host, value)

    @validates("port")
    def _v_port(self, key: str, value: int | None) -> int | None:
        return None if value is None else require("port", check_port, value)


class Destination(Base):
    """Where results go (a PACS): a storage SCP (kind "dimse") or a DICOMweb service that takes
    STOW-RS (kind "dicomweb"; host and port are then the URL's, for the export rows and lists)."""

    __tablename__ = "destinations"

    id: Mapped[int] = mapped_column(primary_key=True)
    # A DIMSE destination's called AE title; a DICOMweb destination's name (the same rule).
    title: Mapped[str] = mapped_column(String(16), unique=True)
    host: Mapped[str] = mapped_column(String(253))
    port: Mapped[int] = mapped_column(Integer)
    tls: Mapped[bool] = mapped_column(Boolean, default=False)
    kind: Mapped[str] = mapped_column(
        String(16), default=DestinationKind.DIMSE.value, server_default=DestinationKind.DIMSE.value
    )
    # DICOMweb only: the base URL (STOW-RS posts to <url>/studies), HTTP authentication, and the
    # TLS verification of an https URL (the system's CAs, or ca_file's PEM bundle).
    url: Mapped[str] = mapped_column(String(2000), default="", server_default="")
    auth: Mapped[str] = mapped_column(String(16), default=WebAuth.NONE.value, server_default=WebAuth.NONE.value)
    username: Mapped[str] = mapped_column(String(200), default="", server_default="")
    # Kept as given: the node needs them to call the service (never shown by a list or the API).
    password: Mapped[str] = mapped_column(Text, default="", server_default="")
    token: Mapped[str] = mapped_column(Text, default="", server_default="")
    verify_tls: Mapped[bool] = mapped_column(Boolean, default=True, server_default=true())
    ca_file: Mapped[str] = mapped_column(String(1000), default="", server_default="")
    # Always written (dicom_node.configuration fills in the settings' export.default_outputs).
    outputs: Mapped[list[Any]] = mapped_column(JSON)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    description: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    @validates("title")
    def _v_title(self, key: str, value: str) -> str:
        return require("title", check_ae_title, value)

    @validates("host")
    def _v_host(self, key: str, value: str) -> str:
        return require("host", check_host, value)

    @validates("port")
    def _v_port(self, key: str, value: int) -> int:
        return require("port", check_port, value)

    @validates("outputs")
    def _v_outputs(self, key: str, value: list[str]) -> list[str]:
        return list(require("outputs", check_output_kinds, value))

    @validates("kind")
    def _v_kind(self, key: str, value: str) -> str:
        return require("kind", check_destination_kind, value)

    @validates("url")
    def _v_url(self, key: str, value: str) -> str:
        return value if value == "" else require("url", check_dicomweb_url, value)

    @validates("auth")
    def _v_auth(self, key: str, value: str) -> str:
        return require("auth", check_web_auth, value)

    @validates("password", "token")
    def _v_secret(self, key: str, value: str) -> str:
        return require(key, check_web_secret, value)

    @validates("ca_file")
    def _v_ca_file(self, key: str, value: str) -> str:
        return require("ca_file", check_ca_file, value)


class Series(Base):
    __tablename__ = "series"

    id: Mapped[int] = mapped_column(primary_key=True)
    series_uid: Mapped[str] = mapped_column(String(64), unique=True)
    study_uid: Mapped[str] = mapped_column(String(64), index=True)
    local_ae_id: Mapped[int | None] = mapped_column(ForeignKey("local_aes.id", ondelete="SET NULL"), nullable=True)
    calling_ae: Mapped[str] = mapped_column(String(16), default="")
    calling_host: Mapped[str] = mapped_column(String(253), default="")
    patient_id: Mapped[str] = mapped_column(String(64), default="")
    modality: Mapped[str] = mapped_column(String(16), default="")
    body_part: Mapped[str] = mapped_column(String(64), default="")
    series_description: Mapped[str] = mapped_column(String(64), default="")
    series_number: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # Read from a stored instance when the series completes (dicom_node.triage.study), for the
    # worklist and the priority rules; "" until then.
    patient_name: Mapped[str] = mapped_column(String(200), default="", server_default="")
    accession_number: Mapped[str] = mapped_column(String(64), default="", server_default="")
    study_description: Mapped[str] = mapped_column(String(64), default="", server_default="")
    # The most urgent C-STORE priority its instances came with (2 high, 1 medium, 0 low), written
    # by the listener (dicom_node.storage.index).
    store_priority: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    sop_class_uid: Mapped[str] = mapped_column(String(64), default="")
    image_type: Mapped[str] = mapped_column(String(200), default="")
    instances: Mapped[int] = mapped_column(Integer, default=0)
    # Images: instances times frames (Enhanced CT holds a whole series in one instance).
    frames: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[str] = mapped_column(String(16), index=True)  # dicom_node.jobs.states.SeriesStatus
    reason: Mapped[str] = mapped_column(Text, default="")
    # Incremented each time the series re-opens after completion.
    generation: Mapped[int] = mapped_column(Integer, default=0)
    first_received_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    # Start of the current generation: the maximum wait counts from here.
    opened_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_received_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    completed_at: Mapped[dt.datetime | None] = mapped_column(nullable=True)
    # Bytes of the instances received (counted as they are indexed; kept when they are purged).
    size_bytes: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    # When retention removed the images (dicom_node.storage.retention); None while they are kept.
    purged_at: Mapped[dt.datetime | None] = mapped_column(nullable=True)

    jobs: Mapped[list["Job"]] = relationship(back_populates="series", order_by="Job.id")


class Instance(Base):
    __tablename__ = "instances"

    id: Mapped[int] = mapped_column(primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id", ondelete="CASCADE"), index=True)
    sop_instance_uid: Mapped[str] = mapped_column(String(64), unique=True)
    sop_class_uid: Mapped[str] = mapped_column(String(64))
    transfer_syntax_uid: Mapped[str] = mapped_column(String(64))
    instance_number: Mapped[int | None] = mapped_column(Integer, nullable=True)
    frames: Mapped[int] = mapped_column(Integer, default=1)
    # Relative to the storage root (dicom_node.storage.files).
    path: Mapped[str] = mapped_column(String(300))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    received_at: Mapped[dt.datetime] = mapped_column(default=utcnow)


class Job(Base):
    """One analysis of one series (one generation of it)."""

    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_series_status", "series_id", "status"),
        # The next job to run: the most urgent waiting one (dicom_node.jobs.analyses.claim).
        Index("ix_jobs_status_priority", "status", "priority"),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id", ondelete="CASCADE"))
    generation: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[str] = mapped_column(String(16), index=True)  # dicom_node.jobs.states.JobStatus
    reason: Mapped[str] = mapped_column(Text, default="")
    # dicom_node.triage.priority.Priority (higher runs first; 1 = routine) and the rule that set it.
    priority: Mapped[int] = mapped_column(Integer, default=1, server_default="1")
    priority_reason: Mapped[str] = mapped_column(String(200), default="", server_default="")
    # Set while the job waits after a more urgent job ran on its queue message (that job's id):
    # the next delivery that finds its own job not waiting runs it (dicom_node.jobs.analyses.claim).
    message_taken_by: Mapped[int | None] = mapped_column(Integer, nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    worker: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    queued_at: Mapped[dt.datetime | None] = mapped_column(nullable=True)
    started_at: Mapped[dt.datetime | None] = mapped_column(nullable=True)
    finished_at: Mapped[dt.datetime | None] = mapped_column(nullable=True)
    # Written every few seconds by the worker running the job; a running job whose heartbeat
    # stopped lost its worker (dicom_node.jobs.analyses claims and recovers such jobs).
    heartbeat_at: Mapped[dt.datetime | None] = mapped_column(nullable=True)
    model_name: Mapped[str] = mapped_column(String(64), default="")
    model_version: Mapped[str] = mapped_column(String(64), default="")
    decision: Mapped[str] = mapped_column(String(16), default="")
    # SeriesResult.to_json() of the finished analysis, with "left_out": {kind: why} when output
    # kinds were not built for it (dicom_node.pipeline.analyse).
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # Seconds per stage (queue wait, load, inference, encoding, export...).
    timings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # The objects written: [{kind, sop_class_uid, sop_instance_uid, series_uid, path}].
    outputs: Mapped[list[Any]] = mapped_column(JSON, default=list)

    series: Mapped[Series] = relationship(back_populates="jobs")
    exports: Mapped[list["Export"]] = relationship(back_populates="job", order_by="Export.id")


class OutboxMessage(Base):
    """Written in the same transaction as the state change it announces; relayed to the dispatcher
    afterwards, so a crash between the two loses nothing (at-least-once, consumers idempotent)."""

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(primary_key=True)
    topic: Mapped[str] = mapped_column(String(32))
    job_id: Mapped[int | None] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), nullable=True)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    dispatched_at: Mapped[dt.datetime | None] = mapped_column(nullable=True, index=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str] = mapped_column(Text, default="")


class Export(Base):
    """The results of one job going to one destination."""

    __tablename__ = "exports"
    __table_args__ = (UniqueConstraint("job_id", "destination_key", name="uq_exports_job_dest"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    destination_id: Mapped[int | None] = mapped_column(
        ForeignKey("destinations.id", ondelete="SET NULL"), nullable=True
    )
    # "dest:<id>" or "caller:<title>@<host>:<port>": what the export goes to, kept if the
    # destination row is deleted.
    destination_key: Mapped[str] = mapped_column(String(300))
    title: Mapped[str] = mapped_column(String(16))
    host: Mapped[str] = mapped_column(String(253))
    port: Mapped[int] = mapped_column(Integer)
    # The destination's kind when the export was made (dimse or dicomweb; the caller: dimse).
    kind: Mapped[str] = mapped_column(
        String(16), default=DestinationKind.DIMSE.value, server_default=DestinationKind.DIMSE.value
    )
    outputs: Mapped[list[Any]] = mapped_column(JSON, default=list)
    status: Mapped[str] = mapped_column(String(16), index=True)  # dicom_node.jobs.states.ExportStatus
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    objects_sent: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(nullable=True)
    last_error: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column(nullable=True)

    job: Mapped[Job] = relationship(back_populates="exports")


class Event(Base):
    """What happened, for admins: refused associations, bad instances, completions, failures."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)
    level: Mapped[str] = mapped_column(String(8), default="info")
    category: Mapped[str] = mapped_column(String(32))
    message: Mapped[str] = mapped_column(Text)
    calling_ae: Mapped[str] = mapped_column(String(16), default="")
    calling_host: Mapped[str] = mapped_column(String(253), default="")
    local_ae: Mapped[str] = mapped_column(String(16), default="")


# --- triage: priority rules --------------------------------------------------------------


class PriorityRule(Base):
    """An admin's rule for the priority of a series' job (dicom_node.triage.priority): when every
    condition holds, the job gets at least ``priority``."""

    __tablename__ = "priority_rules"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    # A dicom_node.triage.priority.Priority name: stat, high, routine, low.
    priority: Mapped[str] = mapped_column(String(16))
    # dicom_node.triage.priority.PriorityConditions as JSON; every key optional.
    conditions: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    description: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    @property
    def title(self) -> str:
        """What the audit log names it by."""
        return self.name


# --- triage: notifications ---------------------------------------------------------------


class NotificationChannel(Base):
    """Where notifications go: an HL7 v2 receiver (a RIS, over MLLP), a webhook or e-mail
    (dicom_node.notify.channels holds each kind's settings)."""

    __tablename__ = "notification_channels"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    kind: Mapped[str] = mapped_column(String(16))  # hl7, webhook, email
    settings: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    description: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    @property
    def title(self) -> str:
        return self.name


notification_rule_channels = Table(
    "notification_rule_channels",
    Base.metadata,
    Column("rule_id", ForeignKey("notification_rules.id", ondelete="CASCADE"), primary_key=True),
    Column("channel_id", ForeignKey("notification_channels.id", ondelete="CASCADE"), primary_key=True),
)


class NotificationRule(Base):
    """Which finished jobs are notified to which channels (dicom_node.triage.notify_rules)."""

    __tablename__ = "notification_rules"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    # dicom_node.triage.notify_rules.NotifyConditions as JSON; every key optional.
    conditions: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    description: Mapped[str] = mapped_column(String(200), default="")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)

    channels: Mapped[list[NotificationChannel]] = relationship(secondary=notification_rule_channels, lazy="selectin")

    @property
    def title(self) -> str:
        return self.name


class Notification(Base):
    """One finished job told to one channel: the durable outbox of notifications. Written in the
    transaction that ends the job; sent by ``serve`` (dicom_node.notify.sender) until the endpoint
    acknowledges it or it fails for good (dicom_node.jobs.notifications)."""

    __tablename__ = "notifications"

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), index=True)
    channel_id: Mapped[int | None] = mapped_column(
        ForeignKey("notification_channels.id", ondelete="SET NULL"), nullable=True
    )
    # "<job id>:<attempt>:<channel id>": one notification per run of a job and channel.
    key: Mapped[str] = mapped_column(String(100), unique=True)
    channel: Mapped[str] = mapped_column(String(64))  # its name, kept if the channel is deleted
    kind: Mapped[str] = mapped_column(String(16))
    rules: Mapped[list[Any]] = mapped_column(JSON, default=list)  # names of the rules that matched
    # The identity the endpoint sees, the same on every attempt: HL7 MSH-10, the webhook's
    # delivery id, the e-mail's Message-ID.
    message_id: Mapped[str] = mapped_column(String(100), default="")
    status: Mapped[str] = mapped_column(String(16), index=True)  # dicom_node.jobs.states.NotificationStatus
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(nullable=True)
    last_error: Mapped[str] = mapped_column(Text, default="")
    # What the endpoint answered (HL7 MSA, HTTP status, SMTP reply).
    response: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    delivered_at: Mapped[dt.datetime | None] = mapped_column(nullable=True)
    finished_at: Mapped[dt.datetime | None] = mapped_column(nullable=True)

    job: Mapped[Job] = relationship()


# --- triage: the radiologists' reviews --------------------------------------------------------


class Review(Base):
    """A radiologist's reading of one job's result on the worklist (dicom_node.triage.worklist):
    acknowledged (seen), and the verdict: agree, or disagree with the true class. One per job; each
    change is in the audit log."""

    __tablename__ = "reviews"

    id: Mapped[int] = mapped_column(primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), unique=True)
    acknowledged_by: Mapped[str] = mapped_column(String(100), default="")
    acknowledged_at: Mapped[dt.datetime | None] = mapped_column(nullable=True)
    verdict: Mapped[str] = mapped_column(String(16), default="")  # "", agree, disagree
    # The class the radiologist found (covid, cap, normal); the node's decision when they agree.
    true_class: Mapped[str] = mapped_column(String(16), default="")
    comment: Mapped[str] = mapped_column(Text, default="")
    verdict_by: Mapped[str] = mapped_column(String(100), default="")
    verdict_at: Mapped[dt.datetime | None] = mapped_column(nullable=True, index=True)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)


class NodeCounter(Base):
    """A count that outlives the rows it counts (series purged, events pruned...), for /metrics
    and the admin pages; dicom_node.storage.retention adds to them."""

    __tablename__ = "node_counters"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger, default=0)


# --- admin: users, API tokens, sessions, audit log ------------------------------------------


class User(Base):
    """A person (or script owner) who may use the admin pages and API. No default user exists."""

    __tablename__ = "users"

    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    # argon2id hash (argon2-cffi's encoded form, parameters included).
    password_hash: Mapped[str] = mapped_column(String(255))
    role: Mapped[str] = mapped_column(String(16), default=Role.VIEWER.value)
    enabled: Mapped[bool] = mapped_column(Boolean, default=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    last_login_at: Mapped[dt.datetime | None] = mapped_column(nullable=True)

    @validates("name")
    def _v_name(self, key: str, value: str) -> str:
        return require("name", check_user_name, value)

    @validates("role")
    def _v_role(self, key: str, value: str) -> str:
        return require("role", check_role, value)


class ApiToken(Base):
    """A bearer token for the REST API, acting as its user with the user's role. Only the sha256
    of the token is kept; the token itself is shown once, when it is created."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    name: Mapped[str] = mapped_column(String(100), default="")
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    # The first characters of the token, to tell tokens apart in lists.
    prefix: Mapped[str] = mapped_column(String(16))
    created_by: Mapped[str] = mapped_column(String(100), default="")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    last_used_at: Mapped[dt.datetime | None] = mapped_column(nullable=True)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(nullable=True)
    revoked_by: Mapped[str] = mapped_column(String(100), default="")

    user: Mapped[User] = relationship(lazy="joined")


class AdminSession(Base):
    """A logged-in browser. The cookie carries a random id; only its sha256 is kept here, so
    logging out (or disabling the user) ends the session on the server side."""

    __tablename__ = "admin_sessions"

    id: Mapped[int] = mapped_column(primary_key=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column()
    last_seen_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    remote_addr: Mapped[str] = mapped_column(String(64), default="")

    user: Mapped[User] = relationship(lazy="joined")


class AuditEntry(Base):
    """Who changed what, when, with the values before and after (None for a creation or a
    deletion). Written in the transaction of the change itself."""

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[dt.datetime] = mapped_column(default=utcnow, index=True)
    # The user name, or "cli:<os user>" for the command line.
    actor: Mapped[str] = mapped_column(String(100))
    # How: "web" (session), "api-token <id>", "cli".
    via: Mapped[str] = mapped_column(String(32), default="")
    # "<target_type>.<verb>", e.g. "source.create", "token.revoke", "job.retry", "user.login".
    action: Mapped[str] = mapped_column(String(64), index=True)
    target_type: Mapped[str] = mapped_column(String(32), default="")
    target_id: Mapped[str] = mapped_column(String(64), default="")
    # A readable name of the target (an AE title, a user name), kept if the row is deleted.
    target: Mapped[str] = mapped_column(String(200), default="")
    before: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    after: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    detail: Mapped[str] = mapped_column(Text, default="")
    remote_addr: Mapped[str] = mapped_column(String(64), default="")


# --- backfills of past studies ------------------------------------------------------------------


class Backfill(Base):
    """A backfill: past studies of a source PACS (a destination) queried, their series that the
    local AE's filters take retrieved into that AE and analysed at low priority
    (dicom_node.jobs.backfills). Resumable: what is left is in its series rows."""

    __tablename__ = "backfills"

    id: Mapped[int] = mapped_column(primary_key=True)
    # The source's title (a destination's), kept if the destination is removed.
    source: Mapped[str] = mapped_column(String(16))
    # How series are fetched: move (C-MOVE to the local AE), get (C-GET), wado (WADO-RS).
    method: Mapped[str] = mapped_column(String(8))
    local_ae: Mapped[str] = mapped_column(String(16))
    # Study Date range (YYYYMMDD, either may be ""), modality in study, accession numbers (none: all).
    date_from: Mapped[str] = mapped_column(String(8), default="")
    date_to: Mapped[str] = mapped_column(String(8), default="")
    modality: Mapped[str] = mapped_column(String(16), default="")
    accessions: Mapped[list[Any]] = mapped_column(JSON, default=list)
    # Studies an hour at most (0: no limit), and the daily window "HH:MM-HH:MM" ("" always).
    rate_per_hour: Mapped[float] = mapped_column(Float, default=0.0)
    window: Mapped[str] = mapped_column(String(11), default="")
    # Analyse again series already analysed here.
    force: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[str] = mapped_column(String(16), index=True)  # dicom_node.jobs.states.BackfillStatus
    reason: Mapped[str] = mapped_column(Text, default="")
    created_by: Mapped[str] = mapped_column(String(100), default="")
    # Who runs it: "command" (the dicom-node backfill that started it, or --resume) or "serve"
    # (started from the admin pages; serve runs it, and resumes it after a restart).
    run_by: Mapped[str] = mapped_column(String(16), default="command")
    created_at: Mapped[dt.datetime] = mapped_column(default=utcnow)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    finished_at: Mapped[dt.datetime | None] = mapped_column(nullable=True)

    series: Mapped[list["BackfillSeries"]] = relationship(
        back_populates="backfill", order_by="BackfillSeries.id", cascade="all, delete-orphan"
    )


class BackfillSeries(Base):
    """One series a backfill found at its source, and what became of it."""

    __tablename__ = "backfill_series"
    __table_args__ = (UniqueConstraint("backfill_id", "series_uid", name="uq_backfill_series_backfill_series"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    backfill_id: Mapped[int] = mapped_column(ForeignKey("backfills.id", ondelete="CASCADE"))
    study_uid: Mapped[str] = mapped_column(String(64))
    series_uid: Mapped[str] = mapped_column(String(64), index=True)
    accession_number: Mapped[str] = mapped_column(String(64), default="")
    study_date: Mapped[str] = mapped_column(String(8), default="")
    modality: Mapped[str] = mapped_column(String(16), default="")
    series_description: Mapped[str] = mapped_column(String(64), default="")
    # Number of Series Related Instances as the source said (0: not said).
    instances: Mapped[int] = mapped_column(Integer, default=0)
    status: Mapped[str] = mapped_column(String(16), index=True)  # dicom_node.jobs.states.BackfillSeriesStatus
    reason: Mapped[str] = mapped_column(Text, default="")
    retrieved_instances: Mapped[int] = mapped_column(Integer, default=0)
    updated_at: Mapped[dt.datetime] = mapped_column(default=utcnow, onupdate=utcnow)
    retrieved_at: Mapped[dt.datetime | None] = mapped_column(nullable=True)

    backfill: Mapped[Backfill] = relationship(back_populates="series")
