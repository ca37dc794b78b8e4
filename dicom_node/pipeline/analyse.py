"""Analysing one job (:func:`analyse`): the plain function a worker calls with a job id. Nothing
here imports Celery; tests call it directly.

:func:`analyse`: claim the job (dicom_node.jobs.analyses), keep its heartbeat, read the series from
storage (:func:`series_files`: in place, or fetched from the node by a worker on another host,
dicom_node.pipeline.remote; then model.inference.io.load_series), run the predictor (loaded once
per process, dicom_node.pipeline.runtime), write the artefacts (dicom_node.storage.results:
result.json, maps, the DICOM objects built by dicom_node.outputs.build_outputs with the job's
creation time, so a job run twice gives the same bytes; a worker on another host hands them to the
node before the job is done; a series over ``worker.parametric_map_max_slices`` gets no
Parametric Map, dicom_node.outputs.pm.left_out, and the log, an event and the job's result,
``left_out``: {kind: why}, say so), then DONE with the exports in one
transaction, and send them right away (dicom_node.pipeline.export; the "export" outbox message is
the durable copy of that intent). Timings in ``Job.timings`` (seconds): ``queue_wait`` (queued to
this attempt's claim; a takeover counts the lost attempt's time as waiting), ``load`` (reading the
series), ``model_load`` (first job of a process only), ``inference`` (the predictor; its own stages
under ``stages``), ``encoding`` (building and writing the objects), ``fetch`` and ``upload`` (a
worker on another host: the series from the node, the results to it), ``export`` (the slowest
destination's last successful send).

Failures: a series that can not be read, a model that can not be loaded or any error of the
analysis ends the job FAILED with the reason (admins see it and may retry it). A database error
(OperationalError), or the node unreachable from a remote worker (RemoteError), is not the job's
fault: it propagates, the task retries with backoff, and the
retry takes the job over once this attempt's heartbeat is stale; if the retries run out, the job
is RUNNING without a heartbeat and ``serve``'s lost-job scan requeues it.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from pathlib import Path
from typing import Any, Callable

from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from dicom_node.db.models import Instance, Job, Series
from dicom_node.db.times import as_utc
from dicom_node.jobs import analyses, exports
from dicom_node.jobs.states import JobStatus
from dicom_node.outputs.build import build_outputs
from dicom_node.outputs.common import OutputOptions, SourceSeries
from dicom_node.outputs.kinds import OUTPUT_KINDS
from dicom_node.outputs.pm import left_out as map_left_out
from dicom_node.pipeline.export import export_job
from dicom_node.pipeline.remote import RemoteError, StoredRef
from dicom_node.pipeline.runtime import Runtime, release_memory
from dicom_node.storage.files import Storage
from dicom_node.storage.results import JobArtefacts
from model.inference.io import SeriesReadError, load_series

log = logging.getLogger(__name__)


def claim_waiting(rt: Runtime, job_id: int) -> analyses.Claimed | analyses.Skipped | analyses.Busy:
    """Claim the job; if another worker's fresh heartbeat holds it, watch that heartbeat for a
    little longer than it takes to go stale, then take over or give the duplicate up."""
    hb = rt.settings.worker.heartbeat_seconds
    deadline = time.monotonic() + rt.stale_after + hb
    while True:
        outcome = analyses.claim(rt.db, job_id, worker=rt.worker_name, stale_after=rt.stale_after)
        if not isinstance(outcome, analyses.Busy) or time.monotonic() >= deadline:
            return outcome
        time.sleep(min(hb, max(0.1, deadline - time.monotonic())))


def series_files(rt: Runtime, series_id: int) -> tuple[list[Path], list[Path]]:
    """(the local files of the series' indexed instances, those of them fetched from the node
    just now, which the caller forgets once the series is read)."""
    with rt.db.engine.connect() as conn:
        rows = conn.execute(
            select(Instance.path, Instance.size_bytes).where(Instance.series_id == series_id).order_by(Instance.id)
        ).all()
    if rt.remote is not None:
        return rt.remote.series([StoredRef(p, n) for p, n in rows])
    storage = Storage(rt.settings.storage_dir)
    return [storage.absolute(p) for p, _ in rows], []


def _created(value: dt.datetime) -> dt.datetime:
    """The job's creation time as the local, naive, whole-second time the objects carry."""
    return as_utc(value).astimezone().replace(tzinfo=None, microsecond=0)


