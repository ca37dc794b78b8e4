"""The Celery side of dicom_node.dispatch: hands outbox messages to the broker."""

from __future__ import annotations

from celery import Celery

from dicom_node.settings import Settings
from worker.celery_app import ANALYSE_TASK, EXPORT_TASK, make_celery

_TASKS = {"analyse": ANALYSE_TASK, "export": EXPORT_TASK}


class CeleryDispatcher:
    def __init__(self, settings: Settings, app: Celery | None = None) -> None:
        self.app = app or make_celery(settings)

    def dispatch(self, topic: str, job_id: int) -> None:
        try:
            task = _TASKS[topic]
        except KeyError:
            raise ValueError(f"no task for outbox topic {topic!r}") from None
        self.app.send_task(task, args=[job_id])
