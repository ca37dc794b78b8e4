"""The sender of notifications, run by ``serve`` (dicom_node.service) every
``notify.poll_seconds``: due notifications are claimed, sent (a few at once, each to its own
endpoint, dicom_node.notify.channels) and recorded (dicom_node.jobs.notifications). At start it
sends again what a stopped node left half sent.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor

from dicom_node.db import Database
from dicom_node.db.times import as_utc
from dicom_node.jobs import notifications
from dicom_node.jobs.exports import RetryPolicy
from dicom_node.jobs.queries import iso, job_dict
from dicom_node.notify.channels import SendOptions, send
from dicom_node.notify.payload import payload
from dicom_node.settings import Settings
from dicom_node.triage.viewer import viewer_link

log = logging.getLogger(__name__)


class Notifier:
    def __init__(self, db: Database, settings: Settings) -> None:
        self.db = db
        self.settings = settings
        n = settings.notify
        self.policy = RetryPolicy(n.backoff_base_seconds, n.backoff_cap_seconds, n.max_age_seconds)
        self.options = SendOptions(n.timeout_seconds, n.hl7_application, n.hl7_facility)
        self.pool = ThreadPoolExecutor(max_workers=n.threads, thread_name_prefix="notify")
        self._recovered = False

    def run_once(self) -> int:
        """Send what is due; returns how many were tried."""
        if not self._recovered:
            notifications.recover_interrupted(self.db)
            self._recovered = True
        claims = [c for c in (notifications.claim(self.db, i) for i in notifications.due(self.db)) if c is not None]
        for outcome in self.pool.map(self._send, claims):
            del outcome
        return len(claims)

    def _send(self, claim: notifications.NotificationClaim) -> str:
        job = job_dict(claim.job, claim.series, claim.local_ae, exports=[])
        note = payload(
            job,
            delivery_id=claim.message_id,
            last_image_at=iso(as_utc(claim.series.last_received_at)),
            node_url=self.settings.triage.node_url,
            viewer_url=viewer_link(self.settings.triage.viewer_url, job),
        )
        try:
            delivery = send(claim.kind, claim.settings, note, self.options)
        except Exception as exc:  # a bug in a channel must not stop the others: record it, retry
            log.exception("notification %d to %s", claim.id, claim.channel)
            return notifications.record(self.db, claim, "retry", f"{type(exc).__name__}: {exc}", self.policy)
        status = notifications.record(self.db, claim, delivery.outcome, delivery.detail, self.policy)
        if status == "done":
            log.info("job %d: %s notified to %s (%s)", claim.job_id, note["decision"], claim.channel, delivery.detail)
        return status

    def close(self) -> None:
        self.pool.shutdown(wait=True)
