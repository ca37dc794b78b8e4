"""STOW-RS input (dicom_node.admin.dicomweb, dicom_node.dicomweb.stow) against the admin app served
by uvicorn over a real database (SQLite and PostgreSQL) and the real storage, with real clients:
dicomweb-client (PyPI) and hand-made multipart bodies over httpx.

Covers: a series stored by dicomweb-client lands in the one storage layout and the index, then
completes and queues its job exactly as the same series sent through the C-STORE path does (job,
outbox message, priority); the per-AE allow-list of tokens (none, unknown, revoked, not allowed:
401/403; a token of role sender reaches nothing else); bad parts answered per instance with their
failure reason in the Failed SOP Sequence (not DICOM, an MR to a CT-only AE, a transfer syntax the
node does not take) and HTTP 200/202/409; an MR to an AE that takes MR stored and left out of
analysis by the AE's filters, as a C-STORE one is; the dicom+xml response; a body over
dicomweb.max_request_bytes refused 413 (by its Content-Length, and while streaming one without),
a data set over listener.max_dataset_bytes refused 0xA700; nothing of a refused instance left on
disk (.incoming/ empty, no file in the layout), and a log line and an event for each refusal.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
import xml.etree.ElementTree as ET
from io import BytesIO
from pathlib import Path
from typing import Iterator

import httpx
import pydicom
import pytest
from dicomweb_client.api import DICOMwebClient
from pydicom.dataset import Dataset
from pydicom.uid import UID, MRImageStorage
from sqlalchemy import select

from dicom_node import configuration as c
from dicom_node.admin import dicomweb
from dicom_node.admin.auth import revoke_token
from dicom_node.db.models import ApiToken, Event, Instance, Job, LocalAE, OutboxMessage, Series
from dicom_node.db.times import utcnow
from dicom_node.jobs.completion import Completion
from dicom_node.jobs.outbox import ANALYSE_TOPIC
from dicom_node.jobs.states import SeriesStatus
from dicom_node.listener.limits import PeerLog
from dicom_node.listener.scp import receiver_for
from dicom_node.storage.files import part10_header
from dicom_node.storage.index import LocalAESnapshot
from model.phantoms.phantom import make_phantom
from model.phantoms.writer import write_phantom_series
from tests.admin.conftest import STOW_AE, AdminApp
from tests.pydicom_files import pydicom_file

TITLE = STOW_AE


@pytest.fixture(autouse=True)
def refusals_logged(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each test sees its refusals logged: the rate limit's window starts afresh."""
    monkeypatch.setattr(dicomweb, "REFUSALS", PeerLog(dicomweb.log))


def phantom_files(folder: Path, seed: int = 7, slices: int = 4) -> list[Path]:
    phantom = make_phantom("covid", seed=seed, slices=slices, rows=48, columns=48)
    write_phantom_series(phantom, folder, write_masks=False)
    return sorted(folder.glob("*.dcm"))


def multipart(parts: list[bytes], boundary: str = "stow-test-boundary", part_type: str = "application/dicom") -> bytes:
    out = b""
    for data in parts:
        out += f"--{boundary}\r\nContent-Type: {part_type}\r\n\r\n".encode() + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


def post(app: AdminApp, token: str | None, body: bytes, *, title: str = TITLE, **headers: str) -> httpx.Response:
    all_headers = {"Content-Type": 'multipart/related; type="application/dicom"; boundary=stow-test-boundary'}
    if token is not None:
        all_headers["Authorization"] = f"Bearer {token}"
    all_headers.update(headers)
    with app.client() as http:
        return http.post(f"/dicomweb/{title}/studies", content=body, headers=all_headers)


def layout_files(app: AdminApp) -> list[Path]:
    root = app.settings.storage_dir
    return [p for p in root.rglob("*.dcm") if ".incoming" not in p.parts]


def incoming(app: AdminApp) -> list[Path]:
    return list((app.settings.storage_dir / ".incoming").glob("*"))


def events(app: AdminApp) -> list[str]:
    with app.db.session() as s:
        return [e.message for e in s.scalars(select(Event).order_by(Event.id))]


def failures(response: httpx.Response) -> dict[str, int]:
    ds = Dataset.from_json(response.json())
    return {str(i.ReferencedSOPInstanceUID): int(i.FailureReason) for i in ds.get("FailedSOPSequence", [])}


