"""The work of a backfill (states: dicom_node.jobs.backfills): query the source, plan, retrieve
series by series, within the backfill's rate and daily window.

The source is a destination of the node (dicom_node.configuration): a DIMSE one is queried by
C-FIND and retrieved by C-MOVE to the backfill's local AE (the source sends it to the node's
listener, which must be running: ``serve`` or ``up``) or by C-GET; a DICOMweb one by QIDO-RS and
WADO-RS. Instances that come back on the retrieving association (C-GET, WADO-RS) go through the
listener's own storage path (dicom_node.listener.scp.Receiver: checks, durable write, index), so
series completion and jobs treat them as any received series. Completion (in ``serve``) then makes
their jobs at low priority.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import time
from dataclasses import dataclass
from itertools import groupby
from typing import Any, Callable

from sqlalchemy import select

from dicom_node.db import Database
from dicom_node.db.models import Backfill, Destination, LocalAE, Source
from dicom_node.errors import Invalid, NodeError, NotFound, Refused
from dicom_node.jobs import backfills
from dicom_node.jobs.states import OPEN_BACKFILL_STATUSES, BackfillSeriesStatus, BackfillStatus
from dicom_node.listener.scp import Receiver
from dicom_node.sending.dicomweb import WebPeer
from dicom_node.sending.retrieve import (
    FoundSeries,
    Retrieved,
    StoreFn,
    find_series,
    get_series,
    move_series,
    qido_series,
    wado_series,
)
from dicom_node.sending.scu import Peer
from dicom_node.settings import Settings
from dicom_node.storage.files import Storage
from dicom_node.storage.index import Index, LocalAESnapshot
from dicom_node.validation import DestinationKind

log = logging.getLogger(__name__)

METHODS = ("move", "get", "wado")
_WINDOW = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)-([01]\d|2[0-3]):([0-5]\d)$")
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(?:/\s*h)?\s*$")

# progress(series done, series in all) after each series.
ProgressFn = Callable[[int, int], None]


def parse_date(name: str, value: str) -> str:
    """YYYY-MM-DD or YYYYMMDD as DICOM's YYYYMMDD ("" stays "")."""
    if not value:
        return ""
    for fmt in ("%Y-%m-%d", "%Y%m%d"):
        try:
            return dt.datetime.strptime(value, fmt).strftime("%Y%m%d")
        except ValueError:
            pass
    raise Refused(name, f"{value!r} is not a date (YYYY-MM-DD)")


def parse_rate(value: str) -> float:
    """``N/h`` (or N): studies an hour; 0 = no limit."""
    match = _RATE.match(value or "0")
    if not match:
        raise Refused("rate", f"{value!r} is not N/h (studies an hour, e.g. 30/h)")
    return float(match.group(1))


def parse_window(value: str) -> str:
    """``HH:MM-HH:MM`` (may wrap past midnight: 19:00-07:00); "" = any time."""
    if value and not _WINDOW.match(value):
        raise Refused("between", f"{value!r} is not HH:MM-HH:MM (e.g. 19:00-07:00)")
    return value


def seconds_until_window(window: str, now: dt.datetime) -> float:
    """0 inside the daily window (local time of ``now``), else the seconds until it opens."""
    if not window:
        return 0.0
    start_s, end_s = window.split("-")
    start = dt.time.fromisoformat(start_s)
    end = dt.time.fromisoformat(end_s)
    t = now.time()
    inside = (start <= t < end) if start <= end else (t >= start or t < end)
    if inside:
        return 0.0
    opens = now.replace(hour=start.hour, minute=start.minute, second=0, microsecond=0)
    if opens <= now:
        opens += dt.timedelta(days=1)
    return (opens - now).total_seconds()


@dataclass(frozen=True)
class RetrieveSource:
    """The source as the retrieve functions want it."""

    title: str
    dimse: Peer | None
    web: WebPeer | None


def source_of(db: Database, title: str) -> RetrieveSource:
    with db.session() as s:
        row = s.scalar(select(Destination).where(Destination.title == title))
        if row is None:
            raise NotFound(
                f"no destination {title}: add the source PACS as one (dicom-node ae add-destination {title} ...)"
            )
        if row.kind == DestinationKind.DICOMWEB.value:
            web = WebPeer(
                title=row.title,
                url=row.url,
                auth=row.auth,
                username=row.username,
                password=row.password,
                token=row.token,
                verify_tls=row.verify_tls,
                ca_file=row.ca_file,
            )
            return RetrieveSource(row.title, None, web)
        return RetrieveSource(row.title, Peer(row.title, row.host, row.port, tls=row.tls), None)


