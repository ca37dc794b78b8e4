"""The index: what the listener records in the database, and the allow-list it consults.

This is the receiver's ``on_received`` side: called after an instance is durably on disk and
before the C-STORE response, in one short transaction per instance.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

from sqlalchemy import DateTime, bindparam, select, text

from dicom_node.db import Database
from dicom_node.db.models import Event, JobStatus, LocalAE, SeriesStatus, Source, utcnow

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReceivedInstance:
    local_ae_id: int | None
    calling_ae: str
    calling_host: str
    study_uid: str
    series_uid: str
    sop_instance_uid: str
    sop_class_uid: str
    transfer_syntax_uid: str
    path: str
    size_bytes: int
    frames: int = 1
    instance_number: int | None = None
    patient_id: str = ""
    modality: str = ""
    body_part: str = ""
    series_description: str = ""
    series_number: int | None = None
    image_type: str = ""


_TS = DateTime(timezone=True)

# The per-instance statements, prepared once: plain SQL that SQLite (>= 3.35) and PostgreSQL both
# understand. Building ORM/Core constructs per C-STORE cost more than the SQL itself.
_SELECT_SERIES = text("SELECT id, status FROM series WHERE series_uid = :series_uid")
_SELECT_SERIES_FOR_UPDATE = text("SELECT id, status FROM series WHERE series_uid = :series_uid FOR UPDATE")
_INSERT_SERIES = text(
    "INSERT INTO series (series_uid, study_uid, local_ae_id, calling_ae, calling_host, patient_id, modality,"
    " body_part, series_description, series_number, sop_class_uid, image_type, instances, frames, status, reason,"
    " generation, first_received_at, opened_at, last_received_at)"
    " VALUES (:series_uid, :study_uid, :local_ae_id, :calling_ae, :calling_host, :patient_id, :modality,"
    " :body_part, :series_description, :series_number, :sop_class_uid, :image_type, 0, 0, :status, '',"
    " 0, :now, :now, :now)"
    " ON CONFLICT (series_uid) DO NOTHING"
).bindparams(bindparam("now", type_=_TS))
_INSERT_INSTANCE = text(
    "INSERT INTO instances (series_id, sop_instance_uid, sop_class_uid, transfer_syntax_uid, instance_number,"
    " frames, path, size_bytes, received_at)"
    " VALUES (:series_id, :sop_instance_uid, :sop_class_uid, :transfer_syntax_uid, :instance_number,"
    " :frames, :path, :size_bytes, :now)"
    " ON CONFLICT (sop_instance_uid) DO NOTHING RETURNING id"
).bindparams(bindparam("now", type_=_TS))
_COUNT_INSTANCE = text(
    "UPDATE series SET instances = instances + 1, frames = frames + :frames, last_received_at = :now WHERE id = :series_id"
).bindparams(bindparam("now", type_=_TS))
_REOPEN_SERIES = text(
    "UPDATE series SET status = :receiving, reason = '', generation = generation + 1, opened_at = :now,"
    " completed_at = NULL WHERE id = :series_id"
).bindparams(bindparam("now", type_=_TS))
_SUPERSEDE_JOBS = text(
    "UPDATE jobs SET status = :superseded, reason = 'series re-opened by a late instance', finished_at = :now"
    " WHERE series_id = :series_id AND status IN (:pending, :queued)"
).bindparams(bindparam("now", type_=_TS))
_HAS_INSTANCE = text("SELECT 1 FROM instances WHERE sop_instance_uid = :uid")


class Index:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._select_series = _SELECT_SERIES_FOR_UPDATE if db.engine.dialect.name == "postgresql" else _SELECT_SERIES

    def has_instance(self, sop_instance_uid: str) -> bool:
        with self.db.reader() as conn:
            return conn.execute(_HAS_INSTANCE, {"uid": sop_instance_uid}).first() is not None

    def record(self, item: ReceivedInstance, now: dt.datetime | None = None) -> bool:
        """Index a stored instance in one transaction. Returns False when the SOP Instance UID was
        already indexed (an idempotent re-send). A new instance re-opens a completed series and
        supersedes its jobs that have not started, so at most one job waits per series."""
        now = now or utcnow()
        with self.db.engine.begin() as conn:
            row = conn.execute(self._select_series, {"series_uid": item.series_uid}).first()
            if row is None:
                conn.execute(
                    _INSERT_SERIES,
                    {
                        "series_uid": item.series_uid,
                        "study_uid": item.study_uid,
                        "local_ae_id": item.local_ae_id,
                        "calling_ae": item.calling_ae[:16],
                        "calling_host": item.calling_host[:253],
                        "patient_id": item.patient_id[:64],
                        "modality": item.modality[:16],
                        "body_part": item.body_part[:64],
                        "series_description": item.series_description[:64],
                        "series_number": item.series_number,
                        "sop_class_uid": item.sop_class_uid,
                        "image_type": item.image_type[:200],
                        "status": SeriesStatus.RECEIVING.value,
                        "now": now,
                    },
                )
                row = conn.execute(self._select_series, {"series_uid": item.series_uid}).one()
            series_id, status = row
            inserted = conn.execute(
                _INSERT_INSTANCE,
                {
                    "series_id": series_id,
                    "sop_instance_uid": item.sop_instance_uid,
                    "sop_class_uid": item.sop_class_uid,
                    "transfer_syntax_uid": item.transfer_syntax_uid,
                    "instance_number": item.instance_number,
                    "frames": item.frames,
                    "path": item.path,
                    "size_bytes": item.size_bytes,
                    "now": now,
                },
            ).first()
            if inserted is None:
                return False
            conn.execute(_COUNT_INSTANCE, {"frames": item.frames, "now": now, "series_id": series_id})
            if status != SeriesStatus.RECEIVING.value:
                conn.execute(_REOPEN_SERIES, {"receiving": SeriesStatus.RECEIVING.value, "now": now, "series_id": series_id})
                conn.execute(
                    _SUPERSEDE_JOBS,
                    {
                        "superseded": JobStatus.SUPERSEDED.value,
                        "now": now,
                        "series_id": series_id,
                        "pending": JobStatus.PENDING.value,
                        "queued": JobStatus.QUEUED.value,
                    },
                )
                log.info("series %s re-opened by instance %s", item.series_uid, item.sop_instance_uid)
            return True

    def check_source(self, local_ae: LocalAE | "LocalAESnapshot", calling_ae: str, calling_host: str) -> tuple[bool, str]:
        """Is this calling AE (from this host) allowed to associate with ``local_ae``?"""
        if not local_ae.require_known_source:
            return True, ""
        with self.db.reader() as conn:
            rows = conn.execute(select(Source.host, Source.enabled).where(Source.title == calling_ae)).all()
        if not rows:
            return False, f"calling AE {calling_ae!r} is not on the allow-list"
        enabled = [host for host, on in rows if on]
        if not enabled:
            return False, f"calling AE {calling_ae!r} is disabled"
        if any(host is None or host == calling_host for host in enabled):
            return True, ""
        return False, f"calling AE {calling_ae!r} is allowed only from {', '.join(h for h in enabled if h)}, not from {calling_host}"

    def event(self, category: str, message: str, *, level: str = "info", calling_ae: str = "", calling_host: str = "", local_ae: str = "") -> None:
        """Record something an admin should be able to see later."""
        with self.db.session() as s:
            s.add(
                Event(
                    level=level,
                    category=category,
                    message=message[:2000],
                    calling_ae=calling_ae[:16],
                    calling_host=calling_host[:253],
                    local_ae=local_ae[:16],
                )
            )


@dataclass(frozen=True)
class LocalAESnapshot:
    """What a listener needs of a LocalAE row, detached from any session."""

    id: int
    title: str
    port: int
    enabled: bool
    require_known_source: bool
    extra_sop_classes: tuple[str, ...]

    @classmethod
    def of(cls, row: LocalAE) -> "LocalAESnapshot":
        return cls(row.id, row.title, row.port, row.enabled, row.require_known_source, tuple(row.extra_sop_classes or ()))

    def listen_key(self) -> tuple[object, ...]:
        """A change in any of these needs a new server socket / new presentation contexts."""
        return (self.title, self.port, self.extra_sop_classes)
