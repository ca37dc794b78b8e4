"""/metrics in the Prometheus text format.

The node's work happens in several processes (listeners, completion, workers), so its numbers are
read from the database when Prometheus scrapes, not counted in memory: instances received, series
completed, jobs and exports by state, queue depth, inference and export durations, export
failures, the disk and what retention purged and pruned. This process adds its own: admin
requests and logins, and the usual process metrics.
Each app has its own registry (no module-level global).
"""

from __future__ import annotations

import datetime as dt
from typing import Iterable, Iterator, Sequence

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import func, select

from dicom_node.db import Database
from dicom_node.db.models import Export, Job, Notification, OutboxMessage, Series
from dicom_node.jobs.states import ExportStatus, JobStatus, NotificationStatus, SeriesStatus
from dicom_node.settings import Settings
from dicom_node.storage.retention import (
    AUDIT_PRUNED,
    BYTES_PURGED,
    EVENTS_PRUNED,
    RESULTS_PURGED,
    SERIES_PURGED,
    Retention,
)
from dicom_node.triage import monitoring

# Job.timings key the worker writes for running the model (seconds).
INFERENCE_TIMING = "inference"
DURATION_BUCKETS: tuple[float, ...] = (0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600)


def histogram_buckets(
    values: Iterable[float], bounds: Sequence[float] = DURATION_BUCKETS
) -> tuple[list[tuple[str, float]], float]:
    """Cumulative Prometheus buckets (with +Inf) and the sum of ``values``."""
    values = sorted(float(v) for v in values)
    buckets = [(str(float(b)), float(sum(1 for v in values if v <= b))) for b in bounds]
    buckets.append(("+Inf", float(len(values))))
    return buckets, float(sum(values))


def _seconds(later: dt.datetime | None, earlier: dt.datetime | None) -> float | None:
    if later is None or earlier is None:
        return None
    return max(0.0, (later.replace(tzinfo=None) - earlier.replace(tzinfo=None)).total_seconds())


class DatabaseCollector(Collector):
    """Reads the node's state from the database at every scrape."""

    def __init__(self, db: Database, settings: Settings | None = None) -> None:
        self.db = db
        self.settings = settings

    def collect(self) -> Iterator[Metric]:
        yield from self._retention()
        with self.db.engine.connect() as conn:
            # Counted on the series: retention deletes the instance rows of the series it purges.
            instances = conn.execute(select(func.coalesce(func.sum(Series.instances), 0))).scalar_one()
            series_by_status = dict(conn.execute(select(Series.status, func.count()).group_by(Series.status)).all())
            completed = conn.execute(
                select(func.count()).select_from(Series).where(Series.completed_at.is_not(None))
            ).scalar_one()
            jobs_by_status = dict(conn.execute(select(Job.status, func.count()).group_by(Job.status)).all())
            outbox = conn.execute(
                select(func.count()).select_from(OutboxMessage).where(OutboxMessage.dispatched_at.is_(None))
            ).scalar_one()
            exports_by_status = dict(conn.execute(select(Export.status, func.count()).group_by(Export.status)).all())
            failures = conn.execute(
                select(Export.title, func.count())
                .where(Export.status == ExportStatus.FAILED.value)
                .group_by(Export.title)
            ).all()
            timings = conn.execute(select(Job.timings).where(Job.status == JobStatus.DONE.value)).scalars().all()
            export_spans = conn.execute(
                select(Export.created_at, Export.finished_at).where(Export.status == ExportStatus.DONE.value)
            ).all()

        yield CounterMetricFamily(
            "dicom_node_instances_received", "DICOM instances received and stored", value=instances
        )
        yield CounterMetricFamily(
            "dicom_node_series_completed",
            "Series whose completion was reached (quiet period or maximum wait)",
            value=completed,
        )
        series = GaugeMetricFamily("dicom_node_series", "Series by status", labels=["status"])
        for status in SeriesStatus:
            series.add_metric([status.value], series_by_status.get(status.value, 0))
        yield series
        jobs = GaugeMetricFamily("dicom_node_jobs", "Analysis jobs by state", labels=["state"])
        for job_status in JobStatus:
            jobs.add_metric([job_status.value], jobs_by_status.get(job_status.value, 0))
        yield jobs
        waiting = jobs_by_status.get(JobStatus.PENDING.value, 0) + jobs_by_status.get(JobStatus.QUEUED.value, 0)
        yield GaugeMetricFamily(
            "dicom_node_queue_depth", "Jobs waiting for a worker (pending or queued)", value=waiting
        )
        yield GaugeMetricFamily(
            "dicom_node_outbox_pending", "Outbox messages not yet handed to the broker", value=outbox
        )
        exports = GaugeMetricFamily(
            "dicom_node_exports", "Exports (one job to one destination) by state", labels=["state"]
        )
        for export_status in ExportStatus:
            exports.add_metric([export_status.value], exports_by_status.get(export_status.value, 0))
        yield exports
        failed = CounterMetricFamily(
            "dicom_node_export_failures", "Exports that failed for good, per destination", labels=["destination"]
        )
        for title, count in failures:
            failed.add_metric([title], count)
        yield failed

        inference = [
            float(t[INFERENCE_TIMING])
            for t in timings
            if isinstance(t, dict) and isinstance(t.get(INFERENCE_TIMING), (int, float))
        ]
        buckets, total = histogram_buckets(inference)
        yield HistogramMetricFamily(
            "dicom_node_inference_seconds", "Model run time of finished jobs", buckets=buckets, sum_value=total
        )
        spans = [s for s in (_seconds(done, created) for created, done in export_spans) if s is not None]
        buckets, total = histogram_buckets(spans)
        yield HistogramMetricFamily(
            "dicom_node_export_seconds",
            "Time from an export's creation to its success (retries included)",
            buckets=buckets,
            sum_value=total,
        )

    def _retention(self) -> Iterator[Metric]:
        """The disk and what retention removed (dicom_node.storage.retention)."""
        if self.settings is None:
            return
        usage = Retention(self.db, self.settings).usage()
        counts = usage.counters
        yield GaugeMetricFamily("dicom_node_disk_total_bytes", "Size of the data dir's file system", usage.disk.total)
        yield GaugeMetricFamily(
            "dicom_node_disk_free_bytes", "Free space on the data dir's file system", usage.disk.free
        )
        yield GaugeMetricFamily(
            "dicom_node_received_bytes_per_day", "Bytes of instances received a day (last 7 days)", usage.bytes_per_day
        )
        if usage.days_left is not None:
            yield GaugeMetricFamily(
                "dicom_node_disk_days_left",
                "Days before the free space reaches listener.min_free_disk_mb at that rate, without purging",
                usage.days_left,
            )
        yield CounterMetricFamily(
            "dicom_node_series_purged", "Series whose images retention purged", counts[SERIES_PURGED]
        )
        yield CounterMetricFamily("dicom_node_purged_bytes", "Bytes of images retention purged", counts[BYTES_PURGED])
        yield CounterMetricFamily(
            "dicom_node_results_purged", "Jobs whose result folders retention removed", counts[RESULTS_PURGED]
        )
        pruned = CounterMetricFamily("dicom_node_rows_pruned", "Rows deleted past their retention", labels=["table"])
        pruned.add_metric(["events"], counts[EVENTS_PRUNED])
        pruned.add_metric(["audit_log"], counts[AUDIT_PRUNED])
        yield pruned


