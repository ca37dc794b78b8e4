"""The listener as it runs: `dicom-node serve` as a subprocess, DCMTK's storescu as the scanner,
on SQLite and on PostgreSQL.

Covers: a phantom series arriving whole, stored once, byte-identical in its data set; re-sends
being idempotent; an unknown calling AE, a disabled one and one from the wrong host refused at
association with a log line; every Part 10 file of the pydicom-data package (vendors, transfer
syntaxes, enhanced multi-frame) accepted and stored; traversal UIDs, truncated data sets and a
full disk answered with the right failure status while the listener goes on serving; a sender over
the association or per-address connection limit answered A-ASSOCIATE-RJ local limit exceeded; an AE added
while the node runs answering within seconds; a series split over associations, one image per
association, and a late instance re-opening a completed series; DICOM over TLS with client
certificates. Not covered here: the analysis that follows completion (tests/e2e).
"""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import time
from pathlib import Path
from typing import Callable, Iterator

import pydicom
import pytest
from pydicom.uid import UID
from pynetdicom import AE
from pynetdicom import _config as pynetdicom_config
from sqlalchemy import select

from dicom_node.db import Database
from dicom_node.db.models import Event
from dicom_node.listener.limits import REFUSAL_SECONDS
from model.phantoms.writer import write_phantom_series
from tests.harness.peers import (
    NodeProcess,
    cli,
    cli_json,
    create_postgres_database,
    drop_postgres_database,
    free_port,
    node_env,
    require_tool,
    storescu,
    wait_until,
)
from tests.pydicom_files import PYDICOM_DATA

pytestmark = pytest.mark.integration

TITLE = "COVIDNODE"

# storescu's option that proposes a given transfer syntax (and the uncompressed ones).
STORESCU_PROPOSE = {
    "1.2.840.10008.1.2": "-xi",
    "1.2.840.10008.1.2.1": "-xe",
    "1.2.840.10008.1.2.2": "-xb",
    "1.2.840.10008.1.2.1.99": "-xd",
    "1.2.840.10008.1.2.4.50": "-xy",
    "1.2.840.10008.1.2.4.51": "-xx",
    "1.2.840.10008.1.2.4.70": "-xs",
    "1.2.840.10008.1.2.4.80": "-xt",
    "1.2.840.10008.1.2.4.81": "-xu",
    "1.2.840.10008.1.2.4.90": "-xv",
    "1.2.840.10008.1.2.4.91": "-xw",
    "1.2.840.10008.1.2.5": "-xr",
}


class Node:
    def __init__(self, env: dict[str, str], port: int, process: NodeProcess) -> None:
        self.env, self.port, self.process = env, port, process
        self.data_dir = Path(env["DICOM_NODE_DATA_DIR"])

    def series(self) -> list[dict]:
        return list(cli_json(self.env, "series", "list", "--json"))

    def one_series(self, uid: str) -> dict:
        return next(s for s in self.series() if s["series_uid"] == uid)

    def wait_complete(self, uid: str, timeout: float = 30) -> dict:
        def done() -> dict | None:
            rows = [s for s in self.series() if s["series_uid"] == uid and s["series_status"] != "receiving"]
            return rows[0] if rows else None

        return wait_until(done, timeout, f"series {uid} to complete")

    def log(self) -> str:
        return self.process.output()


