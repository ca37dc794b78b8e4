"""What triage does, measured from the database: the radiologists' agreement with the node, the time
from a study's last image to its notification, the studies waiting.

- Agreement: from the verdicts (dicom_node.triage.worklist), per week (ISO weeks of the verdict)
  and class: the confusion table of the node's decision against the true class the radiologist
  gave, the positive predictive value of each class (of the results the node called that class,
  the share the radiologist agreed with) and the agreement overall.
- Latency: last image of the series to the notification's acknowledgement by its endpoint
  (p50, p95), per week of delivery.
- Waiting: finished results not yet acknowledged, and jobs not yet run, by priority.

:func:`check_agreement` raises a warning event when the agreement over the last
``triage.agreement_window_days`` falls below ``triage.agreement_warning_below`` (with at least
``agreement_min_verdicts`` verdicts), once until it is back above. :func:`charts` draws the page's
plots (matplotlib, PNG).
"""

from __future__ import annotations

import datetime as dt
import io
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from sqlalchemy import func, select

from dicom_node.db import Database
from dicom_node.db.models import Event, Job, Notification, Review, Series
from dicom_node.db.times import as_utc, utcnow
from dicom_node.jobs.states import JobStatus, NotificationStatus
from dicom_node.settings import TriageSettings
from dicom_node.triage.priority import LEVELS, Priority
from model.contract.notice import NOT_FOR_CLINICAL_USE

CLASSES = ("covid", "cap", "normal")
EVENT_CATEGORY = "triage"


def week_of(value: dt.datetime) -> str:
    year, week, _ = as_utc(value).isocalendar()
    return f"{year}-W{week:02d}"


def percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


@dataclass(frozen=True)
class Verdict:
    at: dt.datetime
    decision: str  # the node's
    true_class: str  # the radiologist's


def verdicts(db: Database, since: dt.datetime | None = None) -> list[Verdict]:
    with db.engine.connect() as conn:
        query = select(Review.verdict_at, Job.decision, Review.true_class).join(Job, Job.id == Review.job_id)
        query = query.where(Review.verdict_at.is_not(None))
        if since is not None:
            query = query.where(Review.verdict_at >= since)
        return [Verdict(as_utc(at), d, t) for at, d, t in conn.execute(query).all() if at is not None]


def agreement_table(rows: list[Verdict]) -> dict[str, Any]:
    """Confusion table (decision -> true class -> count), PPV per class, agreement overall."""
    confusion = {d: {t: 0 for t in CLASSES} for d in CLASSES}
    for v in rows:
        if v.decision in confusion and v.true_class in CLASSES:
            confusion[v.decision][v.true_class] += 1
    ppv: dict[str, float | None] = {}
    for d in CLASSES:
        called = sum(confusion[d].values())
        ppv[d] = confusion[d][d] / called if called else None
    judged = sum(sum(r.values()) for r in confusion.values())
    agreed = sum(confusion[c][c] for c in CLASSES)
    return {
        "verdicts": judged,
        "agreement": agreed / judged if judged else None,
        "ppv": ppv,
        "confusion": confusion,
    }


def latencies(db: Database, since: dt.datetime | None = None) -> list[tuple[dt.datetime, float]]:
    """(delivered at, seconds from the series' last image to the acknowledgement) per delivered
    notification."""
    with db.engine.connect() as conn:
        query = (
            select(Notification.delivered_at, Series.last_received_at)
            .join(Job, Job.id == Notification.job_id)
            .join(Series, Series.id == Job.series_id)
            .where(Notification.status == NotificationStatus.DONE.value, Notification.delivered_at.is_not(None))
        )
        if since is not None:
            query = query.where(Notification.delivered_at >= since)
        out = []
        for delivered, last in conn.execute(query).all():
            if delivered is not None and last is not None:
                out.append((as_utc(delivered), max(0.0, (as_utc(delivered) - as_utc(last)).total_seconds())))
        return out


def waiting(db: Database) -> dict[str, dict[str, int]]:
    """Per priority: results not acknowledged yet (``unread``) and jobs not run yet (``queued``)."""
    with db.engine.connect() as conn:
        newest = select(func.max(Job.id)).group_by(Job.series_id).scalar_subquery()
        unread = dict(
            conn.execute(
                select(Job.priority, func.count())
                .outerjoin(Review, Review.job_id == Job.id)
                .where(
                    Job.id.in_(newest),
                    Job.status.in_([JobStatus.DONE.value, JobStatus.FAILED.value]),
                    Review.acknowledged_at.is_(None),
                )
                .group_by(Job.priority)
            ).all()
        )
        queued = dict(
            conn.execute(
                select(Job.priority, func.count())
                .where(Job.status.in_([JobStatus.PENDING.value, JobStatus.QUEUED.value, JobStatus.RUNNING.value]))
                .group_by(Job.priority)
            ).all()
        )
    return {
        p.label: {"unread": int(unread.get(int(p), 0)), "queued": int(queued.get(int(p), 0))}
        for p in sorted(Priority, reverse=True)
    }


