"""The dispatch interface between the receiving side and whatever runs analyses.

The receiving code writes jobs into the outbox (dicom_node.completion); an :class:`OutboxRelay`
hands each message to a :class:`Dispatcher`. The worker package plugs Celery in
(``worker.dispatch.CeleryDispatcher``); nothing here imports Celery. Delivery is at least once: a
message is marked dispatched only after the dispatcher accepted it, so consumers must be
idempotent (jobs are claimed by id and status).
"""

from __future__ import annotations

import importlib
import logging
from typing import Protocol, runtime_checkable

from sqlalchemy import select, update

from dicom_node.db import Database
from dicom_node.db.models import Job, JobStatus, OutboxMessage, utcnow

log = logging.getLogger(__name__)


@runtime_checkable
class Dispatcher(Protocol):
    def dispatch(self, topic: str, job_id: int) -> None:
        """Hand the job to the queue; raise to have it tried again later."""


class OutboxRelay:
    def __init__(self, db: Database, dispatcher: Dispatcher, *, batch: int = 100) -> None:
        self.db = db
        self.dispatcher = dispatcher
        self.batch = batch

    def relay_once(self) -> int:
        with self.db.engine.connect() as conn:
            pending = conn.execute(
                select(OutboxMessage.id, OutboxMessage.topic, OutboxMessage.job_id)
                .where(OutboxMessage.dispatched_at.is_(None))
                .order_by(OutboxMessage.id)
                .limit(self.batch)
            ).all()
        sent = 0
        for msg_id, topic, job_id in pending:
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
                s.execute(update(OutboxMessage).where(OutboxMessage.id == msg_id).values(dispatched_at=now, attempts=OutboxMessage.attempts + 1))
                if job_id is not None:
                    s.execute(
                        update(Job)
                        .where(Job.id == job_id, Job.status == JobStatus.PENDING.value)
                        .values(status=JobStatus.QUEUED.value, queued_at=now)
                    )
            sent += 1
        return sent


def load_dispatcher(spec: str, **kwargs: object) -> Dispatcher:
    """Load ``module:Class`` and instantiate it with kwargs (the composition root's choice)."""
    module_name, _, attr = spec.partition(":")
    if not attr:
        raise ValueError(f"dispatcher {spec!r} is not of the form module:Class")
    cls = getattr(importlib.import_module(module_name), attr)
    dispatcher = cls(**kwargs)
    if not isinstance(dispatcher, Dispatcher):
        raise TypeError(f"{spec} does not implement dispatch(topic, job_id)")
    return dispatcher