def analyse(rt: Runtime, job_id: int, *, redelivered: bool = False) -> str:
    """Run one job to its end. Returns the job's final status, or "busy" (another live worker
    runs it), or "lost" (a newer attempt took it over meanwhile)."""
    claimed = claim_waiting(rt, job_id)
    if isinstance(claimed, analyses.Busy):
        log.info(
            "job %d is running on %s (heartbeat %.0f s ago); duplicate delivery dropped",
            job_id,
            claimed.worker,
            claimed.heartbeat_age,
        )
        return "busy"
    if isinstance(claimed, analyses.Skipped):
        log.info(
            "job %d: nothing to do (%s%s)", job_id, claimed.status, ": " + claimed.reason if claimed.reason else ""
        )
        return claimed.status
    if claimed.took_over_from:
        log.warning(
            "job %d: attempt %d takes over from %s (redelivered=%s)",
            job_id,
            claimed.attempt,
            claimed.took_over_from,
            redelivered,
        )
    if claimed.job_id != job_id:
        log.info(
            "job %d runs on the delivery of job %d (the most urgent waiting job runs first)", claimed.job_id, job_id
        )
    job_id = claimed.job_id
    log.info(
        "job %d started%s (series %s)",
        job_id,
        f", attempt {claimed.attempt}" if claimed.attempt > 1 else "",
        claimed.series_uid,
    )
    log.debug("job %d runs on %s", job_id, rt.worker_name)
    timings: dict[str, Any] = {"queue_wait": round(claimed.queue_wait, 4), "attempt": claimed.attempt}
    with analyses.Heartbeat(rt.db, job_id, claimed.attempt, rt.settings.worker.heartbeat_seconds) as heartbeat:
        try:
            fields = _run(rt, claimed, heartbeat, timings)
            notes = list(((fields.get("result") or {}).get("left_out") or {}).values())
            status = analyses.finish(rt.db, claimed, fields=fields, on_done=_exports_on_done(rt), notes=notes)
        except analyses.LostOwnership as exc:
            log.warning("%s; its results are dropped", exc)
            return "lost"
        except (OperationalError, RemoteError):
            # The database, or the node a remote worker fetches from, is away: nothing can be
            # recorded; the task retries (worker.tasks) and takes the job over once this
            # attempt's heartbeat is stale.
            raise
        except Exception as exc:
            reason = _failure_reason(exc)
            log.exception("job %d failed: %s", job_id, reason)
            analyses.fail(rt.db, claimed, reason, timings=timings)
            return "failed"
    # The volume, maps and objects are gone: hand their freed heap back to the system, so a
    # worker's resident set between jobs stays that of an idle one.
    release_memory()
    seconds = sum(v for k, v in timings.items() if k in ("load", "model_load", "inference", "encoding"))
    log.info("job %d %s: %s in %.1f s", job_id, status, _decision_words(fields), seconds)
    if status == JobStatus.DONE.value:
        # Send at once rather than after the outbox relay and the broker (a second or two); the
        # job's "export" outbox message, written with DONE, finds the exports sent, or sends
        # whatever this could not.
        export_job(rt, job_id)
    return status


def _decision_words(fields: dict[str, Any]) -> str:
    """``covid (p 0.91)`` or ``no_decision: <why>``, for the log line of a finished job."""
    decision = str(fields.get("decision") or "")
    result = fields.get("result") or {}
    p = (result.get("probabilities") or {}).get(decision)
    if p is not None:
        return f"{decision} (p {float(p):.2f})"
    return f"{decision}: {str(fields.get('reason') or '').split('. ')[0]}"


