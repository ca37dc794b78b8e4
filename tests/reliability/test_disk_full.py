"""A small disk filled with a stream of studies, with jobs pending (retention,
dicom_node.storage.retention): `serve` with two listener processes and its data dir on a tmpfs of
DISK_MB, DCMTK's storescu sending study after study, several times the disk's size in all.

Half of the studies go to an AE whose series are analysed: no worker runs, their jobs stay queued,
so they are never finished and must never be purged. The other half go to an AE whose filters
select nothing: those series are finished when they complete and may go. Two ways the room is
made, each on SQLite and PostgreSQL: `serve` purging over the high water mark (checking every
half second; the sender waits after each round until the use is under the mark again, as
storescu on this machine fills the space between serve's mark and the listeners' in less than
serve's second), and the listeners alone (serve's check a once-an-hour affair) purging before a
C-STORE would be refused. Checked: no C-STORE answered 0xA700, the disk purged several times,
every purged series a finished one, every unfinished series whole, every purge in the events,
the audit log and the counters.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Iterator

import pydicom
import pytest
from pydicom.uid import generate_uid
from sqlalchemy import select

from dicom_node.db import Database
from dicom_node.db.models import AuditEntry, Event, Job, LocalAE, Series
from dicom_node.jobs.states import JobStatus, SeriesStatus
from dicom_node.storage.retention import SERIES_PURGED, counters
from model.phantoms.writer import write_phantom_series
from tests.harness.peers import NodeProcess, cli, free_port, node_env, storescu, wait_until

pytestmark = pytest.mark.integration

DISK_MB = 320
MIN_FREE_MB = 24
ROUNDS = 24
HIGH_WATER, LOW_WATER = 60, 40  # percent; a round sends 20 MB (6 %), the unfinished series 96 MB in all (30 %)


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of DISK_MB (the tests run as root: tests/run)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_MB}m", "tmpfs", str(mount)], capture_output=True)
    assert done.returncode == 0, f"cannot mount a tmpfs (root needed): {done.stderr.decode()}"
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _studies(template: Path, out: Path, count: int) -> list[Path]:
    """``count`` copies of the series in ``template``, each a study of its own (new UIDs)."""
    files = sorted(template.glob("*.dcm"))
    datasets = [pydicom.dcmread(f) for f in files]
    studies = []
    for n in range(count):
        folder = out / f"study{n:03d}"
        folder.mkdir(parents=True)
        study, series = generate_uid(), generate_uid()
        for i, ds in enumerate(datasets):
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
            ds.save_as(folder / f"{i:03d}.dcm", enforce_file_format=True)
        studies.append(folder)
    return studies


@pytest.mark.parametrize("who_purges", ["serve", "listeners"])
def test_a_full_disk_purges_only_finished_studies_and_never_refuses_while_it_can(
    tmp_path: Path, disk: Path, database_url: str, who_purges: str
) -> None:
    analysed_port, archive_port = free_port(), free_port()
    env = node_env(
        disk / "data",
        database_url=database_url,
        admin_port=free_port(),
        listener__processes=2,
        listener__reload_seconds=0.5,
        # A listener makes room when a data set's next 64 MB (dicom_node.storage.spool) would leave less
        # than min_free: with serve purging, at 79 % of the disk, well above serve's mark (one round
        # can never cross both); alone, the listeners purge before 88 MB are left.
        listener__min_free_disk_mb=4 if who_purges == "serve" else MIN_FREE_MB,
        completion__poll_seconds=0.2,
        retention__high_water_percent=HIGH_WATER,
        retention__low_water_percent=LOW_WATER,
        retention__check_seconds=0.5 if who_purges == "serve" else 3600,
    )
    cli(env, "db", "upgrade")
    cli(env, "ae", "add-local", "ANALYSED", "--port", str(analysed_port), "--quiet-seconds", "0.5")
    cli(
        env, "ae", "add-local", "ARCHIVE", "--port", str(archive_port), "--quiet-seconds", "0.5",
        "--filters", '{"min_slices": 100000}',
    )  # fmt: skip
    cli(env, "ae", "add-source", "STORESCU")
    analysed_template = write_phantom_series(
        "normal", tmp_path / "a", seed=1, slices=8, rows=512, columns=512, write_masks=False
    )
    archive_template = write_phantom_series(
        "normal", tmp_path / "b", seed=2, slices=16, rows=512, columns=512, write_masks=False
    )
    analysed = _studies(analysed_template, tmp_path / "analysed", ROUNDS)
    archived = _studies(archive_template, tmp_path / "archive", 2 * ROUNDS)
    sent_bytes = sum(f.stat().st_size for folder in analysed + archived for f in folder.iterdir())
    assert sent_bytes > 1.5 * DISK_MB * 2**20  # the disk must be emptied several times over

    node = NodeProcess(env, ["serve"]).start()
    try:
        node.wait_for_port(analysed_port, timeout=300)  # the machine may be busy: a slow start is no failure here
        node.wait_for_port(archive_port, timeout=300)
        for n in range(ROUNDS):
            for folder, port, title in (
                (analysed[n], analysed_port, "ANALYSED"),
                (archived[2 * n], archive_port, "ARCHIVE"),
                (archived[2 * n + 1], archive_port, "ARCHIVE"),
            ):
                sent = storescu(folder, port, called=title)
                assert sent.returncode == 0, f"round {n}, {title}: {sent.stderr[-2000:]}\n{node.output()[-3000:]}"
            if who_purges == "serve":
                wait_until(lambda: _percent_used(disk) <= HIGH_WATER, 120, f"serve to purge under {HIGH_WATER} %")
        db = Database(database_url)
        try:
            # The last series complete (quiet period), then the analysed ones wait for a worker.
            wait_until(
                lambda: _count(db, Series.status == SeriesStatus.RECEIVING.value) == 0, 60, "every series to complete"
            )
            # A purge marks its series, then removes the files and writes its event: let the last one end.
            wait_until(lambda: _settled(db), 180, "the last purge to end")  # minutes on a loaded 2-core machine
            _check(db, disk, node.output(), who_purges)
        finally:
            db.dispose()
    finally:
        node.stop()


def _percent_used(disk: Path) -> float:
    usage = shutil.disk_usage(disk)
    return 100 * (usage.total - usage.free) / usage.total


def _count(db: Database, *where: object) -> int:
    with db.reader() as conn:
        return len(conn.execute(select(Series.id).where(*where)).all())  # type: ignore[arg-type]


def _settled(db: Database) -> bool:
    with db.reader() as conn:
        events = len(conn.scalars(select(Event.id).where(Event.category == "retention")).all())
    return events == _count(db, Series.purged_at.is_not(None))


def _check(db: Database, disk: Path, log: str, who_purges: str) -> None:
    assert "0xA700" not in log, [line for line in log.splitlines() if "0xA700" in line][:5]
    with db.reader() as conn:
        aes = dict(conn.execute(select(LocalAE.id, LocalAE.title)).all())
        rows = conn.execute(
            select(Series.id, Series.series_uid, Series.study_uid, Series.local_ae_id, Series.status, Series.purged_at)
        ).all()
        jobs = dict(conn.execute(select(Job.series_id, Job.status)).all())
        refused = conn.scalars(select(Event.message).where(Event.message.like("%0xA700%"))).all()
        purge_events = conn.scalars(select(Event.message).where(Event.category == "retention")).all()
        audit = conn.scalars(select(AuditEntry.actor).where(AuditEntry.action == "series.purge")).all()
        purged_count = counters(conn)[SERIES_PURGED]
    assert refused == []
    assert len(rows) == 3 * ROUNDS
    purged = [r for r in rows if r.purged_at is not None]
    # Several rounds of purging: the disk holds about a third of what was sent.
    assert len(purged) >= ROUNDS, f"{len(purged)} series purged"
    assert len(purge_events) == len(audit) == purged_count == len(purged)
    expected_actor = "retention (serve)" if who_purges == "serve" else "retention (listener"
    assert any(actor.startswith(expected_actor) for actor in audit), set(audit)
    for row in rows:
        folder = disk / "data" / "storage" / row.study_uid / row.series_uid
        files = list(folder.glob("*.dcm")) if folder.is_dir() else []
        if aes[row.local_ae_id] == "ANALYSED":
            # Never finished (no worker): never purged, every image kept.
            assert row.status == SeriesStatus.COMPLETE.value and jobs[row.id] in (
                JobStatus.PENDING.value,
                JobStatus.QUEUED.value,
            )
            assert row.purged_at is None and len(files) == 8, (row.series_uid, len(files))
        else:
            assert row.status == SeriesStatus.NOT_ANALYSED.value
            assert len(files) == (0 if row.purged_at is not None else 16), (row.series_uid, len(files))