def stored(response: httpx.Response) -> list[str]:
    ds = Dataset.from_json(response.json())
    return [str(i.ReferencedSOPInstanceUID) for i in ds.get("ReferencedSOPSequence", [])]


def test_dicomweb_client_stores_a_series_that_completes_and_queues_a_job_as_c_store_does(
    stow: tuple[AdminApp, str, int], tmp_path: Path
) -> None:
    app, token, _ = stow
    files = phantom_files(tmp_path / "stow")
    datasets = [pydicom.dcmread(p) for p in files]
    client = DICOMwebClient(url=f"{app.url}/dicomweb/{TITLE}", headers={"Authorization": f"Bearer {token}"})
    answer = client.store_instances(datasets)
    uids = sorted(str(ds.SOPInstanceUID) for ds in datasets)
    assert sorted(str(i.ReferencedSOPInstanceUID) for i in answer.ReferencedSOPSequence) == uids
    assert "FailedSOPSequence" not in answer

    # The one storage layout, each file the Part 10 file as sent (data set bytes identical).
    series_uid, study_uid = str(datasets[0].SeriesInstanceUID), str(datasets[0].StudyInstanceUID)
    for path, ds in zip(files, datasets):
        kept = app.settings.storage_dir / study_uid / series_uid / f"{ds.SOPInstanceUID}.dcm"
        sent, got = pydicom.dcmread(path), pydicom.dcmread(kept)
        assert got.file_meta.SourceApplicationEntityTitle == "STOW-RS"
        assert got.PixelData == sent.PixelData and got.SOPInstanceUID == sent.SOPInstanceUID
    assert incoming(app) == []
    # Sent again: success, nothing stored twice.
    again = client.store_instances(datasets)
    assert len(again.ReferencedSOPSequence) == len(datasets)

    # The same series through the C-STORE path (the listener's receiver), as another series.
    receiver = receiver_for(app.settings, app.db, actor="test")
    with app.db.session() as s:
        ae = LocalAESnapshot.of(s.scalars(select(LocalAE).where(LocalAE.title == TITLE)).one())
    dimse_series = "1.2.826.0.1.3680043.8.498.99"
    for n, ds in enumerate(datasets):
        ds.SeriesInstanceUID = dimse_series
        ds.SOPInstanceUID = f"{dimse_series}.{n + 1}"
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        raw = _dataset_bytes(ds)
        status, reason = receiver.store(
            ae,
            calling_ae="SCANNER",
            calling_host="127.0.0.1",
            sop_class_uid=str(ds.SOPClassUID),
            sop_instance_uid=str(ds.SOPInstanceUID),
            transfer_syntax_uid=str(ds.file_meta.TransferSyntaxUID),
            dataset=raw,
        )
        assert status == 0, reason

    done = Completion(app.db, app.settings.completion, storage_dir=app.settings.storage_dir).run_once(
        utcnow() + dt.timedelta(seconds=5)
    )
    assert sorted(d.series_uid for d in done) == sorted([series_uid, dimse_series])
    assert all(d.analysed and d.job_id for d in done), done
    with app.db.session() as s:
        rows = {r.series_uid: r for r in s.scalars(select(Series))}
        web, dimse = rows[series_uid], rows[dimse_series]
        assert (web.calling_ae, web.instances, web.status) == ("STOW-RS", len(datasets), SeriesStatus.COMPLETE.value)
        assert (dimse.instances, dimse.status, dimse.local_ae_id) == (web.instances, web.status, web.local_ae_id)
        web_job, dimse_job = (s.scalar(select(Job).where(Job.series_id == r.id)) for r in (web, dimse))
        assert web_job is not None and dimse_job is not None
        assert (web_job.status, web_job.priority) == (dimse_job.status, dimse_job.priority)
        topics = [m.topic for m in s.scalars(select(OutboxMessage).where(OutboxMessage.job_id == web_job.id))]
        assert topics == [ANALYSE_TOPIC]
        assert s.scalar(select(Instance).where(Instance.sop_instance_uid == uids[0])) is not None


