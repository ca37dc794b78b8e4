"""worker.dispatch.CeleryDispatcher with the SQLite-file broker, Redis and RabbitMQ (a private node):
each outbox topic reaches its own queue once (analyses and exports); on RabbitMQ the queues are
durable quorum queues; the SQLite broker's delivered messages are cleaned up after an hour.

Not covered: a worker consuming them (tests/e2e).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from dicom_node.settings import load_settings
from worker.celery_app import ANALYSE_QUEUE, EXPORT_QUEUE
from worker.dispatch import CeleryDispatcher

pytestmark = pytest.mark.integration


def _drain(dispatcher: CeleryDispatcher) -> dict[str, list[tuple[str, list[int]]]]:
    out: dict[str, list[tuple[str, list[int]]]] = {}
    with dispatcher.app.connection_for_read() as conn:
        for queue in dispatcher.app.conf.task_queues:
            bound = queue(conn.default_channel)
            while (message := bound.get(no_ack=True)) is not None:
                out.setdefault(queue.name, []).append((message.headers["task"], message.payload[0]))
    return out


@pytest.mark.parametrize("broker", ["sqlite", "redis", "rabbitmq"])
def test_each_topic_reaches_its_queue_once(tmp_path: Path, broker: str, request: pytest.FixtureRequest) -> None:
    broker_url = None
    if broker == "redis":
        broker_url = request.getfixturevalue("redis_url")
    elif broker == "rabbitmq":
        broker_url = request.getfixturevalue("rabbitmq").url
    settings = load_settings(data_dir=tmp_path, broker_url=broker_url)
    dispatcher = CeleryDispatcher(settings)
    dispatcher.dispatch("analyse", 1)
    dispatcher.dispatch("export", 2)
    assert _drain(dispatcher) == {
        ANALYSE_QUEUE: [("worker.tasks.analyse", [1])],
        EXPORT_QUEUE: [("worker.tasks.export", [2])],
    }
    with pytest.raises(ValueError, match="no task for outbox topic"):
        dispatcher.dispatch("nonsense", 3)
    if broker == "rabbitmq":
        queues = request.getfixturevalue("rabbitmq").queues()
        assert queues[ANALYSE_QUEUE] == queues[EXPORT_QUEUE] == ("quorum", True)


def test_delivered_messages_of_the_sqlite_broker_are_cleaned_up(tmp_path: Path) -> None:
    settings = load_settings(data_dir=tmp_path)
    dispatcher = CeleryDispatcher(settings)
    for job_id in (1, 2):
        dispatcher.dispatch("analyse", job_id)
    with dispatcher.app.connection_for_read() as conn:
        bound = dispatcher.app.conf.task_queues[1](conn.default_channel)
        assert bound.get(no_ack=True) is not None  # delivered: kept by kombu, invisible
    engine = create_engine(settings.effective_broker_url.split("+", 1)[1])
    with engine.begin() as c:
        assert c.execute(text("SELECT count(*) FROM kombu_message")).scalar() == 2
    assert dispatcher.clean_broker() == 0  # delivered less than an hour ago
    with engine.begin() as c:
        c.execute(
            text("UPDATE kombu_message SET timestamp = :t WHERE visible = 0"),
            {"t": dt.datetime.now() - dt.timedelta(hours=2)},
        )
    assert dispatcher.clean_broker() == 1
    with engine.begin() as c:
        assert c.execute(text("SELECT count(*) FROM kombu_message")).scalar() == 1  # the waiting one stays
    engine.dispose()
