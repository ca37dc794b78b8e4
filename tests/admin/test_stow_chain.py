"""Two nodes chained by DICOMweb: an edge node's job results go to a destination of kind
``dicomweb`` (bearer token) that is a second node's STOW-RS input (``/dicomweb/<AE>/studies``).
The sending node is a worker's runtime in-process (the export state machine, the hand-made
predictor of tests/pipeline/test_pipeline.py) over its own data dir and SQLite database; the
receiving node is the admin app served by uvicorn over another data dir and database (SQLite and
PostgreSQL), its token on the AE's allow-list (tests/admin/conftest.py's stow fixture). Each side
is read back through its own database and storage.

Covers: the job's objects stored once each by the receiving node (index rows, one file each in
its storage layout, the data sets as sent) also when the same export is sent again, and left out
of analysis there by the AE's filters; a token not on the AE's allow-list (403), a revoked one
(401) and wrong URLs (404) refused for good by the sender at the first attempt; the receiving
node's 202 and 409 answers read per instance (0x0122, a SOP class the AE does not take: refused
for good; 0xA700, an instance over its size limit: retried) and the export failed or retried
as each says.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Iterator, Sequence

import pydicom
import pytest
from pydicom.uid import Comprehensive3DSRStorage, KeyObjectSelectionDocumentStorage, SegmentationStorage
from sqlalchemy import func, select

from dicom_node import configuration as c
from dicom_node.admin.auth import create_token, revoke_token
from dicom_node.db.models import Export, Instance, Job, LocalAE, Series, User
from dicom_node.db.times import utcnow
from dicom_node.jobs.completion import Completion
from dicom_node.jobs.exports import reexport
from dicom_node.jobs.states import ExportStatus, JobStatus
from dicom_node.pipeline.analyse import analyse
from dicom_node.pipeline.export import export_job
from dicom_node.pipeline.runtime import Runtime
from dicom_node.sending.dicomweb import WebPeer, stow_files
from dicom_node.sending.scu import Outcome
from dicom_node.settings import load_settings
from tests.admin.conftest import STOW_AE, AdminApp
from tests.pipeline.test_dicomweb_export import make_dicomweb, the_export
from tests.pipeline.test_pipeline import hand_made_runtime, job_row, store_series

pytestmark = pytest.mark.integration

OUTPUTS = ["sr", "seg", "kos"]
RESULT_CLASSES = [Comprehensive3DSRStorage, SegmentationStorage, KeyObjectSelectionDocumentStorage]


@pytest.fixture
def edge(tmp_path: Path) -> Iterator[Runtime]:
    """The sending node: its own data dir and database, beside the receiving node's."""
    root = tmp_path / "edge"
    root.mkdir()
    settings = load_settings(data_dir=root / "data", database_url=f"sqlite:///{root / 'edge.sqlite3'}")
    with hand_made_runtime(settings) as runtime:
        yield runtime


def stow_url(app: AdminApp, title: str = STOW_AE) -> str:
    """The receiving node's DICOMweb base for one local AE (``/studies`` follows it)."""
    return f"{app.url}/dicomweb/{title}"


def take(app: AdminApp, sop_classes: Sequence[str]) -> None:
    """Let the receiving AE take these SOP classes besides CT's."""
    with app.db.session() as s:
        row = s.scalar(select(LocalAE).where(LocalAE.title == STOW_AE))
        assert row is not None
        c.update_local_ae(s, row, c.parse(c.LocalAEPatch, {"extra_sop_classes": list(sop_classes)}))


def a_done_job(edge: Runtime, tmp_path: Path, url: str, token: str) -> tuple[int, int]:
    """A job analysed on the edge node, its results sent at once to ``url`` with ``token``:
    (job id, export id)."""
    job_id = store_series(edge, tmp_path / "edge", dest_port=1, dest_title="CENTRAL")
    make_dicomweb(edge, url, auth="bearer", token=token, outputs=OUTPUTS)
    assert analyse(edge, job_id) == JobStatus.DONE.value
    return job_id, the_export(edge, job_id).id


def sent_files(edge: Runtime, job_id: int) -> dict[str, Path]:
    """{SOP Instance UID: file} of the job's objects that the destination takes."""
    outputs = job_row(edge.db, job_id).outputs
    return {o["sop_instance_uid"]: edge.settings.results_dir / o["path"] for o in outputs if o["kind"] in OUTPUTS}


def held(app: AdminApp) -> dict[str, list[Path]]:
    """{SOP Instance UID: its index rows' files} on the receiving node: one entry per index row."""
    out: dict[str, list[Path]] = {}
    with app.db.session() as s:
        for row in s.scalars(select(Instance)):
            out.setdefault(row.sop_instance_uid, []).append(app.settings.storage_dir / row.path)
    return out


