"""The node's internal endpoints for workers on other hosts (dicom_node.admin.internal), served by
the real admin app over SQLite and PostgreSQL: the token rule (absent: no endpoints; wrong: 401),
the data dir's id, a stored instance by its indexed path only, a job's result files read and
written (names outside the result layout and unknown jobs refused), and the client side
(dicom_node.pipeline.remote.NodeFiles) fetching a series and results into a worker's own data dir,
then forgetting the series. The whole path with a worker subprocess is tests/e2e/test_remote.py."""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import httpx
import pytest

from dicom_node.admin.server import AdminServerThread
from dicom_node.db import Database, upgrade
from dicom_node.db.models import Instance, Job, Series
from dicom_node.db.times import utcnow
from dicom_node.jobs.states import JobStatus, SeriesStatus
from dicom_node.pipeline.remote import NodeFiles, RemoteError, StoredRef
from dicom_node.settings import RemoteSettings, Settings
from dicom_node.storage.identity import data_dir_id
from dicom_node.storage.results import JobArtefacts
from model.contract.uids import derived_uid
from tests.admin.conftest import make_settings
from tests.harness.peers import wait_until

TOKEN = "internal-token-for-tests-0123456789"


def _serve(settings: Settings, db: Database) -> AdminServerThread:
    server = AdminServerThread(settings, db)
    server.start()
    wait_until(lambda: server.started or not server.is_alive(), 30, "the admin app to start")
    assert server.started
    return server


@pytest.fixture
def node(database_url: str, tmp_path: Path) -> Iterator[tuple[Settings, Database, int, str]]:
    """The admin app with remote.token set, a series of two stored instances and a done job;
    yields (settings, db, job id, the first instance's relative path)."""
    settings = make_settings(tmp_path / "node-data", database_url, remote={"token": TOKEN})
    upgrade(database_url)
    db = Database(database_url)
    study, series_uid = derived_uid("internal", "study"), derived_uid("internal", "series")
    with db.session() as s:
        series = Series(
            series_uid=series_uid,
            study_uid=study,
            modality="CT",
            instances=2,
            frames=2,
            status=SeriesStatus.COMPLETE.value,
        )
        s.add(series)
        s.flush()
        paths = []
        for i in range(2):
            sop = derived_uid("internal", f"sop{i}")
            rel = f"{study}/{series_uid}/{sop}.dcm"
            data = f"instance {i} ".encode() * (1000 + i)
            (settings.storage_dir / rel).parent.mkdir(parents=True, exist_ok=True)
            (settings.storage_dir / rel).write_bytes(data)
            s.add(
                Instance(
                    series_id=series.id,
                    sop_instance_uid=sop,
                    sop_class_uid="1.2.840.10008.5.1.4.1.1.2",
                    transfer_syntax_uid="1.2.840.10008.1.2.1",
                    path=rel,
                    size_bytes=len(data),
                )
            )
            paths.append(rel)
        job = Job(series_id=series.id, status=JobStatus.DONE.value, started_at=utcnow(), finished_at=utcnow())
        s.add(job)
        s.flush()
        job_id, first = job.id, paths[0]
    server = _serve(settings, db)
    yield settings, db, job_id, first
    server.stop()
    server.join(15)
    db.dispose()


def _remote(node: Settings, token: str) -> RemoteSettings:
    return RemoteSettings.model_validate({"node_url": f"http://127.0.0.1:{node.admin_port}", "token": token})


def _client(settings: Settings, token: str | None = TOKEN) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return httpx.Client(base_url=f"http://127.0.0.1:{settings.admin_port}/internal/v1", headers=headers, timeout=30)


def test_the_token_rule(node: tuple[Settings, Database, int, str]) -> None:
    settings, _, _, first = node
    assert _client(settings, None).get("/identity").status_code == 401
    assert _client(settings, "x" * 40).get(f"/storage/{first}").status_code == 401
    identity = _client(settings).get("/identity")
    assert identity.status_code == 200 and identity.json()["data_dir_id"] == data_dir_id(settings.data_dir)
    assert "/internal/v1/identity" not in httpx.get(f"http://127.0.0.1:{settings.admin_port}/health").text