def check_method(db: Database, source: RetrieveSource, method: str, local_ae: str) -> None:
    """Refuse a method the source's kind does not have, or a C-MOVE the listener would refuse."""
    if method not in METHODS:
        raise Refused("retrieve", f"{method!r} is not one of {', '.join(METHODS)}")
    if source.web is not None and method != "wado":
        raise Refused("retrieve", f"{source.title} is a DICOMweb destination: its series come by WADO-RS (wado)")
    if source.dimse is not None and method == "wado":
        raise Refused("retrieve", f"{source.title} is a DIMSE destination: move or get")
    with db.session() as s:
        ae = s.scalar(select(LocalAE).where(LocalAE.title == local_ae))
        if ae is None:
            raise NotFound(f"local AE {local_ae} does not exist (dicom-node ae list shows them)")
        if method == "move" and ae.require_known_source:
            known = s.scalar(select(Source.id).where(Source.title == source.title, Source.enabled.is_(True)))
            if known is None:
                raise Refused(
                    "source",
                    f"{local_ae} accepts only known calling AEs and the source's C-STORE sub-operations call as "
                    f"{source.title}: dicom-node ae add-source {source.title} (and the source must know {local_ae} "
                    f"as a move destination at this node's address and port {ae.port})",
                )


def default_local_ae(db: Database) -> str:
    with db.session() as s:
        titles = list(s.scalars(select(LocalAE.title).where(LocalAE.enabled.is_(True)).order_by(LocalAE.id)))
    if len(titles) != 1:
        raise Invalid(
            "name the local AE that receives the backfill with --local-ae "
            f"({', '.join(titles) if titles else 'none exists: dicom-node ae add-local'})"
        )
    return titles[0]


def query(db: Database, settings: Settings, backfill_id: int) -> list[FoundSeries]:
    """The series of the backfill's studies at its source."""
    bf = backfills.get(db, backfill_id)
    return query_with(settings, source_of(db, bf["source"]), bf)


def query_with(settings: Settings, source: RetrieveSource, bf: dict[str, Any]) -> list[FoundSeries]:
    """The series at ``source`` of the studies ``bf`` (a backfill's values) asks for."""
    timeout = settings.export.timeout_seconds
    if source.web is not None:
        return qido_series(
            source.web,
            date_from=bf["date_from"],
            date_to=bf["date_to"],
            modality=bf["modality"],
            accessions=bf["accessions"],
            timeout=timeout,
        )
    assert source.dimse is not None
    return find_series(
        source.dimse,
        calling_ae_title=settings.export.calling_ae_title,
        date_from=bf["date_from"],
        date_to=bf["date_to"],
        modality=bf["modality"],
        accessions=bf["accessions"],
        timeout=timeout,
    )


def decisions(db: Database, settings: Settings, backfill_id: int) -> list[backfills.Decision]:
    bf = backfills.get(db, backfill_id)
    found = query(db, settings, backfill_id)
    with db.session() as s:
        rule = backfills.local_ae_filter(s, bf["local_ae"])
        return backfills.decide(s, found, rule, force=bf["force"])


def _store_fn(db: Database, settings: Settings, local_ae: str, source: RetrieveSource) -> StoreFn:
    """The listener's storage path for the instances a C-GET or WADO-RS brings, as if the source
    had sent them to the local AE (its calling AE: the source's title)."""
    storage = Storage(settings.storage_dir)
    receiver = Receiver(
        storage,
        Index(db),
        min_free_bytes=settings.listener.min_free_disk_mb * 1024 * 1024,
        max_dataset_bytes=settings.listener.max_dataset_bytes,
    )
    with db.session() as s:
        row = s.scalar(select(LocalAE).where(LocalAE.title == local_ae))
        if row is None:
            raise NotFound(f"local AE {local_ae} does not exist")
        snapshot = LocalAESnapshot.of(row)
    host = source.dimse.host if source.dimse is not None else (source.web.url if source.web is not None else "")

    def store(sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str, data: bytes) -> int:
        status, _reason = receiver.store(
            snapshot,
            calling_ae=source.title,
            calling_host=host[:253],
            sop_class_uid=sop_class_uid,
            sop_instance_uid=sop_instance_uid,
            transfer_syntax_uid=transfer_syntax_uid,
            dataset=data,
            priority=2,  # LOW
        )
        return int(status)

    return store