def _dataset_bytes(ds: Dataset) -> bytes:
    """The data set as a C-STORE carries it: the Part 10 file without its preamble and File Meta
    Information."""
    out = BytesIO()
    ds.save_as(out, enforce_file_format=True)
    data = out.getvalue()
    return data[144 + int.from_bytes(data[140:144], "little") :]


def test_tokens_missing_unknown_revoked_or_not_allowed_are_refused(
    stow: tuple[AdminApp, str, int], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app, token, token_id = stow
    body = multipart([p.read_bytes() for p in phantom_files(tmp_path / "s", slices=4)])
    caplog.set_level(logging.WARNING)
    assert post(app, None, body).status_code == 401
    unknown = post(app, "dnt_nosuchtoken", body)
    assert unknown.status_code == 401 and unknown.headers["www-authenticate"] == "Bearer"
    # The admin's token is valid, but not on this AE's allow-list.
    refused = post(app, app.admin_token, body)
    assert refused.status_code == 403 and "--stow-tokens" in refused.json()["detail"]
    assert post(app, token, body, title="NOSUCHAE").status_code == 404
    # A sender's token reaches nothing but STOW-RS.
    with app.client(token) as http:
        assert http.get("/api/series").status_code == 403
    with app.db.session() as s:
        revoke_token(s, token_id, revoked_by="pytest")
    assert post(app, token, body).status_code == 401
    assert layout_files(app) == [] and incoming(app) == []
    assert "STOW-RS refused (HTTP 401)" in caplog.text and "STOW-RS refused (HTTP 403)" in caplog.text
    assert any("refused (HTTP 403)" in e for e in events(app))


def test_bad_parts_get_their_failure_reasons_and_leave_nothing_on_disk(
    stow: tuple[AdminApp, str, int], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app, token, _ = stow
    good = phantom_files(tmp_path / "s", slices=4)
    mr = pydicom_file("MR_small.dcm")
    mr_uid = str(pydicom.dcmread(mr).SOPInstanceUID)
    caplog.set_level(logging.WARNING)

    # One good instance, one not DICOM, one MR (the AE takes CT only): 202, reasons per instance.
    response = post(app, token, multipart([good[0].read_bytes(), b"no DICOM here", mr.read_bytes()]))
    assert response.status_code == 202, response.text
    assert response.headers["content-type"] == "application/dicom+json"
    assert stored(response) == [str(pydicom.dcmread(good[0]).SOPInstanceUID)]
    assert failures(response) == {"": 0xC000, mr_uid: 0x0122}
    assert len(response.headers.get_list("warning")) == 2
    assert "STOW-RS refused (0x0122 SOP_CLASS_NOT_SUPPORTED)" in caplog.text
    assert "STOW-RS refused (0xC000 CANNOT_UNDERSTAND): not a DICOM Part 10 file" in caplog.text
    assert any("STOW-RS refused " + mr_uid in e for e in events(app))

    # Nothing stored: 409. A truncated instance (cut inside its pixel data) is refused whole.
    cut = good[1].read_bytes()[:-100]
    response = post(app, token, multipart([cut]))
    assert response.status_code == 409
    assert list(failures(response).values()) == [0xC000]
    # A transfer syntax the listener does not take either.
    ds = pydicom.dcmread(good[1])
    mpeg2 = part10_header(str(ds.SOPClassUID), str(ds.SOPInstanceUID), "1.2.840.10008.1.2.4.100")
    assert list(failures(post(app, token, multipart([mpeg2 + _dataset_bytes(ds)]))).values()) == [0xC122]

    assert len(layout_files(app)) == 1 and incoming(app) == []

    # Requests the node does not take at all.
    assert post(app, token, b"x", **{"Content-Type": "application/json"}).status_code == 415
    no_boundary = 'multipart/related; type="application/dicom"'
    assert post(app, token, b"x", **{"Content-Type": no_boundary}).status_code == 400
    assert post(app, token, multipart([good[1].read_bytes()])[:-40]).status_code == 400  # no closing boundary
    assert post(app, token, multipart([]), Accept="text/html").status_code == 406
    assert len(layout_files(app)) == 1 and incoming(app) == []


def test_an_mr_to_an_ae_that_takes_mr_is_stored_and_left_out_by_its_filters(
    stow: tuple[AdminApp, str, int],
) -> None:
    app, token, _ = stow
    with app.db.session() as s:
        row = s.scalar(select(LocalAE).where(LocalAE.title == TITLE))
        assert row is not None
        c.update_local_ae(s, row, c.parse(c.LocalAEPatch, {"extra_sop_classes": [MRImageStorage]}))
    mr = pydicom_file("MR_small.dcm")
    response = post(app, token, multipart([mr.read_bytes()]), Accept="application/dicom+xml")
    assert response.status_code == 200 and response.headers["content-type"] == "application/dicom+xml"
    root = ET.fromstring(response.content)
    ns = "{http://dicom.nema.org/PS3.19/models/NativeDICOM}"
    sequence = root.find(f"{ns}DicomAttribute[@keyword='ReferencedSOPSequence']")
    assert sequence is not None and len(sequence.findall(f"{ns}Item")) == 1
    done = Completion(app.db, app.settings.completion).run_once(utcnow() + dt.timedelta(seconds=5))
    assert len(done) == 1 and not done[0].analysed and "modality MR is not one of CT" in done[0].reason
    with app.db.session() as s:
        assert s.scalar(select(Job)) is None


def test_request_and_instance_size_limits(
    stow: tuple[AdminApp, str, int], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app, token, _ = stow
    files = phantom_files(tmp_path / "s", slices=4)
    body = multipart([p.read_bytes() for p in files])
    caplog.set_level(logging.WARNING)
    # The app's settings object is the server's: the request limit applies from the next request
    # on, the instance limit from the app's receiver, made by its first request.
    app.settings.listener.max_dataset_bytes = 2 << 20
    app.settings.dicomweb.max_request_bytes = len(body) - 1000
    # By its Content-Length, before the body is read.
    response = post(app, token, body)
    assert response.status_code == 413 and "dicomweb.max_request_bytes" in response.json()["detail"]

    # A body without a Content-Length (chunked): refused when it grows past the limit.
    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 4096):
            yield body[start : start + 4096]

    headers = {
        "Authorization": f"Bearer {token}",
        "Content-Type": 'multipart/related; type="application/dicom"; boundary=stow-test-boundary',
    }
    with app.client() as http:
        response = http.post(f"/dicomweb/{TITLE}/studies", content=chunks(), headers=headers)
    assert response.status_code == 413, response.text
    assert "STOW-RS refused (HTTP 413)" in caplog.text
    assert incoming(app) == []
    # Whole instances stored before the limit stay stored (sending them again is harmless).
    assert len(layout_files(app)) < len(files)

    # An instance over listener.max_dataset_bytes: 0xA700, nothing of it kept (it went to a file).
    app.settings.dicomweb.max_request_bytes = 1 << 30
    big = pydicom.dcmread(files[0])
    big.SOPInstanceUID = big.file_meta.MediaStorageSOPInstanceUID = UID(f"2.25.{uuid.uuid4().int}")
    big.add_new(0x00091010, "OB", b"\0" * (3 << 20))  # private: 3 MiB, past the spool's memory
    big_path = tmp_path / "big.dcm"
    big.save_as(big_path, enforce_file_format=True)
    response = post(app, token, multipart([big_path.read_bytes()]))
    assert response.status_code == 409 and list(failures(response).values()) == [0xA700]
    assert incoming(app) == []


def test_token_ids_are_checked_when_allowed(stow: tuple[AdminApp, str, int]) -> None:
    app, _, token_id = stow
    with app.db.session() as s:
        row = s.scalar(select(LocalAE).where(LocalAE.title == TITLE))
        assert row is not None
        assert c.local_ae_dict(row)["stow_tokens"] == [token_id]
        with pytest.raises(c.Refused, match="no API token with id 999"):
            c.update_local_ae(s, row, c.parse(c.LocalAEPatch, {"stow_tokens": [999]}))
    with app.db.session() as s:
        revoke_token(s, token_id, revoked_by="pytest")
        row = s.scalar(select(LocalAE).where(LocalAE.title == TITLE))
        assert row is not None
        with pytest.raises(c.Refused, match="is revoked"):
            c.update_local_ae(s, row, c.parse(c.LocalAEPatch, {"stow_tokens": [token_id]}))
        assert s.get(ApiToken, token_id) is not None
