"""The Celery side of dicom_node.jobs.outbox: a :class:`~dicom_node.jobs.outbox.Dispatcher` that
hands outbox messages to the broker as Celery tasks.

:meth:`CeleryDispatcher.housekeeping` is the broker's upkeep, run by ``serve`` about once a second:
for the SQLite-file broker it deletes messages delivered more than an hour ago (kombu's SQLAlchemy
transport never deletes them; an acknowledgement lives only in the worker's memory). Lost jobs and
due exports are not the dispatcher's business: ``serve`` schedules them itself, through the outbox
(dicom_node.service), whatever the dispatcher.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from typing import Any

from celery import Celery
from sqlalchemy import create_engine, text

from dicom_node.jobs.outbox import ANALYSE_TOPIC, EXPORT_TOPIC
from dicom_node.settings import Settings
from worker.celery_app import ANALYSE_TASK, EXPORT_TASK, check_broker, is_sqlalchemy, make_celery

log = logging.getLogger(__name__)

_TASKS = {ANALYSE_TOPIC: ANALYSE_TASK, EXPORT_TOPIC: EXPORT_TASK}
BROKER_CLEANUP_SECONDS = 600.0
BROKER_KEEP_DELIVERED = dt.timedelta(hours=1)


class CeleryDispatcher:
    def __init__(self, settings: Settings, app: Celery | None = None) -> None:
        self.settings = settings
        self.app = app or make_celery(settings)
        # serve starts only with a broker that answers (BrokerUnavailable says which and why).
        check_broker(settings)
        self._next_cleanup = time.monotonic() + 60.0
        self._broker_engine: Any = None

    def dispatch(self, topic: str, job_id: int) -> None:
        try:
            task = _TASKS[topic]
        except KeyError:
            raise ValueError(f"no task for outbox topic {topic!r}") from None
        self.app.send_task(task, args=[job_id])

    def housekeeping(self) -> None:
        """Broker clean-up, every ten minutes (see the module docstring)."""
        now = time.monotonic()
        if now >= self._next_cleanup:
            self._next_cleanup = now + BROKER_CLEANUP_SECONDS
            self.clean_broker()

    def clean_broker(self) -> int:
        """Delete delivered messages older than an hour from the SQLAlchemy broker's table."""
        url = self.settings.effective_broker_url
        if not is_sqlalchemy(url):
            return 0
        if self._broker_engine is None:
            self._broker_engine = create_engine(url.split("+", 1)[1])
        cutoff = dt.datetime.now() - BROKER_KEEP_DELIVERED  # kombu writes local naive times
        with self._broker_engine.begin() as conn:
            tables = set(conn.dialect.get_table_names(conn))
            if "kombu_message" not in tables:
                return 0
            deleted = conn.execute(
                text("DELETE FROM kombu_message WHERE visible = :false AND timestamp < :cutoff"),
                {"false": False, "cutoff": cutoff},
            ).rowcount
        if deleted:
            log.info("broker: deleted %d delivered message(s)", deleted)
        return int(deleted or 0)
