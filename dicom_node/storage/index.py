"""The index: what the listener records in the database, and the allow-list it consults.

This is the receiver's ``on_received`` side: called after an instance is durably on disk and
before the C-STORE response, in one short transaction per instance.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import sqlite3
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select

from dicom_node.db import Database
from dicom_node.db.models import Event, LocalAE, Source
from dicom_node.db.times import utcnow
from dicom_node.jobs.analyses import SUPERSEDE_WAITING_SQL, supersede_waiting_params
from dicom_node.jobs.states import SeriesStatus

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
    # The C-STORE request's priority as dicom_node.triage.priority ranks it (2 high, 1 medium, 0 low).
    store_priority: int = 1


# The per-instance statements: plain SQL that SQLite (>= 3.35) and PostgreSQL both understand,
# run on the pooled DBAPI connection. Going through SQLAlchemy's statement machinery per C-STORE
# cost more CPU than the SQL itself; everything else in the project uses SQLAlchemy.
_SQL = {
    "select_series": "SELECT id, status, purged_at FROM series WHERE series_uid = :series_uid",
    "insert_series": (
        "INSERT INTO series (series_uid, study_uid, local_ae_id, calling_ae, calling_host, patient_id, modality,"
        " body_part, series_description, series_number, sop_class_uid, image_type, instances, frames, status, reason,"
        " generation, first_received_at, opened_at, last_received_at, store_priority)"
        " VALUES (:series_uid, :study_uid, :local_ae_id, :calling_ae, :calling_host, :patient_id, :modality,"
        " :body_part, :series_description, :series_number, :sop_class_uid, :image_type, 0, 0, :status, '',"
        " 0, :now, :now, :now, :store_priority)"
        " ON CONFLICT (series_uid) DO NOTHING"
    ),
    "insert_instance": (
        "INSERT INTO instances (series_id, sop_instance_uid, sop_class_uid, transfer_syntax_uid, instance_number,"
        " frames, path, size_bytes, received_at)"
        " VALUES (:series_id, :sop_instance_uid, :sop_class_uid, :transfer_syntax_uid, :instance_number,"
        " :frames, :path, :size_bytes, :now)"
        " ON CONFLICT (sop_instance_uid) DO NOTHING RETURNING id"
    ),
    # The most urgent C-STORE priority of the series' instances is kept.
    "count_instance": (
        "UPDATE series SET instances = instances + 1, frames = frames + :frames, size_bytes = size_bytes + :size,"
        " last_received_at = :now,"
        " store_priority = CASE WHEN :store_priority > store_priority THEN :store_priority ELSE store_priority END"
        " WHERE id = :series_id"
    ),
    "reopen_series": (
        "UPDATE series SET status = :receiving, reason = '', generation = generation + 1, opened_at = :now,"
        " completed_at = NULL WHERE id = :series_id"
    ),
    # A series whose images retention purged, sent again: it starts again from nothing.
    "restart_purged": (
        "UPDATE series SET instances = 0, frames = 0, size_bytes = 0, purged_at = NULL WHERE id = :series_id"
    ),
    # The job transition belongs to dicom_node.jobs; it runs in this transaction.
    "supersede_jobs": SUPERSEDE_WAITING_SQL,
    "has_instance": "SELECT 1 FROM instances WHERE sop_instance_uid = :uid",
}
_PLACEHOLDER = re.compile(r":([a-z_]+)")


def _sqlite_time(value: dt.datetime) -> str:
    # SQLAlchemy's storage format for DateTime on SQLite (naive UTC text).
    return value.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")


class Index:
    def __init__(self, db: Database) -> None:
        self.db = db
        self._postgres = db.locks_rows
        if self._postgres:
            # psycopg2 takes %(name)s; rows of the series are locked while an instance is counted.
            self._sql = {k: _PLACEHOLDER.sub(r"%(\1)s", v) for k, v in _SQL.items()}
            self._sql["select_series"] += " FOR UPDATE"
            self._time = lambda v: v
        else:
            self._sql = dict(_SQL)  # sqlite3 takes :name
            self._time = _sqlite_time

    def has_instance(self, sop_instance_uid: str) -> bool:
        raw = self.db.engine.raw_connection()
        try:
            cur = raw.cursor()
            cur.execute(self._sql["has_instance"], {"uid": sop_instance_uid})
            found = cur.fetchone() is not None
            cur.close()
            raw.rollback()
            return found
        finally:
            raw.close()

    def record(self, item: ReceivedInstance, now: dt.datetime | None = None) -> bool:
        """Index a stored instance in one transaction. Returns False when the SOP Instance UID was
        already indexed (an idempotent re-send). A new instance re-opens a completed series and
        supersedes its jobs that have not started, so at most one job waits per series."""
        when = self._time(now or utcnow())
        sql = self._sql
        raw = self.db.engine.raw_connection()
        try:
            cur = raw.cursor()
            if not self._postgres:
                cur.execute("BEGIN IMMEDIATE")  # the connection runs in autocommit (db.engine)
            try:
                cur.execute(sql["select_series"], {"series_uid": item.series_uid})
                row = cur.fetchone()
                if row is None:
                    cur.execute(
                        sql["insert_series"],
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
                            "now": when,
                            "store_priority": item.store_priority,
                        },
                    )
                    cur.execute(sql["select_series"], {"series_uid": item.series_uid})
                    row = cur.fetchone()
                    assert row is not None  # inserted just now, or by a concurrent sender
                series_id, status, purged_at = row
                cur.execute(
                    sql["insert_instance"],
                    {
                        "series_id": series_id,
                        "sop_instance_uid": item.sop_instance_uid,
                        "sop_class_uid": item.sop_class_uid,
                        "transfer_syntax_uid": item.transfer_syntax_uid,
                        "instance_number": item.instance_number,
                        "frames": item.frames,
                        "path": item.path,
                        "size_bytes": item.size_bytes,
                        "now": when,
                    },
                )
                inserted = cur.fetchone() is not None
                if inserted:
                    if status != SeriesStatus.RECEIVING.value:
                        cur.execute(
                            sql["reopen_series"],
                            {"receiving": SeriesStatus.RECEIVING.value, "now": when, "series_id": series_id},
                        )
                        cur.execute(sql["supersede_jobs"], supersede_waiting_params(series_id, when))
                        if purged_at is not None:
                            cur.execute(sql["restart_purged"], {"series_id": series_id})
                        log.info("series %s re-opened by instance %s", item.series_uid, item.sop_instance_uid)
                    cur.execute(
                        sql["count_instance"],
                        {
                            "frames": item.frames,
                            "size": item.size_bytes,
                            "now": when,
                            "series_id": series_id,
                            "store_priority": item.store_priority,
                        },
                    )
                if self._postgres:
                    raw.commit()
                else:
                    cur.execute("COMMIT")
                cur.close()
            except BaseException:
                if self._postgres:
                    raw.rollback()
                else:
                    _sqlite_rollback(raw)
                raise
            return inserted
        finally:
            raw.close()

    def check_source(
        self, local_ae: LocalAE | "LocalAESnapshot", calling_ae: str, calling_host: str
    ) -> tuple[bool, str]:
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
        return (
            False,
            f"calling AE {calling_ae!r} is allowed only from {', '.join(h for h in enabled if h)}, "
            f"not from {calling_host}",
        )

    def event(
        self,
        category: str,
        message: str,
        *,
        level: str = "info",
        calling_ae: str = "",
        calling_host: str = "",
        local_ae: str = "",
    ) -> None:
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


def _sqlite_rollback(raw: Any) -> None:
    try:
        raw.cursor().execute("ROLLBACK")
    except sqlite3.OperationalError as exc:  # no transaction open (it failed at BEGIN)
        log.debug("rollback: %s", exc)


# (title, port, extra SOP classes): what a listener's server socket and presentation contexts depend on.
ListenKey = tuple[str, int, tuple[str, ...]]


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
        return cls(
            row.id, row.title, row.port, row.enabled, row.require_known_source, tuple(row.extra_sop_classes or ())
        )

    def listen_key(self) -> ListenKey:
        """A change in any of these needs a new server socket / new presentation contexts."""
        return (self.title, self.port, self.extra_sop_classes)
