"""The two actions an admin takes on a job, from the pages or the REST API, each written to the
audit log: analyse it again (:func:`retry`), send its results again (:func:`resend`).

The state rules are dicom_node.jobs': a job that is pending, queued or running is not retried
(Conflict), only a done job's results are sent (Conflict), a job or destination that does not
exist is NotFound.
"""

from __future__ import annotations

from typing import Any, Sequence

from dicom_node.admin import audit
from dicom_node.admin.auth import Principal
from dicom_node.db import Database
from dicom_node.jobs import analyses, exports
from dicom_node.jobs.queries import job_detail


def retry(db: Database, job_id: int, who: Principal, remote_addr: str) -> dict[str, Any]:
    """Queue the job's analysis again (it re-runs and re-exports); returns the job as it is now."""
    before = job_detail(db, job_id)
    analyses.requeue(db, job_id, reason="retry requested by an admin")
    after = job_detail(db, job_id)
    with db.session() as s:
        audit.record(
            s,
            who,
            "job.retry",
            target_type="job",
            target_id=job_id,
            target=before["series_uid"],
            before={"status": before["status"], "reason": before["reason"]},
            after={"status": after["status"], "reason": after["reason"]},
            remote_addr=remote_addr,
        )
    return after


def resend(
    db: Database,
    job_id: int,
    who: Principal,
    remote_addr: str,
    *,
    default_outputs: Sequence[str],
    destination: str | None = None,
) -> list[int]:
    """Send a done job's results again (to every destination, or to the one titled
    ``destination``); returns the export ids."""
    ids = exports.reexport(db, job_id, destination=destination, default_outputs=default_outputs)
    with db.session() as s:
        audit.record(
            s,
            who,
            "job.export",
            target_type="job",
            target_id=job_id,
            target=destination or "all destinations",
            after={"exports": ids},
            remote_addr=remote_addr,
        )
    return ids
