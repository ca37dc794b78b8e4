"""The states of a backfill (past studies of a source PACS analysed at low priority) and of the
series it found; the work itself (query, retrieve) is dicom_node.pipeline.backfill's.

A backfill is resumable: it is ``querying`` until its series rows are written (one transaction),
then ``retrieving`` until every row is retrieved, skipped or failed. A restart takes the rows still
``planned`` or ``retrieving`` (a series asked for again is stored once: the node answers an
instance it holds with success and keeps one copy).

A series is never analysed again unless the backfill is forced: one already analysed here, being
analysed or waiting, received and left out by the AE's filters, or still arriving live is
skipped with the reason. Forced, a series whose images are still here gets its last job run again
(at low priority) instead of a retrieve.

The job of a retrieved series is made by series completion like any other, at
:data:`dicom_node.triage.priority.LOW_BACKFILL` (:func:`backfill_priority`), so live studies go
first.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from dicom_node.db import Database
from dicom_node.db.models import Backfill, BackfillSeries, Job, LocalAE, Series
from dicom_node.db.times import utcnow
from dicom_node.errors import NotFound
from dicom_node.jobs import analyses
from dicom_node.jobs.filters import SeriesFacts, SeriesFilter, evaluate
from dicom_node.jobs.states import (
    ACTIVE_JOB_STATUSES,
    BACKFILL_INCOMING,
    BackfillSeriesStatus,
    BackfillStatus,
    JobStatus,
    SeriesStatus,
)
from dicom_node.sending.retrieve import FoundSeries
from dicom_node.triage.priority import LOW_BACKFILL, Priority


@dataclass(frozen=True)
class Decision:
    """What a backfill does with one series found at the source."""

    found: FoundSeries
    status: BackfillSeriesStatus  # PLANNED, REQUEUED or SKIPPED
    reason: str = ""
    job_id: int | None = None  # the job to run again (REQUEUED)


def create(db: Database, **values: Any) -> int:
    """A new backfill, ``querying``; its id."""
    with db.session() as s:
        row = Backfill(status=BackfillStatus.QUERYING.value, reason="", **values)
        s.add(row)
        s.flush()
        return int(row.id)


def get(db: Database, backfill_id: int) -> dict[str, Any]:
    with db.session() as s:
        row = s.get(Backfill, backfill_id)
        if row is None:
            raise NotFound(f"backfill {backfill_id} does not exist (dicom-node backfill --list shows them)")
        return _as_dict(row)


def _as_dict(row: Backfill) -> dict[str, Any]:
    return {
        c.name: (
            getattr(row, c.name).isoformat() if isinstance(getattr(row, c.name), dt.datetime) else getattr(row, c.name)
        )
        for c in Backfill.__table__.columns
    }


def decide(s: Session, found: Iterable[FoundSeries], rule: SeriesFilter, *, force: bool) -> list[Decision]:
    """What to do with each series found: the AE's filters on what the source said of it, then
    what the node already holds of it."""
    out = []
    for f in found:
        ok, why = evaluate(
            rule,
            SeriesFacts(
                modality=f.modality,
                body_part=f.body_part,
                series_description=f.series_description,
                # The instance count when the source says it; the image type is not known before
                # the images come (completion applies the whole filter again).
                slices=f.instances if f.instances else max(rule.min_slices, 0),
                image_type=(),
            ),
        )
        if not ok:
            out.append(Decision(f, BackfillSeriesStatus.SKIPPED, f"the AE's filters: {why}"))
            continue
        series = s.scalar(select(Series).where(Series.series_uid == f.series_uid))
        if series is None:
            out.append(Decision(f, BackfillSeriesStatus.PLANNED))
            continue
        job = s.scalar(select(Job).where(Job.series_id == series.id).order_by(Job.id.desc()).limit(1))
        if series.status == SeriesStatus.RECEIVING.value:
            out.append(Decision(f, BackfillSeriesStatus.SKIPPED, "being received now; its job follows"))
        elif job is None:
            out.append(
                Decision(
                    f, BackfillSeriesStatus.SKIPPED, f"stored here, not analysed: {series.reason or series.status}"
                )
            )
        elif job.status in {st.value for st in ACTIVE_JOB_STATUSES}:
            out.append(Decision(f, BackfillSeriesStatus.SKIPPED, f"job {job.id} is {job.status}"))
        elif not force:
            out.append(Decision(f, BackfillSeriesStatus.SKIPPED, f"already analysed here (job {job.id} {job.status})"))
        elif series.purged_at is None:
            out.append(Decision(f, BackfillSeriesStatus.REQUEUED, f"analysed again (job {job.id})", job.id))
        else:
            # Its images are gone: retrieved again, the series re-opens and gets a new job.
            out.append(Decision(f, BackfillSeriesStatus.PLANNED, "images purged here: retrieved again"))
    return out


def plan(db: Database, backfill_id: int, decisions: Sequence[Decision]) -> dict[str, int]:
    """Write the series rows (those a previous run wrote are kept as they are), run again the jobs
    of forced series, and make the backfill ``retrieving``; counts by status."""
    requeue: list[int] = []
    with db.session() as s:
        known = set(s.scalars(select(BackfillSeries.series_uid).where(BackfillSeries.backfill_id == backfill_id)))
        for d in decisions:
            if d.found.series_uid in known:
                continue
            known.add(d.found.series_uid)
            f = d.found
            s.add(
                BackfillSeries(
                    backfill_id=backfill_id,
                    study_uid=f.study_uid,
                    series_uid=f.series_uid,
                    accession_number=f.accession_number[:64],
                    study_date=f.study_date[:8],
                    modality=f.modality[:16],
                    series_description=f.series_description[:64],
                    instances=f.instances,
                    status=d.status.value,
                    reason=d.reason,
                    retrieved_instances=0,
                )
            )
            if d.job_id is not None:
                requeue.append(d.job_id)
                s.execute(
                    update(Job)
                    .where(Job.id == d.job_id)
                    .values(priority=int(LOW_BACKFILL), priority_reason=f"backfill {backfill_id} (forced)")
                )
        s.execute(update(Backfill).where(Backfill.id == backfill_id).values(status=BackfillStatus.RETRIEVING.value))
    for job_id in requeue:
        analyses.requeue(db, job_id, reason=f"backfill {backfill_id} --force")
    return counts(db, backfill_id)


def counts(db: Database, backfill_id: int) -> dict[str, int]:
    with db.engine.connect() as conn:
        rows = conn.execute(
            select(BackfillSeries.status, func.count())
            .where(BackfillSeries.backfill_id == backfill_id)
            .group_by(BackfillSeries.status)
        ).all()
    return {str(status): int(n) for status, n in rows}


def to_retrieve(db: Database, backfill_id: int) -> list[tuple[int, str, str]]:
    """(row id, study uid, series uid) of the series still to retrieve, study by study."""
    with db.engine.connect() as conn:
        rows = conn.execute(
            select(BackfillSeries.id, BackfillSeries.study_uid, BackfillSeries.series_uid)
            .where(
                BackfillSeries.backfill_id == backfill_id,
                BackfillSeries.status.in_([BackfillSeriesStatus.PLANNED.value, BackfillSeriesStatus.RETRIEVING.value]),
            )
            .order_by(BackfillSeries.study_date, BackfillSeries.study_uid, BackfillSeries.id)
        ).all()
    return [(int(r[0]), str(r[1]), str(r[2])) for r in rows]


def mark(
    db: Database, row_id: int, status: BackfillSeriesStatus, *, reason: str = "", retrieved: int | None = None
) -> None:
    values: dict[str, Any] = {"status": status.value, "reason": reason}
    if retrieved is not None:
        values["retrieved_instances"] = retrieved
    if status is BackfillSeriesStatus.RETRIEVED:
        values["retrieved_at"] = utcnow()
    with db.session() as s:
        s.execute(update(BackfillSeries).where(BackfillSeries.id == row_id).values(**values))


def finish(db: Database, backfill_id: int, status: BackfillStatus, reason: str = "") -> None:
    with db.session() as s:
        s.execute(
            update(Backfill)
            .where(Backfill.id == backfill_id)
            .values(status=status.value, reason=reason, finished_at=utcnow())
        )


def progress(db: Database, backfill_id: int) -> dict[str, Any]:
    """A backfill and its series: counts by status, and of the series it brought (retrieved or run
    again) how many are analysed (their latest job done or failed), waiting or running."""
    backfill = get(db, backfill_id)
    latest = select(Job.series_id, func.max(Job.id).label("job_id")).group_by(Job.series_id).subquery()
    with db.engine.connect() as conn:
        rows = conn.execute(
            select(BackfillSeries.status, Job.status)
            .select_from(BackfillSeries)
            .outerjoin(Series, Series.series_uid == BackfillSeries.series_uid)
            .outerjoin(latest, latest.c.series_id == Series.id)
            .outerjoin(Job, Job.id == latest.c.job_id)
            .where(BackfillSeries.backfill_id == backfill_id)
        ).all()
    by_status: dict[str, int] = {}
    brought = analysed = failed = 0
    for series_status, job_status in rows:
        by_status[series_status] = by_status.get(series_status, 0) + 1
        if series_status in (BackfillSeriesStatus.RETRIEVED.value, BackfillSeriesStatus.REQUEUED.value):
            brought += 1
            if job_status == JobStatus.DONE.value:
                analysed += 1
            elif job_status == JobStatus.FAILED.value:
                failed += 1
    to_get = by_status.get(BackfillSeriesStatus.PLANNED.value, 0) + by_status.get(
        BackfillSeriesStatus.RETRIEVING.value, 0
    )
    return {
        **backfill,
        "series": by_status,
        "series_found": len(rows),
        "to_retrieve": to_get,
        "brought": brought,
        "analysed": analysed,
        "analysis_failed": failed,
    }


def backfills(db: Database, limit: int = 50) -> list[dict[str, Any]]:
    with db.engine.connect() as conn:
        ids = conn.scalars(select(Backfill.id).order_by(Backfill.id.desc()).limit(limit)).all()
    return [progress(db, int(i)) for i in ids]


def series_rows(db: Database, backfill_id: int) -> list[dict[str, Any]]:
    with db.engine.connect() as conn:
        rows = conn.execute(
            select(BackfillSeries).where(BackfillSeries.backfill_id == backfill_id).order_by(BackfillSeries.id)
        ).all()
    return [{k: (v.isoformat() if isinstance(v, dt.datetime) else v) for k, v in row._mapping.items()} for row in rows]


def backfill_priority(s: Session, series_uid: str) -> tuple[Priority, str] | None:
    """Low priority and why, for a series a backfill is bringing in; None for any other."""
    backfill_id = s.scalar(
        select(BackfillSeries.backfill_id)
        .where(
            BackfillSeries.series_uid == series_uid,
            BackfillSeries.status.in_([st.value for st in BACKFILL_INCOMING]),
        )
        .order_by(BackfillSeries.id.desc())
        .limit(1)
    )
    return None if backfill_id is None else (LOW_BACKFILL, f"backfill {backfill_id}")


def local_ae_filter(s: Session, title: str) -> SeriesFilter:
    ae = s.scalar(select(LocalAE).where(LocalAE.title == title))
    if ae is None:
        raise NotFound(f"local AE {title} does not exist (dicom-node ae list shows them)")
    return SeriesFilter.from_json(ae.filters)