def _failure_reason(exc: BaseException) -> str:
    if isinstance(exc, SeriesReadError):
        return f"the series could not be read: {exc.reason}"
    return f"{type(exc).__name__}: {exc}"


def _run(
    rt: Runtime, claimed: analyses.Claimed, heartbeat: analyses.Heartbeat, timings: dict[str, Any]
) -> dict[str, Any]:
    t = time.perf_counter()
    files, fetched = series_files(rt, claimed.series_id)
    if fetched:
        timings["fetch"] = round(time.perf_counter() - t, 4)
    try:
        return _analyse_files(rt, claimed, heartbeat, timings, files)
    finally:
        # The source files are read for the volume and again for the objects' references.
        if rt.remote is not None:
            rt.remote.forget(fetched)


def _analyse_files(
    rt: Runtime, claimed: analyses.Claimed, heartbeat: analyses.Heartbeat, timings: dict[str, Any], files: list[Path]
) -> dict[str, Any]:
    settings = rt.settings
    if not files:
        raise FileNotFoundError(f"series {claimed.series_uid} has no stored instance")
    t = time.perf_counter()
    # int16 HU where exact: the model and the writers cast slices of it as they go.
    volume = load_series(files, series_uid=claimed.series_uid, compact=True)
    timings["load"] = round(time.perf_counter() - t, 4)
    heartbeat.check()

    if not rt.predictor_loaded:
        t = time.perf_counter()
        rt.predictor()
        timings["model_load"] = round(time.perf_counter() - t, 4)
    t = time.perf_counter()
    result = rt.predictor().predict(volume)
    timings["inference"] = round(time.perf_counter() - t, 4)
    timings["stages"] = {k: round(float(v), 4) for k, v in result.timings.items()}
    heartbeat.check()

    # Kinds not built for this series, and why: the Parametric Map of a thin-slice series (its
    # frames are never computed; destinations that take it get the other objects).
    left_out: dict[str, str] = {}
    why = map_left_out(result, settings.worker.parametric_map_max_slices)
    if why is not None:
        left_out["pm"] = why
        log.info("job %d: %s", claimed.job_id, why)
    t = time.perf_counter()
    artefacts = JobArtefacts(settings.results_dir, claimed.job_id)
    artefacts.write_result(result)
    # The Parametric Map's frames are computed from the heatmap as its file is written.
    options = OutputOptions(
        sc_slices=settings.worker.sc_slices, created=_created(claimed.created_at), defer_map_pixels=True
    )
    kinds = [kind for kind in OUTPUT_KINDS if kind not in left_out]
    objects = build_outputs(result, SourceSeries.from_volume(volume), kinds=kinds, options=options)
    heartbeat.check()
    outputs = artefacts.write_objects(objects, claimed.attempt)
    del objects
    timings["encoding"] = round(time.perf_counter() - t, 4)
    heartbeat.check()
    if rt.remote is not None:
        t = time.perf_counter()
        if rt.remote.upload_results(artefacts):
            timings["upload"] = round(time.perf_counter() - t, 4)
        rt.remote.prune_results()
    return {
        "decision": result.decision,
        "reason": result.reason,
        "result": result.to_json() | ({"left_out": left_out} if left_out else {}),
        "model_name": result.model.name[:64],
        "model_version": result.model.version[:64],
        "outputs": outputs,
        "timings": timings,
    }


def _exports_on_done(rt: Runtime) -> Callable[[Any, Job, Series | None], None]:
    def on_done(session: Any, job: Job, series: Series | None) -> None:
        if series is not None:
            rows = exports.create_for_job(session, job, series, rt.settings.export.default_outputs)
            log.debug("job %d done (%s); %d export(s) queued", job.id, job.decision, len(rows))

    return on_done
