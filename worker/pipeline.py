"""The plain functions the Celery tasks call: :func:`analyse` (one job) and :func:`export` (one
export), with :func:`export_job` for the "export" message of a job. Nothing here imports Celery;
tests call these functions directly.

:func:`analyse`: claim the job (worker.jobs), keep its heartbeat, read the series from storage
(model.inference.io.load_series on the indexed instances), run the predictor (loaded once per process),
write the artefacts (worker.artefacts: result.json, maps, the DICOM objects built by
dicom_node.outputs.build_outputs with the job's creation time, so a job run twice gives the same
bytes), then DONE with the exports in one transaction, and send them right away (the
"export" outbox message is the durable copy of that intent). Timings in ``Job.timings`` (seconds):
``queue_wait`` (queued to this attempt's claim; a takeover counts the lost attempt's time as
waiting), ``load`` (reading the series), ``model_load`` (first job of a process only),
``inference`` (the predictor; its own stages under ``stages``), ``encoding`` (building and writing
the objects), ``export`` (the slowest destination's last successful send).

Failures: a series that can not be read, a model that can not be loaded or any error of the
analysis ends the job FAILED with the reason (admins see it and may retry it). A database error
(OperationalError) is not the job's fault: it propagates, the task retries with backoff, and the
retry takes the job over once this attempt's heartbeat is stale; if the retries run out, the job
is RUNNING without a heartbeat and ``serve``'s lost-job scan requeues it.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from dicom_node.db import Database
from dicom_node.db.models import Instance, Job, JobStatus, Series
from dicom_node.scu import send_files
from dicom_node.settings import Settings
from dicom_node.storage import Storage
from dicom_node.validation import OUTPUT_KINDS
from worker import exports, jobs
from worker.artefacts import JobArtefacts

log = logging.getLogger(__name__)


def default_worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def resolve_device(device: str, index: int = 0) -> str:
    """"cpu", or "cuda:N" for worker process ``index`` (processes spread over the GPUs)."""
    if device == "cpu":
        return "cpu"
    import torch

    if device == "auto" and not torch.cuda.is_available():
        return "cpu"
    if not torch.cuda.is_available():
        raise RuntimeError("worker.device is cuda but no CUDA device is available")
    return f"cuda:{index % torch.cuda.device_count()}"


@dataclass
class Runtime:
    """What one worker process keeps between jobs: settings, its database engine, its name and
    the predictor (loaded on first use, then cached for the life of the process)."""

    settings: Settings
    db: Database
    device: str = "cpu"
    worker_name: str = field(default_factory=default_worker_name)
    _predictor: Any = field(default=None, repr=False)

    @classmethod
    def create(cls, settings: Settings, *, device: str | None = None, worker_name: str | None = None) -> "Runtime":
        return cls(
            settings=settings,
            db=Database(settings.effective_database_url),
            device=device or resolve_device(settings.worker.device),
            worker_name=worker_name or default_worker_name(),
        )

    def predictor(self) -> Any:
        """model.inference.multiscale_cam's cached predictor for this process's device and the worker settings."""
        if self._predictor is None:
            from model.inference.multiscale_cam import get_predictor, settings_for

            weights = self.settings.worker.weights_dir
            predictor_settings = settings_for(weights, device=self.device, mode=self.settings.worker.localisation)
            self._predictor = get_predictor(weights, predictor_settings)
        return self._predictor

    @property
    def stale_after(self) -> float:
        """A running job's heartbeat older than this means its worker is gone."""
        return 3 * self.settings.worker.heartbeat_seconds


# -- analysis -----------------------------------------------------------------------------------


def claim_waiting(rt: Runtime, job_id: int) -> jobs.Claimed | jobs.Skipped | jobs.Busy:
    """Claim the job; if another worker's fresh heartbeat holds it, watch that heartbeat for a
    little longer than it takes to go stale, then take over or give the duplicate up."""
    hb = rt.settings.worker.heartbeat_seconds
    deadline = time.monotonic() + rt.stale_after + hb
    while True:
        outcome = jobs.claim(rt.db, job_id, worker=rt.worker_name, stale_after=rt.stale_after)
        if not isinstance(outcome, jobs.Busy) or time.monotonic() >= deadline:
            return outcome
        time.sleep(min(hb, max(0.1, deadline - time.monotonic())))


