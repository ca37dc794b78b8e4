"""The outbox: messages written in the transaction of the state change they announce, and the relay
that hands them to whatever runs the work.

Writers (jobs.completion, jobs.analyses, jobs.exports) add a message with :func:`write_message` in
their own transaction; the :class:`OutboxRelay` (run by ``serve``) hands each one to a
:class:`Dispatcher` and marks its job QUEUED. The worker package plugs Celery in
(``worker.dispatch.CeleryDispatcher``, named by the ``dispatcher`` setting); nothing here imports
Celery. Delivery is at least once: a message is marked dispatched only after the dispatcher
accepted it, so consumers must be idempotent (jobs are claimed by id and status).
"""

from __future__ import annotations

import importlib
import logging
from typing import Any, Protocol, runtime_checkable

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from dicom_node.db import Database
from dicom_node.db.models import Job, OutboxMessage
from dicom_node.db.times import utcnow
from dicom_node.jobs.states import JobStatus

log = logging.getLogger(__name__)

# The topics: what a message asks for. Every dispatcher maps each of them to its own queue or task.
ANALYSE_TOPIC = "analyse"
EXPORT_TOPIC = "export"
TOPICS = (ANALYSE_TOPIC, EXPORT_TOPIC)


@runtime_checkable
class Dispatcher(Protocol):
    """What runs the work: a queue (Celery), or anything else that takes a topic and a job id."""

    def dispatch(self, topic: str, job_id: int) -> None:
        """Hand the job to the queue; raise to have it tried again later."""

    def housekeeping(self) -> None:
        """The broker's own upkeep, called by ``serve`` about once a second (may do nothing)."""


def write_message(session: Session, topic: str, job_id: int, **payload: Any) -> OutboxMessage:
    """Add an outbox message to the caller's transaction; ``payload`` is kept for people (the
    dispatcher reads only the topic and the job id)."""
    if topic not in TOPICS:
        raise ValueError(f"outbox topic {topic!r} is not one of {', '.join(TOPICS)}")
    message = OutboxMessage(topic=topic, job_id=job_id, payload={"job_id": job_id, **payload})
    session.add(message)
    return message


class OutboxRelay:
    def __init__(self, db: Database, dispatcher: Dispatcher, *, batch: int = 100) -> None:
        self.db = db
        self.dispatcher = dispatcher
        self.batch = batch

    def relay_once(self) -> int:
        with self.db.engine.connect() as conn:
            # The most urgent jobs' messages first (the worker picks by priority anyway:
            # dicom_node.jobs.analyses.claim; this keeps a queue without priorities close to it).
            pending = conn.execute(
                select(OutboxMessage.id, OutboxMessage.topic, OutboxMessage.job_id)
                .outerjoin(Job, Job.id == OutboxMessage.job_id)
                .where(OutboxMessage.dispatched_at.is_(None))
                .order_by(Job.priority.desc(), OutboxMessage.id)
                .limit(self.batch)
            ).all()
        sent = 0
        for msg_id, topic, job_id in pending:
            if job_id is None:  # every writer names a job (write_message); a row without one is inert
                log.warning("outbox message %d names no job; marked dispatched", msg_id)
                with self.db.session() as s:
                    s.execute(update(OutboxMessage).where(OutboxMessage.id == msg_id).values(dispatched_at=utcnow()))
                continue
            try:
                self.dispatcher.dispatch(topic, job_id)
            except Exception as exc:  # any broker error: keep the message, try again next round
                log.warning("could not dispatch outbox message %d (job %s): %s", msg_id, job_id, exc)
                with self.db.session() as s:
                    s.execute(
                        update(OutboxMessage)
                        .where(OutboxMessage.id == msg_id)
                        .values(attempts=OutboxMessage.attempts + 1, last_error=str(exc)[:2000])
                    )
                break
            now = utcnow()
            with self.db.session() as s:
                s.execute(
                    update(OutboxMessage)
                    .where(OutboxMessage.id == msg_id)
                    .values(dispatched_at=now, attempts=OutboxMessage.attempts + 1)
                )
                s.execute(
                    update(Job)
                    .where(Job.id == job_id, Job.status == JobStatus.PENDING.value)
                    .values(status=JobStatus.QUEUED.value, queued_at=now)
                )
            sent += 1
        return sent


def load_dispatcher(spec: str, **kwargs: object) -> Dispatcher:
    """Load ``module:Class`` and instantiate it with kwargs (the ``dispatcher`` setting: the
    composition root's choice, named in configuration rather than imported here)."""
    module_name, _, attr = spec.partition(":")
    if not attr:
        raise ValueError(f"dispatcher {spec!r} is not of the form module:Class")
    cls = getattr(importlib.import_module(module_name), attr)
    dispatcher = cls(**kwargs)
    if not isinstance(dispatcher, Dispatcher):
        raise TypeError(f"{spec} does not implement dispatch(topic, job_id) and housekeeping()")
    return dispatcher
