"""The Celery app, apart from its tasks.

Broker from settings (DICOM_NODE_BROKER_URL): Redis in production; without one, kombu's
SQLAlchemy transport on a SQLite file under the data dir, so one machine runs everything with
nothing else installed. Late acknowledgement and a visibility timeout: a worker killed in the
middle of a job does not lose it.
"""

from __future__ import annotations

from celery import Celery

from dicom_node.settings import Settings

ANALYSE_TASK = "worker.tasks.analyse"
EXPORT_TASK = "worker.tasks.export"


def make_celery(settings: Settings) -> Celery:
    broker = settings.effective_broker_url
    if broker.startswith("sqla+sqlite"):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    app = Celery("dicom_node", broker=broker, include=["worker.tasks"])
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_serializer="json",
        accept_content=["json"],
        result_backend=None,
        task_ignore_result=True,
        broker_connection_retry_on_startup=True,
        # Redis: an unacknowledged task goes back to the queue after this long (a killed worker).
        broker_transport_options=(
            {"visibility_timeout": settings.worker.visibility_timeout_seconds} if broker.startswith(("redis", "rediss")) else {}
        ),
        worker_hijack_root_logger=False,
        task_default_queue="dicom-node",
    )
    return app