def series_files(db: Database, storage: Storage, series_id: int) -> list[Path]:
    """The stored files of the series' indexed instances."""
    with db.engine.connect() as conn:
        rel = conn.execute(select(Instance.path).where(Instance.series_id == series_id).order_by(Instance.id)).scalars().all()
    return [storage.absolute(p) for p in rel]


def _created(value: dt.datetime) -> dt.datetime:
    """The job's creation time as the local, naive, whole-second time the objects carry."""
    aware = value if value.tzinfo else value.replace(tzinfo=dt.timezone.utc)
    return aware.astimezone().replace(tzinfo=None, microsecond=0)


def analyse(rt: Runtime, job_id: int, *, redelivered: bool = False) -> str:
    """Run one job to its end. Returns the job's final status, or "busy" (another live worker
    runs it), or "lost" (a newer attempt took it over meanwhile)."""
    claimed = claim_waiting(rt, job_id)
    if isinstance(claimed, jobs.Busy):
        log.info("job %d is running on %s (heartbeat %.0f s ago); duplicate delivery dropped", job_id, claimed.worker, claimed.heartbeat_age)
        return "busy"
    if isinstance(claimed, jobs.Skipped):
        log.info("job %d: nothing to do (%s%s)", job_id, claimed.status, ": " + claimed.reason if claimed.reason else "")
        return claimed.status
    if claimed.took_over_from:
        log.warning("job %d: attempt %d takes over from %s (redelivered=%s)", job_id, claimed.attempt, claimed.took_over_from, redelivered)
    log.info("job %d (series %s): attempt %d on %s", job_id, claimed.series_uid, claimed.attempt, rt.worker_name)
    timings: dict[str, Any] = {"queue_wait": round(claimed.queue_wait, 4), "attempt": claimed.attempt}
    with jobs.Heartbeat(rt.db, job_id, claimed.attempt, rt.settings.worker.heartbeat_seconds) as heartbeat:
        try:
            fields = _run(rt, claimed, heartbeat, timings)
            status = jobs.finish(rt.db, claimed, fields=fields, on_done=_exports_on_done(rt))
        except jobs.LostOwnership as exc:
            log.warning("%s; its results are dropped", exc)
            return "lost"
        except OperationalError:
            # The database is away: nothing can be recorded; the task retries (worker.tasks) and
            # takes the job over once this attempt's heartbeat is stale.
            raise
        except Exception as exc:
            reason = _failure_reason(exc)
            log.exception("job %d failed: %s", job_id, reason)
            jobs.fail(rt.db, claimed, reason, timings=timings)
            return "failed"
    log.info("job %d %s in %.1f s", job_id, status, sum(v for k, v in timings.items() if k in ("load", "model_load", "inference", "encoding")))
    if status == JobStatus.DONE.value:
        # Send at once rather than after the outbox relay and the broker (a second or two); the
        # job's "export" outbox message, written with DONE, finds the exports sent, or sends
        # whatever this could not.
        export_job(rt, job_id)
    return status


def _failure_reason(exc: BaseException) -> str:
    from model.inference.io import SeriesReadError

    if isinstance(exc, SeriesReadError):
        return f"the series could not be read: {exc.reason}"
    return f"{type(exc).__name__}: {exc}"