def start_node(tmp: Path, database_url: str | None, **settings: object) -> Node:
    data_dir = tmp / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    env = node_env(
        data_dir,
        database_url=database_url,
        admin_port=free_port(),
        **{"listener__processes": 2, "listener__reload_seconds": 0.5, "completion__poll_seconds": 0.2, **settings},
    )
    port = free_port()
    cli(env, "db", "upgrade")
    cli(env, "ae", "add-local", TITLE, "--port", str(port), "--quiet-seconds", "1.5")
    cli(env, "ae", "add-source", "STORESCU")
    process = NodeProcess(env, ["serve"]).start()
    process.wait_for_port(port)
    return Node(env, port, process)


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def node(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    pg_name = None
    url = None
    if request.param == "postgresql":
        url, pg_name = create_postgres_database()
    started = start_node(tmp_path_factory.mktemp(f"node-{request.param}"), url)
    yield started
    started.process.stop()
    if pg_name:
        drop_postgres_database(pg_name)


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_phantom_series(
        "covid", tmp_path_factory.mktemp("phantom") / "series", seed=11, slices=24, rows=128, columns=128
    )


def dataset_bytes(path: Path) -> bytes:
    """The data set of a Part 10 file: what follows its File Meta Information."""
    raw = path.read_bytes()
    meta = pydicom.filereader.read_file_meta_info(path)
    return raw[132 + 12 + meta.FileMetaInformationGroupLength :]


def stored_path(node: Node, ds: pydicom.Dataset) -> Path:
    return node.data_dir / "storage" / ds.StudyInstanceUID / ds.SeriesInstanceUID / f"{ds.SOPInstanceUID}.dcm"


def test_series_arrives_whole_stored_once_byte_identical(node: Node, phantom: Path) -> None:
    files = sorted(phantom.glob("*.dcm"))
    assert len(files) == 24
    sent = storescu(phantom, node.port)
    assert sent.returncode == 0, sent.stderr
    first = pydicom.dcmread(files[0], stop_before_pixels=True)
    row = node.wait_complete(first.SeriesInstanceUID)
    assert row["instances"] == 24 and row["calling_ae"] == "STORESCU" and row["local_ae"] == TITLE
    assert row["status"] in ("pending", "queued", "running", "done", "failed")
    for f in files:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        target = stored_path(node, ds)
        assert dataset_bytes(target) == dataset_bytes(f), f.name
        assert pydicom.dcmread(target).file_meta.TransferSyntaxUID == ds.file_meta.TransferSyntaxUID
    # The same series again: answered with success, stored once, nothing re-opened.
    again = storescu(phantom, node.port)
    assert again.returncode == 0, again.stderr
    time.sleep(2)
    row = node.one_series(first.SeriesInstanceUID)
    assert (row["instances"], row["generation"]) == (24, 0)
    assert len(list(stored_path(node, first).parent.glob("*.dcm"))) == 24


def test_unknown_disabled_and_wrong_host_callers_are_refused(node: Node, phantom: Path) -> None:
    one = sorted(phantom.glob("*.dcm"))[:1]
    unknown = storescu(one, node.port, calling="INTRUDER")
    assert unknown.returncode != 0
    assert "Association Rejected" in unknown.stderr
    cli(node.env, "ae", "add-source", "CT_ELSEWHERE", "--host", "10.9.9.9")
    elsewhere = storescu(one, node.port, calling="CT_ELSEWHERE")
    assert "Association Rejected" in elsewhere.stderr
    wait_until(
        lambda: (
            "association refused: INTRUDER@127.0.0.1 to COVIDNODE: calling AE 'INTRUDER' is not on the allow-list"
            in node.log()
        ),
        10,
        "the refusal log line",
    )
    assert "calling AE 'CT_ELSEWHERE' is allowed only from 10.9.9.9, not from 127.0.0.1" in node.log()
    # Removing a source takes effect at its next association.
    cli(node.env, "ae", "add-source", "SHORTLIVED")
    assert storescu(one, node.port, calling="SHORTLIVED").returncode == 0
    cli(node.env, "ae", "remove", "source", "SHORTLIVED")
    assert "Association Rejected" in storescu(one, node.port, calling="SHORTLIVED").stderr


def test_called_ae_must_match(node: Node, phantom: Path) -> None:
    """Refused with the reason in the sender's A-ASSOCIATE-RJ, the log and the events; a sender
    retrying in a loop writes at most 3 refusals a minute per listener process (2 here; the window
    may already hold refusals of 127.0.0.1 from the tests before, or roll over once meanwhile)."""
    one = sorted(phantom.glob("*.dcm"))[:1]
    tries = 16
    for _ in range(tries):
        wrong = storescu(one, node.port, called="SOMEONEELSE")
        assert "Called AE Title Not Recognized" in wrong.stderr, wrong.stderr
    reason = "called AE title 'SOMEONEELSE' is not this port's (COVIDNODE)"
    url = node.env.get("DICOM_NODE_DATABASE_URL") or f"sqlite:///{node.data_dir / 'dicom-node.sqlite3'}"
    db = Database(url)
    try:
        with db.reader() as conn:
            events = conn.scalars(select(Event.message).where(Event.message.like("%SOMEONEELSE%"))).all()
    finally:
        db.dispose()
    assert 1 <= len(events) <= 12 < tries, events
    assert all(e.startswith(f"refused: {reason}") for e in events), events
    wait_until(lambda: node.log().count(reason) == len(events), 10, "a log line for each refusal recorded")


# Files of pydicom-data that DCMTK's storescu refuses to read, sent by pynetdicom instead (it
# streams a file's data set as it is), with what the node must answer.
UNREADABLE_FOR_DCMTK = {
    # Its UIDs are encoded with VR UN: a valid instance, stored.
    "explicit_VR-UN.dcm": 0x0000,
    # Pixel data cut short on purpose: a truncated data set, refused.
    "emri_small_jpeg_2k_lossless_too_short.dcm": 0xC000,
}


def test_every_pydicom_data_file_is_accepted_and_stored(node: Node, tmp_path: Path) -> None:
    port = free_port()
    cli(node.env, "ae", "add-local", "ANYSTORAGE", "--port", str(port), "--sop-classes", "*", "--quiet-seconds", "1")
    wait_until(lambda: _echo(port, "ANYSTORAGE"), 15, "the new AE to answer")
    files = []
    for f in sorted(PYDICOM_DATA.glob("*.dcm")):
        try:
            pydicom.filereader.read_file_meta_info(f)
        except pydicom.errors.InvalidDicomError:
            continue  # not a Part 10 file (no File Meta Information): nothing to send it as
        files.append(f)
    assert len(files) >= 60
    # One association per file; -R with the file's own transfer syntax: storescu proposes the
    # file's SOP class and syntax, so the node receives the bytes the file holds, unconverted.
    failures = []
    stored = []
    for f in files:
        meta = pydicom.filereader.read_file_meta_info(f)
        if f.name in UNREADABLE_FOR_DCMTK:
            status = _send_raw(
                f,
                port,
                called="ANYSTORAGE",
                sop_class=meta.MediaStorageSOPClassUID,
                transfer_syntax=meta.TransferSyntaxUID,
            )
            assert status == UNREADABLE_FOR_DCMTK[f.name], f.name
            if status == 0:
                stored.append(f)
            continue
        result = storescu([f], port, called="ANYSTORAGE", extra=["-R", STORESCU_PROPOSE[meta.TransferSyntaxUID]])
        if result.returncode != 0:
            failures.append((f.name, result.stderr.strip()[-300:]))
        stored.append(f)
    assert failures == []
    uids = set()
    for f in stored:
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        target = stored_path(node, ds)
        assert target.is_file(), f.name
        uids.add(str(ds.SOPInstanceUID))
    # Some files of the package hold the same instance in several transfer syntaxes: stored once.
    wait_until(
        lambda: sum(s["instances"] for s in node.series() if s["local_ae"] == "ANYSTORAGE") == len(uids),
        10,
        "the index to hold every instance",
    )


def _echo(port: int, title: str) -> bool:
    ae = AE(ae_title="STORESCU")
    ae.add_requested_context("1.2.840.10008.1.1")
    assoc = ae.associate("127.0.0.1", port, ae_title=title)
    if not assoc.is_established:
        return False
    status = assoc.send_c_echo()
    assoc.release()
    return bool(status and status.Status == 0)


def test_ae_added_while_running_answers_within_seconds(node: Node) -> None:
    port = free_port()
    cli(node.env, "ae", "add-local", "LATECOMER", "--port", str(port))
    start = time.monotonic()
    wait_until(lambda: _echo(port, "LATECOMER"), 10, "LATECOMER to answer C-ECHO")
    assert time.monotonic() - start < 10
    echoscu = subprocess.run(
        [require_tool("echoscu", "dcmtk"), "-aet", "STORESCU", "-aec", "LATECOMER", "127.0.0.1", str(port)],
        capture_output=True,
        text=True,
    )
    assert echoscu.returncode == 0, echoscu.stderr
    cli(node.env, "ae", "update-local", "LATECOMER", "--disable")
    wait_until(lambda: not _echo(port, "LATECOMER"), 10, "LATECOMER to stop")


def test_bad_input_gets_a_failure_status_and_the_listener_goes_on(node: Node, phantom: Path, tmp_path: Path) -> None:
    src = sorted(phantom.glob("*.dcm"))[0]
    ds = pydicom.dcmread(src)
    ds.SOPInstanceUID = UID("../../x")
    ds.file_meta.MediaStorageSOPInstanceUID = UID("../../x")
    traversal = tmp_path / "traversal.dcm"
    ds.save_as(traversal)
    result = storescu([traversal], node.port, extra=["-v"])
    assert result.returncode != 0
    assert "Received Store Response (Error: CannotUnderstand)" in result.stderr, result.stderr
    wait_until(lambda: "UID '../../x' is not dot-separated digits" in node.log(), 10, "the refusal log line")
    assert not any(p.name == "x" or ".." in str(p) for p in (node.data_dir / "storage").rglob("*"))

    # A truncated data set, streamed as-is by pynetdicom (DCMTK refuses to send such a file).
    raw = src.read_bytes()
    truncated = tmp_path / "truncated.dcm"
    truncated.write_bytes(raw[: len(raw) - 5000])
    status = _send_raw(truncated, node.port)
    assert status == 0xC000
    wait_until(lambda: "data set is truncated: element (7FE0,0010)" in node.log(), 10, "the truncation log line")
    original = pydicom.dcmread(src, stop_before_pixels=True)
    assert not list((node.data_dir / "storage" / ".incoming").iterdir())

    # No pixel data in an image.
    nopix = pydicom.dcmread(src)
    del nopix.PixelData
    nopix.SOPInstanceUID = nopix.file_meta.MediaStorageSOPInstanceUID = original.SOPInstanceUID + ".9"
    nopix_path = tmp_path / "nopix.dcm"
    nopix.save_as(nopix_path)
    assert storescu([nopix_path], node.port).returncode != 0
    wait_until(lambda: "image has no pixel data" in node.log(), 10, "the no-pixel-data log line")
    # Still serving.
    assert _echo(node.port, TITLE)


def _send_raw(
    path: Path,
    port: int,
    *,
    called: str = TITLE,
    sop_class: str = "1.2.840.10008.5.1.4.1.1.2",
    transfer_syntax: str = "1.2.840.10008.1.2.1",
) -> int:
    """C-STORE a file's data set bytes unchanged (pynetdicom streams them without decoding)."""
    old = pynetdicom_config.STORE_SEND_CHUNKED_DATASET
    pynetdicom_config.STORE_SEND_CHUNKED_DATASET = True
    try:
        ae = AE(ae_title="STORESCU")
        ae.add_requested_context(sop_class, transfer_syntax)
        assoc = ae.associate("127.0.0.1", port, ae_title=called)
        assert assoc.is_established
        status = assoc.send_c_store(path)
        assoc.release()
        return int(status.Status)
    finally:
        pynetdicom_config.STORE_SEND_CHUNKED_DATASET = old


def test_split_series_single_image_associations_and_late_instance(node: Node, tmp_path: Path) -> None:
    series = write_phantom_series("cap", tmp_path / "split", seed=12, slices=12, rows=96, columns=96)
    files = sorted(series.glob("*.dcm"))
    # Half in one association, the rest one image per association, within the quiet period.
    assert storescu(files[:6], node.port).returncode == 0
    for f in files[6:11]:
        assert storescu([f], node.port).returncode == 0
    uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).SeriesInstanceUID)
    row = node.wait_complete(uid)
    assert row["instances"] == 11 and row["generation"] == 0
    first_job = row["job_id"]
    assert first_job is not None
    # A late instance re-opens it and leads to one new analysis.
    assert storescu([files[11]], node.port).returncode == 0
    wait_until(lambda: node.one_series(uid)["generation"] == 1, 10, "the series to re-open")
    row = node.wait_complete(uid)
    assert row["instances"] == 12 and row["job_id"] != first_job