def run(
    db: Database,
    settings: Settings,
    backfill_id: int,
    *,
    progress: ProgressFn | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], dt.datetime] = lambda: dt.datetime.now().astimezone(),
) -> dict[str, object]:
    """Run (or resume) a backfill to its end; its progress at the end."""
    bf = backfills.get(db, backfill_id)
    if bf["status"] not in (BackfillStatus.QUERYING.value, BackfillStatus.RETRIEVING.value):
        return backfills.progress(db, backfill_id)
    source = source_of(db, bf["source"])
    check_method(db, source, bf["method"], bf["local_ae"])
    if bf["status"] == BackfillStatus.QUERYING.value:
        try:
            planned = backfills.plan(db, backfill_id, decisions(db, settings, backfill_id))
        except Exception as exc:
            backfills.finish(db, backfill_id, BackfillStatus.FAILED, f"query: {exc}")
            raise
        log.info("backfill %d: %s", backfill_id, ", ".join(f"{n} {k}" for k, n in sorted(planned.items())) or "nothing")
    store = _store_fn(db, settings, bf["local_ae"], source) if bf["method"] in ("get", "wado") else None
    rows = backfills.to_retrieve(db, backfill_id)
    total, done = len(rows), 0
    if progress is not None:
        progress(0, total)
    interval = 3600.0 / bf["rate_per_hour"] if bf["rate_per_hour"] > 0 else 0.0
    last_study_at: float | None = None
    for study_uid, group in groupby(rows, key=lambda r: r[1]):
        wait = seconds_until_window(bf["window"], clock())
        if wait > 0:
            log.info("backfill %d: outside %s, waiting %.0f s", backfill_id, bf["window"], wait)
            sleep(wait)
        if interval and last_study_at is not None:
            left = interval - (time.monotonic() - last_study_at)
            if left > 0:
                sleep(left)
        last_study_at = time.monotonic()
        if _cancelled(db, backfill_id):
            break
        for row_id, _study, series_uid in group:
            backfills.mark(db, row_id, BackfillSeriesStatus.RETRIEVING)
            result = _retrieve(settings, source, bf["method"], bf["local_ae"], study_uid, series_uid, store)
            if result.ok or result.completed:
                backfills.mark(
                    db, row_id, BackfillSeriesStatus.RETRIEVED, reason=result.reason, retrieved=result.completed
                )
            else:
                log.warning("backfill %d: series %s: %s", backfill_id, series_uid, result.reason)
                backfills.mark(db, row_id, BackfillSeriesStatus.FAILED, reason=result.reason)
            done += 1
            if progress is not None:
                progress(done, total)
    if not _cancelled(db, backfill_id):
        backfills.finish(db, backfill_id, BackfillStatus.DONE)
    return backfills.progress(db, backfill_id)


def _cancelled(db: Database, backfill_id: int) -> bool:
    with db.engine.connect() as conn:
        return conn.scalar(select(Backfill.status).where(Backfill.id == backfill_id)) == BackfillStatus.CANCELLED.value


def _retrieve(
    settings: Settings,
    source: RetrieveSource,
    method: str,
    local_ae: str,
    study_uid: str,
    series_uid: str,
    store: StoreFn | None,
) -> Retrieved:
    timeout = settings.export.timeout_seconds
    if method == "wado":
        assert source.web is not None and store is not None
        return wado_series(source.web, study_uid, series_uid, store, timeout=max(timeout, 120.0))
    assert source.dimse is not None
    if method == "get":
        assert store is not None
        return get_series(
            source.dimse,
            study_uid,
            series_uid,
            store,
            calling_ae_title=settings.export.calling_ae_title,
            timeout=timeout,
        )
    return move_series(
        source.dimse,
        study_uid,
        series_uid,
        calling_ae_title=settings.export.calling_ae_title,
        move_destination=local_ae,
        timeout=timeout,
    )


def prepare(
    db: Database,
    *,
    source: str,
    date_from: str = "",
    date_to: str = "",
    modality: str = "",
    accessions: list[str] | None = None,
    local_ae: str = "",
    method: str = "",
    rate: str = "",
    between: str = "",
    force: bool = False,
    created_by: str = "",
) -> dict[str, Any]:
    """A backfill's values from what a person gave (the command line or the admin form), checked:
    Refused names the field."""
    if not source:
        raise Refused("source", "name the source PACS (a destination)")
    accessions = list(dict.fromkeys(a.strip() for a in accessions or [] if a.strip()))
    if any(len(a) > 16 for a in accessions):
        raise Refused("accessions", "an accession number is at most 16 characters")
    start, end = parse_date("from", date_from), parse_date("to", date_to)
    if not accessions and not (start or end):
        raise Refused("from", "give a date range (from, to) or accession numbers")
    local_ae = local_ae or default_local_ae(db)
    found = source_of(db, source)
    method = method or ("wado" if found.web is not None else "move")
    check_method(db, found, method, local_ae)
    return dict(
        source=found.title,
        method=method,
        local_ae=local_ae,
        date_from=start,
        date_to=end,
        modality=modality.strip().upper(),
        accessions=accessions,
        rate_per_hour=parse_rate(rate or "0"),
        window=parse_window(between),
        force=force,
        created_by=created_by,
    )


def run_next(db: Database, settings: Settings) -> int | None:
    """Run the oldest unfinished backfill that ``serve`` runs (one started from the admin pages),
    to its end; its id, or None when there is none. ``serve`` calls this in a loop of its own."""
    with db.engine.connect() as conn:
        backfill_id = conn.scalar(
            select(Backfill.id)
            .where(Backfill.run_by == "serve", Backfill.status.in_([st.value for st in OPEN_BACKFILL_STATUSES]))
            .order_by(Backfill.id)
            .limit(1)
        )
    if backfill_id is None:
        return None
    try:
        run(db, settings, int(backfill_id))
    except NodeError as exc:
        log.warning("backfill %d: %s", backfill_id, exc.one_line())
        if backfills.get(db, int(backfill_id))["status"] in {st.value for st in OPEN_BACKFILL_STATUSES}:
            backfills.finish(db, int(backfill_id), BackfillStatus.FAILED, exc.one_line())
    return int(backfill_id)
