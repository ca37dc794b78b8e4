"""Series completion: a series is complete when nothing new has arrived for its AE's quiet period,
or its maximum wait has passed since it (re-)opened. Association release is not the rule: PACS
split series over associations and some send one image per association.

Completion writes the job and its outbox message in the same transaction as the status change, so
a crash can not complete a series without queueing its analysis, or queue one twice. The job's
priority comes from the priority rules (dicom_node.triage.priority) applied to the series and the
study attributes read from one of its stored instances (dicom_node.triage.study; read before the
transaction, so the write lock is not held for a file read).
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from dicom_node.db import Database
from dicom_node.db.models import Instance, Job, LocalAE, PriorityRule, Series
from dicom_node.db.times import as_utc, utcnow
from dicom_node.jobs.backfills import backfill_priority
from dicom_node.jobs.filters import SeriesFacts, SeriesFilter, evaluate
from dicom_node.jobs.outbox import ANALYSE_TOPIC, write_message
from dicom_node.jobs.states import WAITING_JOB_STATUSES, JobStatus, SeriesStatus
from dicom_node.settings import CompletionSettings
from dicom_node.storage.files import Storage
from dicom_node.triage.priority import (
    STORE_PRIORITY_NAMES,
    Priority,
    PriorityConditions,
    Rule,
    StudyFacts,
    decide,
)
from dicom_node.triage.study import StudyAttributes, read_attributes

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Completed:
    series_id: int
    series_uid: str
    analysed: bool
    reason: str
    job_id: int | None
    priority: int | None = None


class Completion:
    """Completes the series that are due. The defaults apply to series whose local AE is gone
    (a local AE always has its own quiet period and maximum wait)."""

    def __init__(
        self,
        db: Database,
        defaults: CompletionSettings,
        *,
        resumed_at: dt.datetime | None = None,
        storage_dir: Path | None = None,
    ) -> None:
        self.db = db
        # Where the stored instances are, to read the study attributes (None: not read).
        self.storage = Storage(storage_dir) if storage_dir is not None else None
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

    def study_attributes(self, series_id: int) -> StudyAttributes:
        """The study attributes of the series, read from its first stored instance."""
        if self.storage is None:
            return StudyAttributes()
        with self.db.engine.connect() as conn:
            path = conn.scalar(
                select(Instance.path).where(Instance.series_id == series_id).order_by(Instance.id).limit(1)
            )
        return read_attributes(self.storage.absolute(path)) if path else StudyAttributes()

    def complete(
        self,
        series_id: int,
        seen_last: dt.datetime,
        now: dt.datetime,
        study: StudyAttributes | None = None,
    ) -> Completed | None:
        """Complete one series unless an instance arrived since ``seen_last``."""
        study = study or StudyAttributes()
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
            series.patient_name = study.patient_name
            series.accession_number = study.accession_number
            series.study_description = study.study_description
            job_id = None
            priority = None
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
                level, why = _priority(s, series, ae, study)
                priority = int(level)
                if waiting is not None:
                    # Never a second job while one has not started: it will read the series as it is now.
                    job_id = waiting
                else:
                    job = Job(
                        series_id=series.id,
                        generation=series.generation,
                        status=JobStatus.PENDING.value,
                        priority=priority,
                        priority_reason=why[:200],
                    )
                    s.add(job)
                    s.flush()
                    write_message(s, ANALYSE_TOPIC, job.id, series_uid=series.series_uid)
                    job_id = job.id
                log.info(
                    "series complete: %d image(s) from %s, job %s queued at %s priority (series %s)",
                    series.instances,
                    series.calling_ae or "?",
                    job_id,
                    level.label,
                    series.series_uid,
                )
            return Completed(series.id, series.series_uid, analyse, reason, job_id, priority)

    def run_once(self, now: dt.datetime | None = None) -> list[Completed]:
        now = now or utcnow()
        done = []
        for series_id, last in self.due(now):
            result = self.complete(series_id, last, now, self.study_attributes(series_id))
            if result is not None:
                done.append(result)
        return done


def _priority(s: Session, series: Series, ae: LocalAE | None, study: StudyAttributes) -> tuple[Priority, str]:
    """Low for a series a backfill brought (dicom_node.jobs.backfills), so live studies go first;
    otherwise the priority rules (enabled ones) applied to the series."""
    backfilled = backfill_priority(s, series.series_uid)
    if backfilled is not None:
        return backfilled
    rules = [
        Rule(r.name, Priority.parse(r.priority), PriorityConditions.from_json(r.conditions))
        for r in s.scalars(select(PriorityRule).where(PriorityRule.enabled.is_(True)).order_by(PriorityRule.id))
    ]
    facts = StudyFacts(
        calling_ae=series.calling_ae,
        local_ae=ae.title if ae is not None else "",
        requested_procedure_priority=study.requested_procedure_priority,
        store_priority=STORE_PRIORITY_NAMES[series.store_priority]
        if 0 <= series.store_priority < len(STORE_PRIORITY_NAMES)
        else "",
        patient_location=study.patient_location,
        admission_id=study.admission_id,
        study_description=study.study_description,
        series_description=series.series_description,
    )
    return decide(rules, facts)