def layout_files(app: AdminApp) -> list[Path]:
    return [p for p in app.settings.storage_dir.rglob("*.dcm") if ".incoming" not in p.parts]


def due_again(edge: Runtime, export_id: int) -> None:
    """As if the export's backoff had passed."""
    with edge.db.session() as s:
        row = s.get(Export, export_id)
        assert row is not None
        row.next_attempt_at = utcnow() - dt.timedelta(seconds=1)


def test_a_job_reaches_the_receiving_node_once_also_when_sent_again(
    stow: tuple[AdminApp, str, int], edge: Runtime, tmp_path: Path
) -> None:
    app, token, _ = stow
    take(app, RESULT_CLASSES)
    job_id, export_id = a_done_job(edge, tmp_path, stow_url(app), token)
    export = the_export(edge, job_id)
    assert (export.status, export.attempts, export.kind) == (ExportStatus.DONE.value, 1, "dicomweb"), export.last_error
    files = sent_files(edge, job_id)
    assert len(files) >= 3 and export.objects_sent == len(files)
    classes = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPClassUID) for p in files.values()}
    assert classes == set(RESULT_CLASSES)

    def check_held_once() -> None:
        index = held(app)
        assert sorted(index) == sorted(files), "the job's objects, nothing else"
        assert all(len(paths) == 1 for paths in index.values()), "one index row each"
        assert sorted(layout_files(app)) == sorted(p for paths in index.values() for p in paths), "one file each"
        for uid, path in files.items():
            sent, kept = pydicom.dcmread(path), pydicom.dcmread(index[uid][0])
            assert kept == sent, "the data set as sent"
            assert kept.file_meta.SourceApplicationEntityTitle == "STOW-RS"
        with app.db.session() as s:
            counted = s.scalar(select(func.sum(Series.instances)))
        assert counted == len(files), "the series' instance counts"

    check_held_once()

    # Sent again: an admin's re-export through the export state machine, then the same batch by
    # the STOW-RS client alone (what a retry after a lost answer sends).
    assert reexport(edge.db, job_id, default_outputs=["sr"]) == [export_id]
    assert export_job(edge, job_id) == {export_id: ExportStatus.DONE.value}
    check_held_once()
    again = stow_files(list(files.values()), WebPeer("CENTRAL", stow_url(app), auth="bearer", token=token))
    assert again.outcome is Outcome.SUCCESS and again.sent == len(files), again.reason
    check_held_once()

    # The receiving node completes the results' series and leaves them out of analysis (its AE
    # analyses CT).
    done = Completion(app.db, app.settings.completion, storage_dir=app.settings.storage_dir).run_once(
        utcnow() + dt.timedelta(seconds=5)
    )
    assert done and not any(d.analysed for d in done), done
    with app.db.session() as s:
        assert s.scalar(select(Job)) is None


def test_a_token_the_ae_does_not_allow_and_wrong_urls_are_refused_for_good(
    stow: tuple[AdminApp, str, int], edge: Runtime, tmp_path: Path
) -> None:
    app, token, token_id = stow
    take(app, RESULT_CLASSES)
    with app.db.session() as s:  # another token of the same sender, not on the AE's allow-list
        scanner = s.scalar(select(User).where(User.name == "scanner"))
        assert scanner is not None
        _, other = create_token(s, scanner, "another AE's", created_by="pytest")

    job_id, export_id = a_done_job(edge, tmp_path, stow_url(app), other)

    def refused_at_once(status: str) -> str:
        export = the_export(edge, job_id)
        assert (export.status, export.attempts) == (ExportStatus.FAILED.value, 1), export.last_error
        assert export.last_error.startswith("refused (not retried): ") and status in export.last_error
        due_again(edge, export_id)
        assert export_job(edge, job_id) == {}, "a failed export is not sent again by itself"
        assert the_export(edge, job_id).attempts == 1
        return export.last_error

    error = refused_at_once("HTTP 403 Forbidden")
    assert "--stow-tokens" in error, error  # the receiving node's reason, as it said it

    wrong_urls = {
        stow_url(app, "NOSUCHAE"): "HTTP 404 Not Found",  # no such local AE
        # Orthanc's path: not the STOW-RS input, all that a sender's token reaches.
        f"{app.url}/dicom-web": "HTTP 403 Forbidden",
    }
    for url, status in wrong_urls.items():
        make_dicomweb(edge, url, auth="bearer", token=token)
        assert reexport(edge.db, job_id, default_outputs=OUTPUTS) == [export_id]
        assert export_job(edge, job_id) == {export_id: ExportStatus.FAILED.value}
        refused_at_once(status)

    with app.db.session() as s:
        revoke_token(s, token_id, revoked_by="pytest")
    make_dicomweb(edge, stow_url(app), auth="bearer", token=token)
    assert reexport(edge.db, job_id, default_outputs=OUTPUTS) == [export_id]
    assert export_job(edge, job_id) == {export_id: ExportStatus.FAILED.value}
    refused_at_once("HTTP 401 Unauthorized")
    assert held(app) == {} and layout_files(app) == []