class TriageCollector(Collector):
    """Triage from the database at every scrape (dicom_node.triage.monitoring): studies waiting by
    priority, notifications by state, the time from the last image to a notification delivered,
    and the radiologists' agreement and positive predictive values over the last four weeks."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def collect(self) -> Iterator[Metric]:
        data = monitoring.stats(self.db, weeks=4)
        with self.db.engine.connect() as conn:
            told = dict(conn.execute(select(Notification.status, func.count()).group_by(Notification.status)).all())
        unread = GaugeMetricFamily(
            "dicom_node_triage_waiting", "Studies waiting, by priority and stage", labels=["priority", "stage"]
        )
        for level, counts in data["waiting"].items():
            unread.add_metric([level, "unread"], counts["unread"])
            unread.add_metric([level, "queued"], counts["queued"])
        yield unread
        notes = GaugeMetricFamily("dicom_node_notifications", "Notifications by state", labels=["state"])
        for state in NotificationStatus:
            notes.add_metric([state.value], told.get(state.value, 0))
        yield notes
        latency = GaugeMetricFamily(
            "dicom_node_triage_notification_seconds",
            "Last image to notification delivered, last four weeks",
            labels=["quantile"],
        )
        for q, key in (("0.5", "p50_seconds"), ("0.95", "p95_seconds")):
            if data["latency"][key] is not None:
                latency.add_metric([q], data["latency"][key])
        yield latency
        overall = data["overall"]
        yield GaugeMetricFamily(
            "dicom_node_triage_verdicts", "Radiologists' verdicts, last four weeks", value=overall["verdicts"]
        )
        if overall["agreement"] is not None:
            yield GaugeMetricFamily(
                "dicom_node_triage_agreement_ratio",
                "Share of verdicts agreeing with the node, last four weeks",
                value=overall["agreement"],
            )
        ppv = GaugeMetricFamily(
            "dicom_node_triage_ppv_ratio",
            "Positive predictive value per decision, last four weeks",
            labels=["decision"],
        )
        for cls, value in overall["ppv"].items():
            if value is not None:
                ppv.add_metric([cls], value)
        yield ppv


class AdminMetrics:
    """The registry of one admin app: the database collector and this process's own metrics."""

    def __init__(self, db: Database, settings: Settings | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(DatabaseCollector(db, settings))
        self.registry.register(TriageCollector(db))
        ProcessCollector(registry=self.registry)
        self.requests = Counter(
            "dicom_node_admin_requests", "Admin HTTP requests", ["method", "route", "status"], registry=self.registry
        )
        self.request_seconds = Histogram(
            "dicom_node_admin_request_seconds", "Admin HTTP request duration", ["route"], registry=self.registry
        )
        self.logins = Counter("dicom_node_admin_logins", "Admin login attempts", ["result"], registry=self.registry)

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.request_seconds.labels(route).observe(seconds)

    def exposition(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