@pytest.fixture
def full_disk_node(tmp_path: Path) -> Iterator[Node]:
    # A watermark above any free space this machine has: the disk is "full" for the node.
    started = start_node(tmp_path, None, listener__min_free_disk_mb=10**9)
    yield started
    started.process.stop()


def test_full_disk_answers_out_of_resources(full_disk_node: Node, phantom: Path) -> None:
    result = storescu(sorted(phantom.glob("*.dcm"))[:1], full_disk_node.port, extra=["-v"])
    assert result.returncode != 0
    assert "OutOfResources" in result.stderr, result.stderr
    wait_until(lambda: "free disk space below the watermark" in full_disk_node.log(), 10, "the watermark log line")
    assert full_disk_node.series() == []


# What DCMTK prints for the A-ASSOCIATE-RJ of a connection or association over a listener limit.
LOCAL_LIMIT_REJECTION = (
    "Association Rejected:",
    "Result: Rejected Transient, Source: Service Provider (Presentation Related)",
    "Reason: Local Limit Exceeded",
)


@pytest.fixture
def limited_node(tmp_path: Path) -> Iterator[Node]:
    # One listener process, so that every connection meets the same limits.
    started = start_node(
        tmp_path,
        None,
        listener__processes=1,
        listener__max_associations=2,
        listener__max_connections_per_address=3,
    )
    yield started
    started.process.stop()


