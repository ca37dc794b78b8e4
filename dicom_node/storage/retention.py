"""What the node keeps, and for how long: the one home of retention.

A series' images (the storage layout, dicom_node.storage.files) are purged

- once they have been kept their number of days (the local AE's ``keep_images_days``, else
  ``retention.images_days``) since the series was *finished*: its analysis done (or failed) and
  every export of it finished; a series the AE's filters did not select is finished when it is
  complete;
- when the disk is fuller than ``retention.high_water_percent``: the oldest finished series
  first, until the use is under ``retention.low_water_percent`` (``serve``, every
  ``retention.check_seconds``);
- when a C-STORE would leave less than ``listener.min_free_disk_mb`` free: the listener makes room
  the same way before it would answer 0xA700 (:meth:`Retention.make_room`).

A series still receiving, with a job pending, queued or running, or with an export not finished
is never purged: a purge locks the series row and checks that again in its own transaction.

A purge is two steps, so that a crash between them loses nothing it should keep and brings back
nothing it removed: the series is marked ``purged_at`` (the check and the mark in one
transaction), its files are removed (the directory fsync'ed), then its instance rows are deleted
with an event, an audit entry and the counters (``node_counters``: /metrics and the admin pages
read them). A series marked but not emptied (a crash) is finished by the next run. The series row,
its jobs and their results stay: results are removed ``retention.results_days`` after their job
finished; event and audit rows past ``retention.events_days`` and ``retention.audit_days`` are
deleted and counted.

Purges by several processes (the listeners, ``serve``) take turns on a lock file in the data dir.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, cast

from sqlalchemy import Connection, CursorResult, Executable, and_, delete, func, or_, select, update
from sqlalchemy.orm import Session

from dicom_node.db import Database
from dicom_node.db.models import AuditEntry, Event, Export, Instance, Job, LocalAE, NodeCounter, Series
from dicom_node.db.times import as_utc, utcnow
from dicom_node.jobs.states import (
    ACTIVE_JOB_STATUSES,
    FINISHED_JOB_STATUSES,
    OPEN_EXPORT_STATUSES,
    SeriesStatus,
)
from dicom_node.settings import Settings
from dicom_node.storage.files import SERIES_RECORD, Storage, fsync_dir

log = logging.getLogger(__name__)

LOCK_FILE = "retention.lock"
# The counters retention keeps (node_counters.name).
SERIES_PURGED = "series_purged"
BYTES_PURGED = "bytes_purged"
RESULTS_PURGED = "results_purged"
EVENTS_PRUNED = "events_pruned"
AUDIT_PRUNED = "audit_pruned"
COUNTERS = (SERIES_PURGED, BYTES_PURGED, RESULTS_PURGED, EVENTS_PRUNED, AUDIT_PRUNED)
# The receiving rate (for "days left") is measured over this many days.
RATE_DAYS = 7.0
_BATCH = 200
_ACTIVE = [s.value for s in ACTIVE_JOB_STATUSES]
_FINISHED = [s.value for s in FINISHED_JOB_STATUSES]
_OPEN = [s.value for s in OPEN_EXPORT_STATUSES]


@dataclass(frozen=True)
class Disk:
    """The file system of the data dir."""

    total: int
    free: int

    @property
    def used(self) -> int:
        return self.total - self.free

    @property
    def percent_used(self) -> float:
        return 100.0 * self.used / self.total if self.total else 0.0


@dataclass(frozen=True)
class Finished:
    """A finished series whose images are still kept."""

    series_id: int
    series_uid: str
    study_uid: str
    local_ae: str
    size_bytes: int
    finished_at: dt.datetime
    keep_days: float | None  # the AE's, else the node's; None: until the disk needs the room

    def due(self, now: dt.datetime) -> bool:
        return self.keep_days is not None and self.finished_at <= now - dt.timedelta(days=self.keep_days)


@dataclass
class Report:
    """What one run of the policy did (or, for a dry run, would do)."""

    purged: list[tuple[Finished, str]] = field(default_factory=list)  # (series, why)
    bytes_freed: int = 0
    results_purged: int = 0
    events_pruned: int = 0
    audit_pruned: int = 0
    disk: Disk | None = None


class Retention:
    def __init__(
        self, db: Database, settings: Settings, storage: Storage | None = None, *, actor: str = "serve"
    ) -> None:
        self.db = db
        self.settings = settings
        self.policy = settings.retention
        self.storage = storage or Storage(settings.storage_dir)
        self.actor = actor  # who purges, in the audit log: serve, a listener process, the command line
        self.lock_path = settings.data_dir / LOCK_FILE

    # --- what is on the disk -------------------------------------------------------------------

    def disk(self) -> Disk:
        usage = shutil.disk_usage(self.storage.root)
        return Disk(total=usage.total, free=usage.free)

    def finished(
        self,
        *,
        limit: int = _BATCH,
        completed_after: dt.datetime | None = None,
        completed_before: dt.datetime | None = None,
    ) -> list[Finished]:
        """Finished series whose images are kept, oldest finished first (in batches of ``limit``,
        by completion; within a batch by when they finished)."""
        job_of_series = Job.series_id == Series.id
        active = select(Job.id).where(job_of_series, Job.status.in_(_ACTIVE)).exists()
        has_job = select(Job.id).where(job_of_series).exists()
        open_export = (
            select(Export.id).join(Job, Export.job_id == Job.id).where(job_of_series, Export.status.in_(_OPEN)).exists()
        )
        job_done = select(func.max(Job.finished_at)).where(job_of_series).scalar_subquery()
        export_done = (
            select(func.max(Export.finished_at)).join(Job, Export.job_id == Job.id).where(job_of_series)
        ).scalar_subquery()
        query = (
            select(
                Series.id,
                Series.series_uid,
                Series.study_uid,
                Series.size_bytes,
                Series.completed_at,
                LocalAE.title,
                LocalAE.keep_images_days,
                job_done,
                export_done,
            )
            .outerjoin(LocalAE, LocalAE.id == Series.local_ae_id)
            .where(
                Series.purged_at.is_(None),
                Series.completed_at.is_not(None),
                or_(
                    Series.status == SeriesStatus.NOT_ANALYSED.value,
                    and_(Series.status == SeriesStatus.COMPLETE.value, has_job),
                ),
                ~active,
                ~open_export,
            )
            .order_by(Series.completed_at, Series.id)
            .limit(limit)
        )
        if completed_after is not None:
            query = query.where(Series.completed_at > completed_after)
        if completed_before is not None:
            query = query.where(Series.completed_at <= completed_before)
        with self.db.reader() as conn:
            rows = conn.execute(query).all()
        out = []
        for sid, uid, study, size, completed, title, keep, job_at, export_at in rows:
            moments = [as_utc(t) for t in (completed, job_at, export_at) if t is not None]
            out.append(
                Finished(
                    series_id=sid,
                    series_uid=uid,
                    study_uid=study,
                    local_ae=title or "",
                    size_bytes=int(size or 0),
                    finished_at=max(moments),
                    keep_days=keep if keep is not None else self.policy.images_days,
                )
            )
        return sorted(out, key=lambda f: (f.finished_at, f.series_id))

    def _all_finished(self, completed_before: dt.datetime | None = None) -> Iterator[Finished]:
        after: dt.datetime | None = None
        while True:
            batch = self.finished(completed_after=after, completed_before=completed_before)
            yield from batch
            if len(batch) < _BATCH:
                return
            with self.db.reader() as conn:
                after = conn.execute(
                    select(func.max(Series.completed_at)).where(Series.id.in_([f.series_id for f in batch]))
                ).scalar_one()

    # --- purging -------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _turn(self) -> Iterator[None]:
        """One purging process at a time on this data dir."""
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.lock_path, "a+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def purge(self, item: Finished, why: str) -> int:
        """Purge one series' images if it is still finished; returns the bytes freed (0: it was
        not purged: it re-opened, a job was started, or another process purged it)."""
        with self.db.session() as s:
            series = s.execute(select(Series).where(Series.id == item.series_id).with_for_update()).scalar_one_or_none()
            if series is None or series.purged_at is not None or not _still_finished(s, series):
                return 0
            series.purged_at = utcnow()
        return self._empty(item.series_id, why)

    def _empty(self, series_id: int, why: str) -> int:
        """Remove the files of a series marked purged, then its instance rows, with the event, the
        audit entry and the counters."""
        with self.db.reader() as conn:
            rows = conn.execute(select(Instance.id, Instance.path).where(Instance.series_id == series_id)).all()
            series = conn.execute(
                select(Series.series_uid, Series.study_uid, Series.size_bytes, Series.local_ae_id).where(
                    Series.id == series_id
                )
            ).one()
        directories = set()
        for _, path in rows:
            target = self.storage.absolute(path)
            target.unlink(missing_ok=True)
            directories.add(target.parent)
        for directory in directories:
            _remove_if_only_record(directory)
        freed = int(series.size_bytes or 0)
        with self.db.session() as s:
            ids = [row_id for row_id, _ in rows]
            for start in range(0, len(ids), 500):
                s.execute(delete(Instance).where(Instance.id.in_(ids[start : start + 500])))
            local_ae = s.get(LocalAE, series.local_ae_id) if series.local_ae_id is not None else None
            message = (
                f"images of series {series.series_uid} (study {series.study_uid}) purged: {why}; "
                f"{len(rows)} instance(s), {freed / 2**20:.1f} MB"
            )
            s.add(Event(level="info", category="retention", message=message[:2000], local_ae=_title(local_ae)))
            s.add(
                AuditEntry(
                    actor=f"retention ({self.actor})"[:100],
                    via="retention",
                    action="series.purge",
                    target_type="series",
                    target_id=str(series_id),
                    target=series.series_uid,
                    before={"instances": len(rows), "size_bytes": freed},
                    detail=why[:2000],
                )
            )
            add_counts(s, {SERIES_PURGED: 1, BYTES_PURGED: freed})
        log.info("%s", message)
        return freed

    def finish_interrupted(self) -> int:
        """Empty the series marked purged that still have instance rows (a crash between the two
        steps of a purge); returns how many. It takes its turn on the lock: a series another
        process is emptying right now looks the same as an interrupted one until that ends, and
        emptying it twice would record its purge twice."""
        with self._turn():
            return self._finish_interrupted()

    def _finish_interrupted(self) -> int:
        with self.db.reader() as conn:
            ids = list(
                conn.scalars(
                    select(Series.id)
                    .where(
                        Series.purged_at.is_not(None),
                        select(Instance.id).where(Instance.series_id == Series.id).exists(),
                    )
                    .limit(_BATCH)
                )
            )
        for series_id in ids:
            self._empty(series_id, "a purge interrupted before it ended, finished")
        return len(ids)

    def make_room(self, free_bytes: int) -> int:
        """Purge the oldest finished series until ``free_bytes`` are free (or none is left);
        returns the bytes freed. What a listener calls before it would answer 0xA700."""
        freed = 0
        with self._turn():
            if self.disk().free >= free_bytes:
                return 0  # another process made the room while this one waited
            for item in self._all_finished():
                freed += self.purge(item, f"disk nearly full: less than {free_bytes // 2**20} MB free")
                if self.disk().free >= free_bytes:
                    break
        return freed

    def low_water_free(self) -> int:
        """The free bytes at the low water mark."""
        total = self.disk().total
        return total - int(total * self.policy.low_water_percent / 100)

    def _shortest_keep(self) -> float | None:
        """The fewest days any series is kept (the node's and every local AE's); None: none is kept
        for a number of days."""
        with self.db.reader() as conn:
            kept = [d for d in conn.scalars(select(LocalAE.keep_images_days).distinct()) if d is not None]
        if self.policy.images_days is not None:
            kept.append(self.policy.images_days)
        return min(kept) if kept else None

    def plan(self, now: dt.datetime | None = None) -> Report:
        """What :meth:`run_once` would purge now, without purging anything (``storage purge --dry-run``)."""
        return self._images(now or utcnow(), dry_run=True)

    def run_once(self, now: dt.datetime | None = None) -> Report:
        """Apply the whole policy once: interrupted purges finished, images due or over the high
        water mark purged, old results removed, old event and audit rows pruned."""
        now = now or utcnow()
        self.finish_interrupted()
        report = self._images(now, dry_run=False)
        report.results_purged = self._results(now)
        report.events_pruned, report.audit_pruned = self._prune(now)
        return report

    def _images(self, now: dt.datetime, *, dry_run: bool) -> Report:
        # The disk is read once this process has its turn: a listener may have made the room
        # while this one waited, and a reading from before would purge what is no longer needed.
        with self._turn() if not dry_run else contextlib.nullcontext():
            disk = self.disk()
            report = Report(disk=disk)
            low_water_free = disk.total - int(disk.total * self.policy.low_water_percent / 100)
            over_high = disk.percent_used > self.policy.high_water_percent
            free = disk.free
            if over_high:
                completed_before = None  # any finished series may go, oldest first
            else:
                shortest = self._shortest_keep()
                if shortest is None:
                    return report
                completed_before = now - dt.timedelta(days=shortest)  # finished no earlier than completed
            for item in self._all_finished(completed_before):
                if item.due(now):
                    why = f"kept {item.keep_days:g} day(s) after it was finished"
                elif over_high and free < low_water_free:
                    why = (
                        f"disk {disk.percent_used:.0f} % used, over the high water mark of "
                        f"{self.policy.high_water_percent:g} %; purging down to {self.policy.low_water_percent:g} %"
                    )
                else:
                    continue
                freed = item.size_bytes if dry_run else self.purge(item, why)
                if freed or dry_run:
                    report.purged.append((item, why))
                    report.bytes_freed += freed
                free = free + freed if dry_run else self.disk().free
        return report

    def _results(self, now: dt.datetime) -> int:
        """Remove the result folders of jobs finished more than results_days ago."""
        days = self.policy.results_days
        results_dir = self.settings.results_dir
        if days is None or not results_dir.is_dir():
            return 0
        folders = {int(p.name): p for p in results_dir.iterdir() if p.is_dir() and p.name.isdigit()}
        if not folders:
            return 0
        cutoff = now - dt.timedelta(days=days)
        removed = 0
        ids = sorted(folders)
        for start in range(0, len(ids), 500):
            batch = ids[start : start + 500]
            open_export = select(Export.id).where(Export.job_id == Job.id, Export.status.in_(_OPEN)).exists()
            with self.db.reader() as conn:
                old = conn.scalars(
                    select(Job.id).where(
                        Job.id.in_(batch), Job.status.in_(_FINISHED), Job.finished_at < cutoff, ~open_export
                    )
                ).all()
            for job_id in old:
                shutil.rmtree(folders[job_id], ignore_errors=True)
                removed += 1
        if removed:
            fsync_dir(results_dir)
            with self.db.session() as s:
                add_counts(s, {RESULTS_PURGED: removed})
                s.add(
                    Event(
                        level="info",
                        category="retention",
                        message=f"results of {removed} job(s) finished more than {days:g} day(s) ago removed",
                    )
                )
        return removed

    def _prune(self, now: dt.datetime) -> tuple[int, int]:
        """Delete event and audit rows past their days; returns (events, audit entries) deleted."""
        with self.db.session() as s:
            events = _rowcount(s, delete(Event).where(Event.at < now - dt.timedelta(days=self.policy.events_days)))
            audit = _rowcount(
                s, delete(AuditEntry).where(AuditEntry.at < now - dt.timedelta(days=self.policy.audit_days))
            )
            if events or audit:
                add_counts(s, {EVENTS_PRUNED: events, AUDIT_PRUNED: audit})
        return int(events or 0), int(audit or 0)

    # --- what the admin pages and /metrics show --------------------------------------------------

    def usage(self, now: dt.datetime | None = None) -> Usage:
        """The disk, the receiving rate (over the last RATE_DAYS days, or since the first series of
        a younger node), the days left at that rate and the counters."""
        now = now or utcnow()
        disk = self.disk()
        since = now - dt.timedelta(days=RATE_DAYS)
        with self.db.reader() as conn:
            received = conn.execute(
                select(func.coalesce(func.sum(Series.size_bytes), 0)).where(Series.first_received_at >= since)
            ).scalar_one()
            first = conn.execute(select(func.min(Series.first_received_at))).scalar_one()
            counts = counters(conn)
        span_days = RATE_DAYS if first is None else max((now - as_utc(first)).total_seconds() / 86400, 1 / 24)
        rate = float(received) / min(span_days, RATE_DAYS) if received else 0.0
        room = max(disk.free - self.settings.listener.min_free_disk_mb * 2**20, 0)
        return Usage(disk=disk, bytes_per_day=rate, days_left=room / rate if rate else None, counters=counts)


@dataclass(frozen=True)
class Usage:
    """What the admin pages, /metrics and ``storage status`` show."""

    disk: Disk
    bytes_per_day: float
    days_left: float | None  # before the free space reaches listener.min_free_disk_mb, without purging
    counters: dict[str, int]

    def as_dict(self) -> dict[str, object]:
        return {
            "total_bytes": self.disk.total,
            "used_bytes": self.disk.used,
            "free_bytes": self.disk.free,
            "percent_used": round(self.disk.percent_used, 1),
            "bytes_per_day": round(self.bytes_per_day),
            "days_left": None if self.days_left is None else round(self.days_left, 1),
            **self.counters,
        }


def _still_finished(s: Session, series: Series) -> bool:
    """Checked again with the series row locked: still finished, nothing started meanwhile."""
    if series.status not in (SeriesStatus.COMPLETE.value, SeriesStatus.NOT_ANALYSED.value):
        return False
    statuses = s.scalars(select(Job.status).where(Job.series_id == series.id)).all()
    if any(status in _ACTIVE for status in statuses):
        return False
    if series.status == SeriesStatus.COMPLETE.value and not statuses:
        return False
    open_export = s.scalar(
        select(func.count())
        .select_from(Export)
        .join(Job, Export.job_id == Job.id)
        .where(Job.series_id == series.id, Export.status.in_(_OPEN))
    )
    return not open_export


def _remove_if_only_record(directory: Path) -> None:
    """Remove a series folder left with nothing but its series record, and its study folder if
    empty; fsync what changed (a removal undone by a power cut would bring files back to index)."""
    try:
        left = [p.name for p in directory.iterdir()]
    except FileNotFoundError:
        return
    if left and left != [SERIES_RECORD]:
        fsync_dir(directory)
        return
    try:
        (directory / SERIES_RECORD).unlink(missing_ok=True)
        directory.rmdir()
    except OSError:  # an instance arrived meanwhile: the folder stays
        fsync_dir(directory)
        return
    study = directory.parent
    try:
        study.rmdir()
    except OSError:  # other series of the study are kept
        fsync_dir(study)
    else:
        fsync_dir(study.parent)


def _rowcount(s: Session, statement: Executable) -> int:
    # An UPDATE's or DELETE's result is a CursorResult (with rowcount); Session.execute is typed Result.
    return int(cast(CursorResult[Any], s.execute(statement)).rowcount or 0)


def _title(local_ae: LocalAE | None) -> str:
    return local_ae.title if local_ae is not None else ""


def add_counts(s: Session, counts: dict[str, int]) -> None:
    """Add to the node's counters (created at 0 when missing)."""
    for name, n in counts.items():
        if not n:
            continue
        if not _rowcount(s, update(NodeCounter).where(NodeCounter.name == name).values(value=NodeCounter.value + n)):
            s.add(NodeCounter(name=name, value=n))
            s.flush()


def counters(conn: Connection) -> dict[str, int]:
    """Every retention counter, 0 when never counted."""
    rows = {name: value for name, value in conn.execute(select(NodeCounter.name, NodeCounter.value)).all()}
    return {name: int(rows.get(name, 0)) for name in COUNTERS}
