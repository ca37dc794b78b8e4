"""Upgrading a node's database made by the previous release, with data in every table, to the
current head, on SQLite and on PostgreSQL.

The previous release's schema is revision RELEASE (the head when the node last shipped): the test
makes it with that revision's migrations, fills it as that release's code did (plain SQL, no model of
today), migrates to the head and checks that every row is there and reads through today's models,
with what the new revisions add (a destination's outputs named, a series' size from its instances,
nothing purged). The schema against the models (no drift) is tests/db/test_migrations.py.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy import select

from dicom_node.db import Database
from dicom_node.db.engine import upgrade
from dicom_node.db.models import (
    AuditEntry,
    Destination,
    Event,
    Export,
    Instance,
    Job,
    LocalAE,
    OutboxMessage,
    Series,
    Source,
    User,
)
from dicom_node.settings import Settings
from dicom_node.storage.retention import Retention

RELEASE = "0004"
WHEN = dt.datetime(2026, 11, 30, 12, 0, 0)

# The previous release's rows, as its code wrote them (one per table that holds data).
ROWS: list[tuple[str, dict[str, object]]] = [
    ("local_aes", {
        "id": 1, "title": "COVIDNODE", "port": 11112, "enabled": True, "quiet_seconds": 5.0,
        "max_wait_seconds": 1800.0, "filters": {}, "extra_sop_classes": [], "return_to_caller": False,
        "require_known_source": True, "description": "", "created_at": WHEN, "updated_at": WHEN,
        "listen_error": "", "listen_error_at": None,
    }),
    ("sources", {
        "id": 1, "title": "STORESCU", "host": None, "port": None, "enabled": True, "description": "",
        "created_at": WHEN, "updated_at": WHEN,
    }),
    ("destinations", {
        "id": 1, "title": "PACS", "host": "127.0.0.1", "port": 4242, "tls": False, "outputs": [],
        "enabled": True, "description": "", "created_at": WHEN, "updated_at": WHEN,
    }),
    ("local_ae_destinations", {"local_ae_id": 1, "destination_id": 1}),
    ("series", {
        "id": 1, "series_uid": "2.25.1", "study_uid": "2.25.2", "local_ae_id": 1, "calling_ae": "STORESCU",
        "calling_host": "127.0.0.1", "patient_id": "P1", "modality": "CT", "body_part": "CHEST",
        "series_description": "chest", "series_number": 1, "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2",
        "image_type": "ORIGINAL\\PRIMARY\\AXIAL", "instances": 2, "frames": 2, "status": "complete", "reason": "",
        "generation": 0, "first_received_at": WHEN, "opened_at": WHEN, "last_received_at": WHEN,
        "completed_at": WHEN,
    }),
    ("instances", {
        "id": 1, "series_id": 1, "sop_instance_uid": "2.25.3", "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2",
        "transfer_syntax_uid": "1.2.840.10008.1.2.1", "instance_number": 1, "frames": 1,
        "path": "2.25.2/2.25.1/2.25.3.dcm", "size_bytes": 525_000, "received_at": WHEN,
    }),
    ("instances", {
        "id": 2, "series_id": 1, "sop_instance_uid": "2.25.4", "sop_class_uid": "1.2.840.10008.5.1.4.1.1.2",
        "transfer_syntax_uid": "1.2.840.10008.1.2.1", "instance_number": 2, "frames": 1,
        "path": "2.25.2/2.25.1/2.25.4.dcm", "size_bytes": 525_000, "received_at": WHEN,
    }),
    ("jobs", {
        "id": 1, "series_id": 1, "generation": 0, "status": "done", "reason": "", "attempts": 1,
        "worker": "host:1", "created_at": WHEN, "queued_at": WHEN, "started_at": WHEN, "finished_at": WHEN,
        "heartbeat_at": None, "model_name": "hu2020", "model_version": "1", "decision": "covid",
        "result": {"decision": "covid"}, "timings": {"inference": 3.0}, "outputs": [],
    }),
    ("outbox", {
        "id": 1, "topic": "analyse", "job_id": 1, "payload": {}, "created_at": WHEN, "dispatched_at": WHEN,
        "attempts": 1, "last_error": "",
    }),
    ("exports", {
        "id": 1, "job_id": 1, "destination_id": 1, "destination_key": "dest:1", "title": "PACS",
        "host": "127.0.0.1", "port": 4242, "outputs": ["sr"], "status": "done", "attempts": 1,
        "objects_sent": 1, "next_attempt_at": None, "last_error": "", "created_at": WHEN, "updated_at": WHEN,
        "finished_at": WHEN,
    }),
    ("events", {
        "id": 1, "at": WHEN, "level": "info", "category": "series", "message": "complete", "calling_ae": "STORESCU",
        "calling_host": "127.0.0.1", "local_ae": "COVIDNODE",
    }),
    ("users", {
        "id": 1, "name": "admin", "password_hash": "$argon2id$v=19$m=65536,t=3,p=4$x$y", "role": "admin",
        "enabled": True, "created_at": WHEN, "updated_at": WHEN, "last_login_at": None,
    }),
    ("audit_log", {
        "id": 1, "at": WHEN, "actor": "admin", "via": "web", "action": "source.create", "target_type": "source",
        "target_id": "1", "target": "STORESCU", "before": None, "after": {"title": "STORESCU"}, "detail": "",
        "remote_addr": "127.0.0.1",
    }),
]  # fmt: skip


@pytest.fixture
def released(database_url: str) -> Iterator[str]:
    """A database at the previous release's revision, with its rows."""
    upgrade(database_url, RELEASE)
    engine = sa.create_engine(database_url)
    try:
        meta = sa.MetaData()
        meta.reflect(engine)
        with engine.begin() as conn:
            for table, values in ROWS:
                conn.execute(meta.tables[table].insert().values(**values))
            if engine.dialect.name == "postgresql":  # the ids were given: move the sequences past them
                for table in {t for t, v in ROWS if "id" in v}:
                    conn.execute(sa.text(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), 100)"))
    finally:
        engine.dispose()
    yield database_url