def test_the_receiving_nodes_failures_are_read_per_instance(
    stow: tuple[AdminApp, str, int], edge: Runtime, tmp_path: Path
) -> None:
    app, token, _ = stow
    take(app, [Comprehensive3DSRStorage])  # the SR, not the SEG nor the KOS
    job_id, export_id = a_done_job(edge, tmp_path, stow_url(app), token)
    files = sent_files(edge, job_id)
    by_class = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPClassUID): uid for uid, p in files.items()}
    sr = by_class[Comprehensive3DSRStorage]

    # 202: the SR stored, the others refused with 0x0122, which sending again would meet again.
    export = the_export(edge, job_id)
    assert (export.status, export.attempts, export.objects_sent) == (ExportStatus.FAILED.value, 1, 1)
    assert f"1 of {len(files)} objects stored" in export.last_error, export.last_error
    assert "FailureReason SOP_CLASS_NOT_SUPPORTED (0x0122)" in export.last_error
    assert "HTTP 202 Accepted" in export.last_error
    assert sorted(held(app)) == [sr]

    peer = WebPeer("CENTRAL", stow_url(app), auth="bearer", token=token)
    result = stow_files(list(files.values()), peer)
    per_instance = {o.sop_instance_uid: (o.outcome, o.status) for o in result.objects}
    expected = {uid: (Outcome.SUCCESS, 0) if uid == sr else (Outcome.PERMANENT, 0x0122) for uid in files}
    assert per_instance == expected, per_instance
    assert (result.outcome, result.sent) == (Outcome.PERMANENT, 1)

    # 409: nothing stored (the SR stored already, sent alone is a 200; the others alone a 409).
    others = [p for uid, p in files.items() if uid != sr]
    conflict = stow_files(others, peer)
    assert conflict.outcome is Outcome.PERMANENT and conflict.sent == 0, conflict.reason
    assert "HTTP 409 Conflict" in conflict.reason
    assert {o.status for o in conflict.objects} == {0x0122}


def test_an_instance_over_the_receiving_nodes_limit_is_retried(
    stow: tuple[AdminApp, str, int], edge: Runtime, tmp_path: Path
) -> None:
    """0xA700 (a data set over the receiving node's listener.max_dataset_bytes) for one instance:
    the others stored, the export retried, and a retry (the whole batch again) stores nothing
    twice."""
    app, token, _ = stow
    take(app, RESULT_CLASSES)
    # Read by the app's receiver, made at its first STOW-RS request (below): the SEG and the KOS
    # (a few kB) fit, the SR (over 16 kB, checked below) does not.
    app.settings.listener.max_dataset_bytes = 16 * 1024
    job_id, export_id = a_done_job(edge, tmp_path, stow_url(app), token)
    files = sent_files(edge, job_id)
    by_class = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPClassUID): uid for uid, p in files.items()}
    sr = by_class[Comprehensive3DSRStorage]
    assert files[sr].stat().st_size > 16 * 1024 > max(p.stat().st_size for uid, p in files.items() if uid != sr)

    export = the_export(edge, job_id)
    assert (export.status, export.attempts, export.objects_sent) == (ExportStatus.RETRYING.value, 1, len(files) - 1)
    assert "FailureReason OUT_OF_RESOURCES (0xA700)" in export.last_error, export.last_error
    assert export.next_attempt_at is not None
    assert sorted(held(app)) == sorted(set(files) - {sr})

    # The retry sends the whole batch again: the instances stored before are stored once still.
    due_again(edge, export_id)
    assert export_job(edge, job_id) == {export_id: ExportStatus.RETRYING.value}
    export = the_export(edge, job_id)
    assert (export.attempts, export.objects_sent) == (2, len(files) - 1), export.last_error
    index = held(app)
    assert sorted(index) == sorted(set(files) - {sr}) and all(len(paths) == 1 for paths in index.values())
    assert len(layout_files(app)) == len(files) - 1