def _run(rt: Runtime, claimed: jobs.Claimed, heartbeat: jobs.Heartbeat, timings: dict[str, Any]) -> dict[str, Any]:
    from dicom_node.outputs import OutputOptions, SourceSeries, build_outputs
    from model.inference.io import load_series

    settings = rt.settings
    files = series_files(rt.db, Storage(settings.storage_dir), claimed.series_id)
    if not files:
        raise FileNotFoundError(f"series {claimed.series_uid} has no stored instance")
    t = time.perf_counter()
    volume = load_series(files, series_uid=claimed.series_uid)
    timings["load"] = round(time.perf_counter() - t, 4)
    heartbeat.check()

    if rt._predictor is None:
        t = time.perf_counter()
        rt.predictor()
        timings["model_load"] = round(time.perf_counter() - t, 4)
    t = time.perf_counter()
    result = rt.predictor().predict(volume)
    timings["inference"] = round(time.perf_counter() - t, 4)
    timings["stages"] = {k: round(float(v), 4) for k, v in result.timings.items()}
    heartbeat.check()

    t = time.perf_counter()
    artefacts = JobArtefacts(settings.results_dir, claimed.job_id)
    artefacts.write_result(result)
    options = OutputOptions(sc_slices=settings.worker.sc_slices, created=_created(claimed.created_at))
    objects = build_outputs(result, SourceSeries.from_volume(volume), kinds=OUTPUT_KINDS, options=options)
    heartbeat.check()
    outputs = artefacts.write_objects(objects, claimed.attempt)
    timings["encoding"] = round(time.perf_counter() - t, 4)
    heartbeat.check()
    return {
        "decision": result.decision,
        "reason": result.reason,
        "result": result.to_json(),
        "model_name": result.model.name[:64],
        "model_version": result.model.version[:64],
        "outputs": outputs,
        "timings": timings,
    }


def _exports_on_done(rt: Runtime) -> Callable[[Any, Job, Series | None], None]:
    def on_done(session: Any, job: Job, series: Series | None) -> None:
        if series is not None:
            rows = exports.create_for_job(session, job, series, rt.settings.export.default_outputs)
            log.info("job %d done (%s); %d export(s) queued", job.id, job.decision, len(rows))

    return on_done


# -- export -------------------------------------------------------------------------------------


def export_job(rt: Runtime, job_id: int) -> dict[int, str]:
    """Send every export of the job that is due now (the "export" message of a job); returns
    {export id: status}. Destinations are served one after another, each over its own
    association."""
    due = exports.due_for_job(rt.db, job_id, stale_after=rt.settings.export.stale_after_seconds)
    return {export_id: export(rt, export_id) for export_id in due}


def export(rt: Runtime, export_id: int) -> str:
    """One sending attempt of one export; returns the export's status afterwards ("skipped" when
    it was not due or is not this delivery's to send)."""
    settings = rt.settings.export
    claimed = exports.claim(rt.db, export_id, stale_after=settings.stale_after_seconds)
    if claimed is None:
        return "skipped"
    policy = exports.RetryPolicy.from_settings(settings)
    artefacts = JobArtefacts(rt.settings.results_dir, claimed.job_id)
    paths = [artefacts.absolute(p) for p in claimed.files]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        return exports.record_error(rt.db, claimed, f"result files missing: {', '.join(missing[:3])}", policy)
    log.info("export %d (job %d): %d object(s) to %s@%s:%d, attempt %d", export_id, claimed.job_id, len(paths), claimed.peer.title, claimed.peer.host, claimed.peer.port, claimed.attempt)
    last_touch = [time.monotonic()]

    def progress(sent: int) -> None:
        # The progress clock that tells a slow send from a lost one (at most once a second).
        if time.monotonic() - last_touch[0] >= 1.0:
            exports.touch(rt.db, export_id, claimed.attempt, sent)
            last_touch[0] = time.monotonic()

    try:
        result = send_files(
            paths, claimed.peer, calling_ae_title=settings.calling_ae_title, timeout=settings.timeout_seconds, on_progress=progress
        )
    except Exception as exc:  # an unreadable result file, a bug: recorded, retried with backoff
        log.exception("export %d to %s could not be attempted", export_id, claimed.peer.title)
        return exports.record_error(rt.db, claimed, f"could not send: {type(exc).__name__}: {exc}", policy)
    status = exports.record(rt.db, claimed, result, policy)
    log.info("export %d to %s: %s (%d of %d stored, %.2f s)", export_id, claimed.peer.title, status, result.sent, len(paths), result.seconds)
    return status
