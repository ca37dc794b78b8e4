"""Sending a job's results: :func:`export_job` (the "export" message of a job) and :func:`export`
(one attempt of one export). The export state machine is dicom_node.jobs.exports'; the C-STORE
SCU is dicom_node.sending.scu's and the STOW-RS client of a DICOMweb destination
dicom_node.sending.dicomweb's; the files are the job's artefacts (dicom_node.storage.results),
which a worker on another host fetches from the node when it lacks them
(dicom_node.pipeline.remote), then sends directly to the destination.
"""

from __future__ import annotations

import logging
import time

from dicom_node.jobs import exports
from dicom_node.pipeline.runtime import Runtime
from dicom_node.sending.dicomweb import stow_files
from dicom_node.sending.scu import send_files
from dicom_node.storage.results import JobArtefacts

log = logging.getLogger(__name__)


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
    if rt.remote is not None:
        try:
            rt.remote.results(artefacts, claimed.files)
        except Exception as exc:  # the node away: recorded, retried with backoff
            return exports.record_error(
                rt.db, claimed, f"result files could not be fetched from the node: {exc}", policy
            )
    paths = [artefacts.absolute(p) for p in claimed.files]
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        return exports.record_error(rt.db, claimed, f"result files missing: {', '.join(missing[:3])}", policy)
    log.debug(
        "export %d (job %d): %d object(s) to %s@%s:%d, attempt %d",
        export_id,
        claimed.job_id,
        len(paths),
        claimed.peer.title,
        claimed.peer.host,
        claimed.peer.port,
        claimed.attempt,
    )
    last_touch = [time.monotonic()]

    def progress(sent: int) -> None:
        # The progress clock that tells a slow send from a lost one (at most once a second).
        if time.monotonic() - last_touch[0] >= 1.0:
            exports.touch(rt.db, export_id, claimed.attempt, sent)
            last_touch[0] = time.monotonic()

    try:
        if claimed.web is not None:
            result = stow_files(paths, claimed.web, timeout=settings.timeout_seconds, on_progress=progress)
        else:
            result = send_files(
                paths,
                claimed.peer,
                calling_ae_title=settings.calling_ae_title,
                timeout=settings.timeout_seconds,
                on_progress=progress,
            )
    except Exception as exc:  # an unreadable result file, a bug: recorded, retried with backoff
        log.exception("export %d to %s could not be attempted", export_id, claimed.peer.title)
        return exports.record_error(rt.db, claimed, f"could not send: {type(exc).__name__}: {exc}", policy)
    status = exports.record(rt.db, claimed, result, policy)
    where = f"{claimed.peer.title} ({claimed.web.url if claimed.web else f'{claimed.peer.host}:{claimed.peer.port}'})"
    if status == "done":
        log.info(
            "job %d results sent to %s: %d object(s) in %.1f s", claimed.job_id, where, result.sent, result.seconds
        )
    elif status == "failed":
        log.error("job %d results not sent to %s, for good: %s", claimed.job_id, where, result.reason)
    else:  # retrying: dicom_node.jobs.exports said when
        log.debug(
            "export %d to %s: %s (%d of %d stored, %.2f s)",
            export_id,
            where,
            status,
            result.sent,
            len(paths),
            result.seconds,
        )
    return status
