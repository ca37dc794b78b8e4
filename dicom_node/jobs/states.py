"""The states of a series, an analysis job and an export: the one home of their names.

The columns that hold them (dicom_node.db.models) are plain strings without a default: every row
is written with a state from here, by the module that owns the transition (storage.index and
jobs.completion for series; jobs.completion, jobs.analyses and jobs.outbox for jobs; jobs.exports
for exports; jobs.notifications for notifications).
"""

from __future__ import annotations

import enum


class SeriesStatus(str, enum.Enum):
    RECEIVING = "receiving"  # instances arriving; completion not reached
    COMPLETE = "complete"  # complete and selected for analysis (see its jobs)
    NOT_ANALYSED = "not_analysed"  # complete, stored, but the AE's filters did not select it


class JobStatus(str, enum.Enum):
    PENDING = "pending"  # written with the completion, in the outbox, not yet handed to the queue
    QUEUED = "queued"  # handed to the queue
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    SUPERSEDED = "superseded"  # the series re-opened before this job started; a newer job follows


# A job in one of these is not finished: it must not be retried unless forced.
ACTIVE_JOB_STATUSES = (JobStatus.PENDING, JobStatus.QUEUED, JobStatus.RUNNING)
# A job in one of these has waited without starting; a late instance supersedes it.
WAITING_JOB_STATUSES = (JobStatus.PENDING, JobStatus.QUEUED)
FINISHED_JOB_STATUSES = (JobStatus.DONE, JobStatus.FAILED, JobStatus.SUPERSEDED)


class ExportStatus(str, enum.Enum):
    PENDING = "pending"
    SENDING = "sending"
    RETRYING = "retrying"
    DONE = "done"
    FAILED = "failed"  # failed for good: a permanent refusal, or retries beyond the maximum age


OPEN_EXPORT_STATUSES = (ExportStatus.PENDING, ExportStatus.SENDING, ExportStatus.RETRYING)


class NotificationStatus(str, enum.Enum):
    PENDING = "pending"  # written with the job's end, not yet tried
    SENDING = "sending"
    RETRYING = "retrying"  # the endpoint was down or answered a transient error; next_attempt_at
    DONE = "done"  # the endpoint acknowledged it
    FAILED = "failed"  # refused for good, or not delivered within the maximum age


OPEN_NOTIFICATION_STATUSES = (NotificationStatus.PENDING, NotificationStatus.SENDING, NotificationStatus.RETRYING)


class BackfillStatus(str, enum.Enum):
    """A backfill of past studies from a PACS (dicom_node.jobs.backfills)."""

    QUERYING = "querying"  # asking the source for its studies and series
    RETRIEVING = "retrieving"  # series planned; retrieving those not yet retrieved
    DONE = "done"  # every planned series retrieved or failed (their analyses are the jobs')
    FAILED = "failed"  # the source could not be queried
    CANCELLED = "cancelled"


OPEN_BACKFILL_STATUSES = (BackfillStatus.QUERYING, BackfillStatus.RETRIEVING)


class BackfillSeriesStatus(str, enum.Enum):
    """One series a backfill found at its source."""

    PLANNED = "planned"  # to retrieve
    RETRIEVING = "retrieving"  # asked for; a restart asks again (the node stores an instance once)
    RETRIEVED = "retrieved"  # the source sent it (its job is made by series completion, at low priority)
    REQUEUED = "requeued"  # already stored here and --force: its last job analyses it again
    SKIPPED = "skipped"  # not taken: the AE's filters refuse it, or it is already analysed (reason)
    FAILED = "failed"  # the source did not send it (reason)


# A backfill series in one of these makes its job low priority when the series completes.
BACKFILL_INCOMING = (BackfillSeriesStatus.PLANNED, BackfillSeriesStatus.RETRIEVING, BackfillSeriesStatus.RETRIEVED)
