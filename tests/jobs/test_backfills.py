"""The states of a backfill (dicom_node.jobs.backfills) and the waits of its runner
(dicom_node.pipeline.backfill), on SQLite and PostgreSQL.

Covers: what a backfill does with each series found (the AE's filters, a series already here:
arriving, not analysed, queued, analysed; --force runs an analysed one's job again at low
priority), planning is idempotent (a resumed query keeps the rows written), a series a backfill
brings completes with a low-priority job naming the backfill while a live series keeps the rules'
priority; the daily window (wrapping past midnight), the rate and the dates as given. The network
side (Orthanc as the source) is tests/integration/test_backfill.py.
"""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import select

from dicom_node.db import Database
from dicom_node.db.models import Job, Series
from dicom_node.errors import Refused
from dicom_node.jobs import backfills
from dicom_node.jobs.completion import Completion
from dicom_node.jobs.filters import SeriesFilter
from dicom_node.jobs.states import BackfillSeriesStatus, JobStatus
from dicom_node.pipeline.backfill import parse_date, parse_rate, parse_window, seconds_until_window
from dicom_node.sending.retrieve import FoundSeries
from dicom_node.settings import CompletionSettings
from dicom_node.storage.index import Index
from tests.jobs.test_completion import T0, item


def _backfill(db: Database, force: bool = False) -> int:
    return backfills.create(db, source="PACS", method="move", local_ae="COVIDNODE", force=force, date_from="2026")


def _complete(db: Database, ae_id: int, series: str) -> int:
    index = Index(db)
    for n in range(3):
        index.record(item(ae_id, n, series=series), now=T0)
    done = Completion(db, CompletionSettings()).run_once(T0 + dt.timedelta(seconds=10))
    assert done and done[0].job_id is not None
    return done[0].job_id


def test_decisions_skip_what_the_node_has_and_what_the_filters_refuse(db: Database, ae_id: int) -> None:
    queued = _complete(db, ae_id, "1.2.3.10")
    analysed = _complete(db, ae_id, "1.2.3.11")
    with db.session() as s:
        s.get(Job, analysed).status = JobStatus.DONE.value  # type: ignore[union-attr]
    found = [
        FoundSeries("1.2.3", "1.2.3.9", modality="CT", instances=100),
        FoundSeries("1.2.3", "1.2.3.10", modality="CT", instances=3),
        FoundSeries("1.2.3", "1.2.3.11", modality="CT", instances=3),
        FoundSeries("1.2.3", "1.2.3.12", modality="MR", instances=30),
        FoundSeries("1.2.3", "1.2.3.13", modality="CT", instances=2),
    ]
    rule = SeriesFilter.from_json({"modalities": ["CT"], "min_slices": 3})
    with db.session() as s:
        plain = {d.found.series_uid: d for d in backfills.decide(s, found, rule, force=False)}
        forced = {d.found.series_uid: d for d in backfills.decide(s, found, rule, force=True)}
    assert plain["1.2.3.9"].status is BackfillSeriesStatus.PLANNED
    assert (
        plain["1.2.3.10"].status is BackfillSeriesStatus.SKIPPED
        and f"job {queued} is pending" in plain["1.2.3.10"].reason
    )
    assert plain["1.2.3.11"].status is BackfillSeriesStatus.SKIPPED and "already analysed" in plain["1.2.3.11"].reason
    assert plain["1.2.3.12"].status is BackfillSeriesStatus.SKIPPED and "modality MR" in plain["1.2.3.12"].reason
    assert plain["1.2.3.13"].status is BackfillSeriesStatus.SKIPPED and "fewer than" in plain["1.2.3.13"].reason
    assert forced["1.2.3.10"].status is BackfillSeriesStatus.SKIPPED  # running or waiting: never twice
    assert forced["1.2.3.11"].status is BackfillSeriesStatus.REQUEUED and forced["1.2.3.11"].job_id == analysed

    backfill_id = _backfill(db, force=True)
    assert backfills.plan(db, backfill_id, list(forced.values())) == {"planned": 1, "requeued": 1, "skipped": 3}
    # Planned again (a query resumed): the rows stay as they were.
    assert backfills.plan(db, backfill_id, list(plain.values())) == {"planned": 1, "requeued": 1, "skipped": 3}
    with db.session() as s:
        job = s.get(Job, analysed)
        assert job is not None and job.status == JobStatus.PENDING.value and job.priority == 0
    assert [r[2] for r in backfills.to_retrieve(db, backfill_id)] == ["1.2.3.9"]


def test_a_backfilled_series_gets_a_low_priority_job_and_a_live_one_does_not(db: Database, ae_id: int) -> None:
    backfill_id = _backfill(db)
    backfills.plan(
        db, backfill_id, [backfills.Decision(FoundSeries("1.2.3", "1.2.3.20"), BackfillSeriesStatus.PLANNED)]
    )
    row_id = backfills.to_retrieve(db, backfill_id)[0][0]
    backfills.mark(db, row_id, BackfillSeriesStatus.RETRIEVED, retrieved=3)
    backfilled = _complete(db, ae_id, "1.2.3.20")
    live = _complete(db, ae_id, "1.2.3.21")
    with db.session() as s:
        jobs = {j.id: j for j in s.scalars(select(Job))}
        assert (jobs[backfilled].priority, jobs[backfilled].priority_reason) == (0, f"backfill {backfill_id}")
        assert jobs[live].priority == 1
        assert s.scalar(select(Series.status).where(Series.series_uid == "1.2.3.20")) == "complete"
    state = backfills.progress(db, backfill_id)
    assert (state["brought"], state["analysed"], state["series"]) == (1, 0, {"retrieved": 1})


def test_window_rate_and_dates() -> None:
    at = dt.datetime(2026, 12, 5, 12, 0)
    assert seconds_until_window("", at) == 0
    assert seconds_until_window("19:00-07:00", at) == 7 * 3600
    assert seconds_until_window("19:00-07:00", at.replace(hour=23)) == 0
    assert seconds_until_window("19:00-07:00", at.replace(hour=3)) == 0
    assert seconds_until_window("08:00-10:00", at) == 20 * 3600
    assert seconds_until_window("08:00-13:00", at) == 0
    assert parse_window("19:00-07:00") == "19:00-07:00"
    assert parse_rate("30/h") == 30 and parse_rate("12") == 12
    assert parse_date("from", "2026-11-01") == "20261101" and parse_date("to", "20261130") == "20261130"
    for bad in (lambda: parse_window("7-19"), lambda: parse_rate("fast"), lambda: parse_date("from", "1/11/2026")):
        with pytest.raises(Refused):
            bad()