def _echoscu(port: int, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_tool("echoscu", "dcmtk"), "-aet", "STORESCU", "-aec", TITLE, *extra, "127.0.0.1", str(port)],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ, TCP_NODELAY="1"),
    )


def test_over_the_limits_a_sender_gets_a_transient_local_limit_rejection(limited_node: Node) -> None:
    """Over listener.max_associations (2 negotiated associations held: refused at negotiation) and
    over listener.max_connections_per_address (3 connections held, one of them silent: refused as
    accepted, without an association or a slot), DCMTK's echoscu is answered the same
    A-ASSOCIATE-RJ: rejected transient, service provider (presentation), local limit exceeded.
    Each refusal is logged with its limit and the caller and recorded as an event; once the
    connections are gone the node answers again."""
    node = limited_node
    ae = AE(ae_title="STORESCU")
    ae.add_requested_context("1.2.840.10008.1.1")
    held = [ae.associate("127.0.0.1", node.port, ae_title=TITLE) for _ in range(2)]
    silent: socket.socket | None = None
    try:
        assert all(assoc.is_established for assoc in held)
        over_associations = _echoscu(node.port)
        assert over_associations.returncode != 0
        assert all(line in over_associations.stderr for line in LOCAL_LIMIT_REJECTION), over_associations.stderr
        # The refused association's connection counts until the node has let it go, which a busy
        # machine may not have done yet: then the silent connection is the one over the limit and
        # echoscu meets the association limit again. Tried again until echoscu is the one over it.
        per_address = "3 connection(s) from that address already open (listener.max_connections_per_address); "
        # (At most 3 refusals a minute are logged per peer: a second of grace first keeps the tries few.)
        deadline = time.monotonic() + 30
        time.sleep(1.0)
        while True:
            silent = socket.create_connection(("127.0.0.1", node.port))
            over_connections = _echoscu(node.port)
            assert over_connections.returncode != 0
            assert all(line in over_connections.stderr for line in LOCAL_LIMIT_REJECTION), over_connections.stderr
            if f"association refused: STORESCU@127.0.0.1 to {TITLE}: {per_address}" in node.log():
                break
            silent.close()
            silent = None
            assert time.monotonic() < deadline, node.log()[-3000:]
            time.sleep(1.0)
    finally:
        for assoc in held:
            assoc.release()
        if silent is not None:
            silent.close()
    wait_until(lambda: _echoscu(node.port).returncode == 0, 10, "echoscu to get through again")
    refusals = [
        "2 associations already open (listener.max_associations); "
        "A-ASSOCIATE-RJ rejected-transient, local-limit-exceeded",
        "3 connection(s) from that address already open (listener.max_connections_per_address); "
        "A-ASSOCIATE-RJ rejected-transient, local-limit-exceeded",
    ]
    for reason in refusals:
        assert f"association refused: STORESCU@127.0.0.1 to {TITLE}: {reason}" in node.log(), node.log()[-3000:]
    db = Database(f"sqlite:///{node.data_dir / 'dicom-node.sqlite3'}")
    try:
        with db.reader() as conn:
            events = conn.execute(
                select(Event.message, Event.calling_ae, Event.calling_host).where(Event.category == "association")
            ).all()
    finally:
        db.dispose()
    # An event per refusal, of both kinds and no other: one or more of the first (see above), and of
    # the second, as until the node has let the closed connections go (a busy machine may take a
    # moment) the echoes that wait for it to answer again can meet the per-address limit once more.
    assert set(events) == {(f"refused: {reason}", "STORESCU", "127.0.0.1") for reason in refusals}, events


