"""Series completion: a series is complete when nothing new has arrived for its AE's quiet period,
or its maximum wait has passed since it (re-)opened. Association release is not the rule: PACS
split series over associations and some send one image per association.

Completion writes the job and its outbox message in the same transaction as the status change, so
a crash can not complete a series without queueing its analysis, or queue one twice.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

from sqlalchemy import select

from dicom_node.db import Database
from dicom_node.db.models import Job, LocalAE, Series
from dicom_node.db.times import as_utc, utcnow
from dicom_node.jobs.filters import SeriesFacts, SeriesFilter, evaluate
from dicom_node.jobs.outbox import ANALYSE_TOPIC, write_message
from dicom_node.jobs.states import WAITING_JOB_STATUSES, JobStatus, SeriesStatus
from dicom_node.settings import CompletionSettings

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Completed:
    series_id: int
    series_uid: str
    analysed: bool
    reason: str
    job_id: int | None


class Completion:
    """Completes the series that are due. The defaults apply to series whose local AE is gone
    (a local AE always has its own quiet period and maximum wait)."""

    def __init__(self, db: Database, defaults: CompletionSettings, *, resumed_at: dt.datetime | None = None) -> None:
        self.db = db
        self.default_quiet = defaults.default_quiet_seconds
        self.default_max_wait = defaults.default_max_wait_seconds
        # When the listeners (re)started: the quiet period of every open series counts from then
        # at the earliest, so a series that was arriving when the node stopped or crashed is not
        # completed by the downtime, only by a quiet period with the listeners up (resume()).
        self.resumed_at = resumed_at
        self.held = False

    def hold(self) -> None:
        """Complete nothing until resume(): the listeners are not up yet."""
        self.held = True

    def resume(self, now: dt.datetime | None = None) -> None:
        """The listeners are (back) up: every open series' quiet period starts again now."""
        self.resumed_at = now or utcnow()
        self.held = False

    def due(self, now: dt.datetime) -> list[tuple[int, dt.datetime]]:
        """(series id, last_received_at) of receiving series whose quiet period or maximum wait
        has passed, neither counting time before :attr:`resumed_at` as quiet."""
        if self.held:
            return []
        with self.db.engine.connect() as conn:
            rows = conn.execute(
                select(
                    Series.id,
                    Series.last_received_at,
                    Series.opened_at,
                    LocalAE.quiet_seconds,
                    LocalAE.max_wait_seconds,
                )
                .outerjoin(LocalAE, LocalAE.id == Series.local_ae_id)
                .where(Series.status == SeriesStatus.RECEIVING.value)
            ).all()
        out = []
        resumed = self.resumed_at
        for series_id, last, opened, quiet_seconds, max_wait_seconds in rows:
            quiet = dt.timedelta(seconds=self.default_quiet if quiet_seconds is None else quiet_seconds)
            max_wait = dt.timedelta(seconds=self.default_max_wait if max_wait_seconds is None else max_wait_seconds)
            quiet_since = as_utc(last) if resumed is None else max(as_utc(last), resumed)
            if resumed is not None and now - resumed < quiet:
                continue  # not even one quiet period with the listeners up
            if now - quiet_since >= quiet or now - as_utc(opened) >= max_wait:
                out.append((series_id, last))
        return out

    def complete(self, series_id: int, seen_last: dt.datetime, now: dt.datetime) -> Completed | None:
        """Complete one series unless an instance arrived since ``seen_last``."""
        with self.db.session() as s:
            series = s.get(Series, series_id, with_for_update=self.db.locks_rows)
            if (
                series is None
                or series.status != SeriesStatus.RECEIVING.value
                or as_utc(series.last_received_at) != as_utc(seen_last)
            ):
                return None
            ae = s.get(LocalAE, series.local_ae_id) if series.local_ae_id is not None else None
            rule = SeriesFilter.from_json(ae.filters if ae is not None else None)
            facts = SeriesFacts(
                modality=series.modality,
                body_part=series.body_part,
                series_description=series.series_description,
                slices=series.frames or series.instances,
                image_type=tuple(v for v in series.image_type.split("\\") if v),
            )
            analyse, reason = evaluate(rule, facts)
            series.completed_at = now
            job_id = None
            if not analyse:
                series.status = SeriesStatus.NOT_ANALYSED.value
                series.reason = reason
                log.info(
                    "series complete: %d image(s) from %s, not analysed: %s (series %s)",
                    series.instances,
                    series.calling_ae or "?",
                    reason,
                    series.series_uid,
                )
            else:
                series.status = SeriesStatus.COMPLETE.value
                series.reason = ""
                waiting = s.scalar(
                    select(Job.id).where(
                        Job.series_id == series.id, Job.status.in_([st.value for st in WAITING_JOB_STATUSES])
                    )
                )
                if waiting is not None:
                    # Never a second job while one has not started: it will read the series as it is now.
                    job_id = waiting
                else:
                    job = Job(series_id=series.id, generation=series.generation, status=JobStatus.PENDING.value)
                    s.add(job)
                    s.flush()
                    write_message(s, ANALYSE_TOPIC, job.id, series_uid=series.series_uid)
                    job_id = job.id
                log.info(
                    "series complete: %d image(s) from %s, job %s queued (series %s)",
                    series.instances,
                    series.calling_ae or "?",
                    job_id,
                    series.series_uid,
                )
            return Completed(series.id, series.series_uid, analyse, reason, job_id)

    def run_once(self, now: dt.datetime | None = None) -> list[Completed]:
        now = now or utcnow()
        done = []
        for series_id, last in self.due(now):
            result = self.complete(series_id, last, now)
            if result is not None:
                done.append(result)
        return done