def test_a_database_of_the_previous_release_migrates_to_head_with_its_data(released: str, tmp_path: Path) -> None:
    upgrade(released)
    db = Database(released)
    try:
        with db.session() as s:
            ae = s.scalars(select(LocalAE)).one()
            assert (ae.title, ae.port, ae.keep_images_days, [d.title for d in ae.destinations]) == (
                "COVIDNODE", 11112, None, ["PACS"],
            )  # fmt: skip
            assert s.scalars(select(Source.title)).all() == ["STORESCU"]
            assert s.scalars(select(Destination)).one().outputs == ["sr", "sc", "seg", "kos", "pm"]  # 0005
            series = s.scalars(select(Series)).one()
            assert (series.series_uid, series.status, series.instances) == ("2.25.1", "complete", 2)
            assert series.size_bytes == 1_050_000 and series.purged_at is None  # 0006: from its instances
            assert sorted(s.scalars(select(Instance.sop_instance_uid))) == ["2.25.3", "2.25.4"]
            job = s.scalars(select(Job)).one()
            assert (job.decision, job.result, job.timings) == ("covid", {"decision": "covid"}, {"inference": 3.0})
            assert s.scalars(select(Export.status)).one() == "done"
            assert s.scalars(select(OutboxMessage.topic)).one() == "analyse"
            assert s.scalars(select(Event.message)).one() == "complete"
            assert s.scalars(select(User.name)).one() == "admin"
            assert s.scalars(select(AuditEntry.after)).one() == {"title": "STORESCU"}
            # New rows get ids past the old ones.
            s.add(Source(title="OTHER"))
            s.flush()
        # Today's code reads it: the finished series is one retention may purge.
        settings = Settings(data_dir=tmp_path / "data", database_url=released)
        assert [f.series_uid for f in Retention(db, settings).finished()] == ["2.25.1"]
    finally:
        db.dispose()