def _certificates(tmp_path: Path) -> Path:
    """A CA, and a node's and a client's certificate and key signed by it, in ``tmp_path/certs``."""
    certs = tmp_path / "certs"
    certs.mkdir()
    openssl = require_tool("openssl", "openssl")

    def run(*args: str) -> None:
        subprocess.run([openssl, *args], check=True, capture_output=True)

    run(
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=test-ca",
        "-keyout",
        str(certs / "ca.key"),
        "-out",
        str(certs / "ca.crt"),
    )
    for name in ("node", "client"):
        run(
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            f"/CN={name}",
            "-keyout",
            str(certs / f"{name}.key"),
            "-out",
            str(certs / f"{name}.csr"),
        )
        run(
            "x509",
            "-req",
            "-in",
            str(certs / f"{name}.csr"),
            "-CA",
            str(certs / "ca.crt"),
            "-CAkey",
            str(certs / "ca.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            str(certs / f"{name}.crt"),
        )
    return certs


def _tls_settings(certs: Path) -> dict[str, Path]:
    return {
        "listener__tls__cert_file": certs / "node.crt",
        "listener__tls__key_file": certs / "node.key",
        "listener__tls__client_ca_file": certs / "ca.crt",
    }


def _tls_client(certs: Path) -> list[str]:
    """DCMTK's options for TLS with the client's certificate."""
    return ["+tls", str(certs / "client.key"), str(certs / "client.crt"), "+cf", str(certs / "ca.crt")]


@pytest.fixture
def tls_node(tmp_path: Path) -> Iterator[tuple[Node, Path]]:
    certs = _certificates(tmp_path)
    started = start_node(tmp_path, None, **_tls_settings(certs))
    yield started, certs
    started.process.stop()


def test_tls_with_client_certificates(tls_node: tuple[Node, Path], phantom: Path) -> None:
    node, certs = tls_node
    one = sorted(phantom.glob("*.dcm"))[:1]
    ok = storescu(one, node.port, extra=_tls_client(certs))
    assert ok.returncode == 0, ok.stderr
    plain = storescu(one, node.port)
    assert plain.returncode != 0
    anonymous = storescu(one, node.port, extra=["+tla", "+cf", str(certs / "ca.crt")])
    assert anonymous.returncode != 0


def _held_by_the_node(connect: Callable[[], socket.socket]) -> socket.socket:
    """A connection, silent, that the node has admitted (it holds a slot of the per-address
    limit). One that came while an earlier connection still held the slot (the harness's port
    probe, until the node has noticed that it closed) was refused instead, and a refused
    connection that says nothing is closed after REFUSAL_SECONDS: so wait that long, and connect
    again if it was closed."""
    for _ in range(5):
        sock = connect()
        time.sleep(REFUSAL_SECONDS + 0.5)
        sock.settimeout(0.2)
        try:
            closed = sock.recv(1) == b""
        except TimeoutError:
            return sock  # still open: admitted
        except OSError:
            closed = True
        assert closed, "the node sent something on a silent connection"
        sock.close()
    raise AssertionError("the node closed every silent connection")


def test_over_the_per_address_limit_a_tls_sender_gets_the_rejection_over_tls(tmp_path: Path) -> None:
    """The refusal of a connection over listener.max_connections_per_address on a TLS listener: the
    handshake, then the A-ASSOCIATE-RJ inside TLS, as on a plain one; echoscu (TLS with a client
    certificate) reads it as a transient local-limit rejection; once the held connection is gone
    it gets through."""
    certs = _certificates(tmp_path)
    node = start_node(
        tmp_path, None, listener__processes=1, listener__max_connections_per_address=1, **_tls_settings(certs)
    )
    context = ssl.create_default_context(cafile=str(certs / "ca.crt"))
    context.check_hostname = False
    context.load_cert_chain(str(certs / "client.crt"), str(certs / "client.key"))
    held: socket.socket | None = None
    try:
        # A TLS connection that says nothing after its handshake holds the one slot.
        held = _held_by_the_node(lambda: context.wrap_socket(socket.create_connection(("127.0.0.1", node.port))))
        refused = _echoscu(node.port, *_tls_client(certs))
        assert refused.returncode != 0, node.log()[-3000:]
        assert all(line in refused.stderr for line in LOCAL_LIMIT_REJECTION), refused.stderr
        reason = "1 connection(s) from that address already open (listener.max_connections_per_address); "
        wait_until(
            lambda: f"association refused: STORESCU@127.0.0.1 to {TITLE}: {reason}" in node.log(),
            10,
            "the refusal in the log",
        )
        held.close()
        held = None
        wait_until(lambda: _echoscu(node.port, *_tls_client(certs)).returncode == 0, 15, "echoscu to get through")
    finally:
        if held is not None:
            held.close()
        node.process.stop()
