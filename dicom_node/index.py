"""The index: what the listener records in the database, and the allow-list it consults.

This is the receiver's ``on_received`` side: called after an instance is durably on disk and
before the C-STORE response, in one short transaction per instance.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

from sqlalchemy import select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from dicom_node.db import Database
from dicom_node.db.models import Event, Instance, Job, JobStatus, LocalAE, Series, SeriesStatus, Source, utcnow

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReceivedInstance:
    local_ae_id: int
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


class Index:
    def __init__(self, db: Database) -> None:
        self.db = db
        dialect = db.engine.dialect.name
        self._insert = pg_insert if dialect == "postgresql" else sqlite_insert

    def has_instance(self, sop_instance_uid: str) -> bool:
        with self.db.engine.connect() as conn:
            return conn.execute(select(Instance.id).where(Instance.sop_instance_uid == sop_instance_uid)).first() is not None

    def record(self, item: ReceivedInstance, now: dt.datetime | None = None) -> bool:
        """Index a stored instance. Returns False when the SOP Instance UID was already indexed
        (an idempotent re-send). A new instance re-opens a completed series."""
        now = now or utcnow()
        with self.db.session() as s:
            s.execute(
                self._insert(Series)
                .values(
                    series_uid=item.series_uid,
                    study_uid=item.study_uid,
                    local_ae_id=item.local_ae_id,
                    calling_ae=item.calling_ae,
                    calling_host=item.calling_host,
                    patient_id=item.patient_id[:64],
                    modality=item.modality[:16],
                    body_part=item.body_part[:64],
                    series_description=item.series_description[:64],
                    series_number=item.series_number,
                    sop_class_uid=item.sop_class_uid,
                    image_type=item.image_type[:200],
                    instances=0,
                    frames=0,
                    status=SeriesStatus.RECEIVING.value,
                    reason="",
                    generation=0,
                    first_received_at=now,
                    opened_at=now,
                    last_received_at=now,
                )
                .on_conflict_do_nothing(index_elements=["series_uid"])
            )
            series_q = select(Series.id, Series.status).where(Series.series_uid == item.series_uid)
            if self.db.engine.dialect.name == "postgresql":
                series_q = series_q.with_for_update()
            series_id, status = s.execute(series_q).one()
            inserted = s.execute(
                self._insert(Instance)
                .values(
                    series_id=series_id,
                    sop_instance_uid=item.sop_instance_uid,
                    sop_class_uid=item.sop_class_uid,
                    transfer_syntax_uid=item.transfer_syntax_uid,
                    instance_number=item.instance_number,
                    frames=item.frames,
                    path=item.path,
                    size_bytes=item.size_bytes,
                    received_at=now,
                )
                .on_conflict_do_nothing(index_elements=["sop_instance_uid"])
                .returning(Instance.id)
            ).first()
            if inserted is None:
                return False
            values: dict[str, object] = {
                "instances": Series.instances + 1,
                "frames": Series.frames + item.frames,
                "last_received_at": now,
            }
            if status != SeriesStatus.RECEIVING.value:
                # A late instance: the series re-opens and will complete again. A job that has
                # not started yet is superseded, so there is never more than one waiting.
                values.update(
                    status=SeriesStatus.RECEIVING.value,
                    reason="",
                    generation=Series.generation + 1,
                    opened_at=now,
                    completed_at=None,
                )
                s.execute(
                    update(Job)
                    .where(Job.series_id == series_id, Job.status.in_([JobStatus.PENDING.value, JobStatus.QUEUED.value]))
                    .values(status=JobStatus.SUPERSEDED.value, reason="series re-opened by a late instance", finished_at=now)
                )
                log.info("series %s re-opened by instance %s", item.series_uid, item.sop_instance_uid)
            s.execute(update(Series).where(Series.id == series_id).values(**values))
            return True

    def check_source(self, local_ae: LocalAE | "LocalAESnapshot", calling_ae: str, calling_host: str) -> tuple[bool, str]:
        """Is this calling AE (from this host) allowed to associate with ``local_ae``?"""
        if not local_ae.require_known_source:
            return True, ""
        with self.db.engine.connect() as conn:
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