def test_no_token_configured_means_no_endpoints(database_url: str, tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "plain", database_url)
    upgrade(database_url)
    db = Database(database_url)
    server = _serve(settings, db)
    try:
        assert _client(settings, TOKEN).get("/identity").status_code == 404
    finally:
        server.stop()
        server.join(15)
        db.dispose()


def test_instances_by_indexed_path_only_and_result_files(node: tuple[Settings, Database, int, str]) -> None:
    settings, _, job_id, first = node
    http = _client(settings)
    got = http.get(f"/storage/{first}")
    assert got.status_code == 200 and got.content == (settings.storage_dir / first).read_bytes()
    (settings.storage_dir / "stray.dcm").write_bytes(b"not indexed")
    assert http.get("/storage/stray.dcm").status_code == 404
    assert http.get("/storage/../node-id").status_code == 404

    assert http.put(f"/results/{job_id}/dicom/sr/1.2.3.dcm", content=b"sr bytes").status_code == 204
    assert (settings.results_dir / str(job_id) / "dicom/sr/1.2.3.dcm").read_bytes() == b"sr bytes"
    assert http.get(f"/results/{job_id}/dicom/sr/1.2.3.dcm").content == b"sr bytes"
    assert http.put(f"/results/{job_id}/../../escape.dcm", content=b"x").status_code == 404
    assert http.put(f"/results/{job_id}/notes.txt", content=b"x").status_code == 404
    assert http.put(f"/results/{job_id + 1000}/result.json", content=b"{}").status_code == 404
    assert not (settings.results_dir / str(job_id + 1000)).exists()


def test_a_worker_with_its_own_disk_fetches_uploads_and_forgets(
    node: tuple[Settings, Database, int, str], tmp_path: Path
) -> None:
    settings, db, job_id, _ = node
    worker = Settings(
        data_dir=tmp_path / "worker-data", database_url=settings.database_url, remote=_remote(settings, TOKEN)
    )
    files = NodeFiles(worker)
    with db.reader() as conn:
        refs = [
            StoredRef(p, n)
            for p, n in conn.execute(Instance.__table__.select().with_only_columns(Instance.path, Instance.size_bytes))
        ]
    paths, fetched = files.series(refs)
    assert not files.shared and fetched == paths
    assert [p.read_bytes() for p in paths] == [(settings.storage_dir / r.path).read_bytes() for r in refs]
    again, fetched_again = files.series(refs)
    assert again == paths and fetched_again == [], "a file already here is not fetched again"
    files.forget(fetched)
    assert not any(p.exists() for p in paths) and not any(worker.storage_dir.rglob("*.dcm"))

    mine = JobArtefacts(worker.results_dir, job_id)
    (mine.root / "dicom" / "seg").mkdir(parents=True)
    (mine.root / "dicom" / "seg" / "1.2.9.dcm").write_bytes(b"seg bytes")
    (mine.root / "result.json").write_bytes(b'{"decision": "cap"}')
    assert files.upload_results(mine) == 2
    assert (settings.results_dir / str(job_id) / "dicom/seg/1.2.9.dcm").read_bytes() == b"seg bytes"

    other = Settings(
        data_dir=tmp_path / "other-worker", database_url=settings.database_url, remote=_remote(settings, TOKEN)
    )
    theirs = JobArtefacts(other.results_dir, job_id)
    assert NodeFiles(other).results(theirs, [Path(f"{job_id}/dicom/seg/1.2.9.dcm")]) == 1
    assert theirs.absolute(f"{job_id}/dicom/seg/1.2.9.dcm").read_bytes() == b"seg bytes"

    wrong = Settings(data_dir=tmp_path / "w3", remote=_remote(settings, "y" * 20))
    with pytest.raises(RemoteError, match="HTTP 401"):
        NodeFiles(wrong).series(refs)


def test_a_worker_on_the_nodes_own_data_dir_fetches_nothing(node: tuple[Settings, Database, int, str]) -> None:
    settings, db, _, first = node
    same = Settings(data_dir=settings.data_dir, database_url=settings.database_url, remote=_remote(settings, TOKEN))
    (settings.storage_dir / first).unlink()  # even a file missing here is not fetched: the volume is the node's
    files = NodeFiles(same)
    paths, fetched = files.series([StoredRef(first, 1)])
    assert files.shared and fetched == [] and paths == [settings.storage_dir / first]
