"""The Celery app, apart from its tasks.

Broker from settings (DICOM_NODE_BROKER_URL): RabbitMQ (``amqp://``, Celery's recommended broker)
or Redis in production; without one, kombu's SQLAlchemy transport on a SQLite file under the data
dir, so one machine runs everything with nothing else installed. Late acknowledgement (and, for
Redis, a visibility timeout): a worker killed in the middle of a job does not lose it.

What each broker does with a message whose worker was killed (SIGKILL, power loss):

- RabbitMQ puts every unacknowledged message of a consumer back in its queue the moment the
  consumer's connection closes, marked redelivered. The queues are quorum queues (durable,
  replicated on a cluster, kept on disk: a restarted broker still has them), on topic exchanges
  so that Celery's countdowns (a task's retry while the database is away) use RabbitMQ's native
  delayed delivery; messages are persistent and published with confirms (the outbox marks a
  message sent only once the broker has it). RabbitMQ closes a channel whose message stays
  unacknowledged longer than its ``consumer_timeout`` (30 min by default): a job must finish
  sooner, or the setting be raised on the broker.

- Redis keeps every delivered, unacknowledged message; once it is older than
  ``worker.visibility_timeout_seconds``, the next sweep of a running worker (every
  ``unacked_restore_interval`` seconds, set here to a quarter of the timeout, at most 10 s, with
  every sweep scanning) puts it back in the queue, marked redelivered. A worker starting up
  sweeps at once.
- kombu's SQLAlchemy transport marks a message invisible when it delivers it and keeps the
  acknowledgement in the worker's memory only: a clean shutdown puts unacknowledged messages
  back, a killed worker loses them. The database state covers that: ``serve`` requeues a running
  job whose heartbeat stopped (dicom_node.jobs.analyses.recover_lost) and re-sends stale exports
  (dicom_node.jobs.exports.dispatch_due), each through the outbox.

Either way the job state machine (dicom_node.jobs.analyses) makes a second delivery harmless.

Two queues: exports first, so finished results do not wait behind analyses in the queue.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from celery import Celery
from kombu import Connection, Exchange, Queue

from dicom_node.commands.common import redact
from dicom_node.errors import Unavailable
from dicom_node.settings import Settings, load_settings

ANALYSE_TASK = "worker.tasks.analyse"
EXPORT_TASK = "worker.tasks.export"
# The app's configuration key under which make_celery keeps the node's validated settings.
SETTINGS_KEY = "dicom_node_settings"
ANALYSE_QUEUE = "dicom-node"
EXPORT_QUEUE = "dicom-node-export"


def is_redis(broker_url: str) -> bool:
    return broker_url.startswith(("redis://", "rediss://", "redis+socket://"))


def is_amqp(broker_url: str) -> bool:
    return broker_url.startswith(("amqp://", "amqps://", "pyamqp://"))


def is_sqlalchemy(broker_url: str) -> bool:
    return broker_url.startswith(("sqla+", "sqlalchemy+"))


def transport_options(settings: Settings) -> dict[str, Any]:
    broker = settings.effective_broker_url
    if is_redis(broker):
        timeout = settings.worker.visibility_timeout_seconds
        return {
            "visibility_timeout": timeout,
            "unacked_restore_interval": max(1, min(10, timeout // 4)),
            "unacked_restore_throttle": 1,
        }
    if is_amqp(broker):
        # Publisher confirms: send_task returns once RabbitMQ has taken the message.
        return {"confirm_publish": True}
    if broker.startswith("sqla+sqlite"):
        # Passed to create_engine by kombu: wait for the file's write lock as long as the node's
        # own database does (several processes share the file). kombu hands every option to
        # create_engine, so its virtual-transport "polling_interval" can not be set here: a
        # message waits up to its default 1 s to be picked up.
        return {"connect_args": {"timeout": 30}}
    return {}


def queues(broker: str) -> list[Queue]:
    """Each queue its own exchange and routing key (queues declared by name alone share the
    default ones, and every message would reach both). RabbitMQ: durable quorum queues on topic
    exchanges (see the module docstring); the others: direct exchanges."""
    if is_amqp(broker):
        return [
            Queue(
                name,
                Exchange(name, type="topic", durable=True),
                routing_key=name,
                durable=True,
                queue_arguments={"x-queue-type": "quorum"},
            )
            for name in (EXPORT_QUEUE, ANALYSE_QUEUE)
        ]
    return [Queue(name, Exchange(name, type="direct"), routing_key=name) for name in (EXPORT_QUEUE, ANALYSE_QUEUE)]


class BrokerUnavailable(Unavailable):
    """The broker did not answer at start; the message names it (without a password) and the fix."""


def check_broker(settings: Settings, timeout: float = 5.0) -> None:
    """Connect to the broker once; raise BrokerUnavailable, saying what to do, if that fails.

    ``serve`` (through the dispatcher) and ``worker`` call it at start, so a mistyped or stopped
    broker is one clear line instead of endless reconnection messages."""
    url = settings.effective_broker_url
    shown = redact(url)
    if url.startswith("sqla+sqlite:///"):
        folder = Path(url.removeprefix("sqla+sqlite:///")).expanduser().parent
        if not folder.is_dir():
            raise BrokerUnavailable(
                f"broker {shown}: the folder {folder} does not exist; create it or correct broker_url "
                "(DICOM_NODE_BROKER_URL)"
            )
    connection = Connection(url, connect_timeout=timeout, transport_options=transport_options(settings))
    try:
        connection.ensure_connection(
            max_retries=1, interval_start=0, interval_step=0.5, interval_max=0.5, timeout=timeout
        )
    except Exception as exc:  # kombu raises its transports' own errors
        reason = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__).rstrip(".")
        raise BrokerUnavailable(
            f"cannot reach the broker {shown}: {reason}; is it running, and is broker_url (DICOM_NODE_BROKER_URL) "
            "right?"
        ) from exc
    finally:
        connection.release()


def make_celery(settings: Settings) -> Celery:
    broker = settings.effective_broker_url
    if broker.startswith("sqla+sqlite"):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    app = Celery("dicom_node", broker=broker, include=["worker.tasks"])
    app.conf.update(
        {SETTINGS_KEY: settings},
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_serializer="json",
        accept_content=["json"],
        result_backend=None,
        task_ignore_result=True,
        broker_connection_retry_on_startup=True,
        broker_transport_options=transport_options(settings),
        worker_hijack_root_logger=False,
        task_default_queue=ANALYSE_QUEUE,
        task_queues=queues(broker),
        task_routes={
            EXPORT_TASK: {"queue": EXPORT_QUEUE, "exchange": EXPORT_QUEUE, "routing_key": EXPORT_QUEUE},
            ANALYSE_TASK: {"queue": ANALYSE_QUEUE, "exchange": ANALYSE_QUEUE, "routing_key": ANALYSE_QUEUE},
        },
        # Children load torch and the model before they report for work.
        worker_proc_alive_timeout=120.0,
        # Remote control needs fanout exchanges, which the SQLAlchemy transport lacks.
        worker_enable_remote_control=is_redis(broker) or is_amqp(broker),
        worker_send_task_events=False,
    )
    return app


def settings_of(app: Celery) -> Settings:
    """The settings make_celery gave ``app``; a worker started without them (``celery -A``)
    loads them from the environment and the config file."""
    settings = app.conf.get(SETTINGS_KEY)
    return settings if isinstance(settings, Settings) else load_settings()