def stats(db: Database, *, weeks: int = 12, now: dt.datetime | None = None) -> dict[str, Any]:
    """Everything the monitoring page, its charts and the API show."""
    now = now or utcnow()
    since = now - dt.timedelta(weeks=weeks)
    rows = verdicts(db, since)
    by_week: dict[str, list[Verdict]] = defaultdict(list)
    for v in rows:
        by_week[week_of(v.at)].append(v)
    delays = latencies(db, since)
    delay_weeks: dict[str, list[float]] = defaultdict(list)
    for at, seconds in delays:
        delay_weeks[week_of(at)].append(seconds)
    all_delays = [s for _, s in delays]
    return {
        "since": since.isoformat(),
        "overall": agreement_table(rows),
        "weeks": {w: agreement_table(by_week[w]) for w in sorted(by_week)},
        "latency": {
            "count": len(all_delays),
            "p50_seconds": percentile(all_delays, 50),
            "p95_seconds": percentile(all_delays, 95),
            "weeks": {
                w: {"count": len(v), "p50_seconds": percentile(v, 50), "p95_seconds": percentile(v, 95)}
                for w, v in sorted(delay_weeks.items())
            },
        },
        "waiting": waiting(db),
        "notice": NOT_FOR_CLINICAL_USE,
    }


def check_agreement(db: Database, settings: TriageSettings, *, now: dt.datetime | None = None) -> str | None:
    """A warning event when the agreement over the window falls below the setting, and an info
    event when it is back; None when nothing changed. Returns the event's message."""
    now = now or utcnow()
    table = agreement_table(verdicts(db, now - dt.timedelta(days=settings.agreement_window_days)))
    low = (
        table["agreement"] is not None
        and table["verdicts"] >= settings.agreement_min_verdicts
        and table["agreement"] < settings.agreement_warning_below
    )
    with db.session() as s:
        last = s.scalar(select(Event.level).where(Event.category == EVENT_CATEGORY).order_by(Event.id.desc()).limit(1))
        was_low = last == "warning"
        if low == was_low:
            return None
        if low:
            message = (
                f"radiologists agreed with {table['agreement']:.0%} of {table['verdicts']} result(s) in the last "
                f"{settings.agreement_window_days} days, below {settings.agreement_warning_below:.0%}: check the model "
                "and the studies it gets"
            )
        else:
            message = f"radiologists' agreement is back at {table['agreement']:.0%} of {table['verdicts']} result(s)"
        s.add(Event(level="warning" if low else "info", category=EVENT_CATEGORY, message=message))
    return message


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=96, bbox_inches="tight")
    return buffer.getvalue()


CHARTS = ("agreement", "latency", "waiting", "confusion")


def chart(name: str, data: dict[str, Any]) -> bytes:
    """One of :data:`CHARTS` as PNG, from :func:`stats`."""
    # A Figure of its own (no pyplot state): charts are drawn in the admin app's threads.
    fig = Figure(figsize=(6.4, 3.2))
    ax = fig.subplots()
    if name == "agreement":
        weeks = list(data["weeks"])
        for cls, marker in zip(CLASSES, "os^"):
            values = [data["weeks"][w]["ppv"][cls] for w in weeks]
            ax.plot(weeks, [np.nan if v is None else v for v in values], marker=marker, label=f"PPV {cls}")
        ax.plot(weeks, [data["weeks"][w]["agreement"] or np.nan for w in weeks], "k--", label="agreement")
        ax.set_ylim(0, 1.05)
        ax.set_ylabel("share of verdicts")
        ax.set_title("Agreement with radiologists per week")
    elif name == "latency":
        weeks = list(data["latency"]["weeks"])
        for key, label in (("p50_seconds", "p50"), ("p95_seconds", "p95")):
            ax.plot(weeks, [data["latency"]["weeks"][w][key] for w in weeks], marker="o", label=label)
        ax.set_ylabel("seconds")
        ax.set_title("Last image to notification delivered")
    elif name == "waiting":
        levels = list(LEVELS)
        x = np.arange(len(levels))
        ax.bar(x - 0.2, [data["waiting"][p]["unread"] for p in levels], 0.4, label="results not acknowledged")
        ax.bar(x + 0.2, [data["waiting"][p]["queued"] for p in levels], 0.4, label="not analysed yet")
        ax.set_xticks(x, levels)
        ax.set_ylabel("studies")
        ax.set_title("Studies waiting, by priority")
    elif name == "confusion":
        matrix = np.array([[data["overall"]["confusion"][d][t] for t in CLASSES] for d in CLASSES])
        ax.imshow(matrix, cmap="Blues")
        ax.set_xticks(range(3), CLASSES)
        ax.set_yticks(range(3), CLASSES)
        ax.set_xlabel("radiologist")
        ax.set_ylabel("node")
        for i in range(3):
            for j in range(3):
                ax.text(j, i, str(matrix[i, j]), ha="center", va="center")
        ax.set_title("Verdicts: node against radiologist")
    else:
        raise ValueError(f"no chart {name!r}; one of {', '.join(CHARTS)}")
    if name != "confusion" and ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize="small")
    ax.tick_params(axis="x", labelrotation=30 if name in ("agreement", "latency") else 0)
    fig.text(0.99, 0.01, NOT_FOR_CLINICAL_USE, ha="right", va="bottom", fontsize="x-small", color="grey")
    return _png(fig)
