"""dicom_node.sending.scu against a real pynetdicom storage SCP on a loopback port.

Covers: the status classification (success, storage warnings, 0xA7xx retriable, 0xA9xx/0xCxxx and
other failures permanent, no response retriable), association rejection (permanent and transient),
no listener (retriable), a peer that takes the connection but does not answer the association
request within the timeout (retriable: a stalled peer, e.g. one starved of CPU, refused nothing), a
peer that drops the connection unanswered (asked once more at once), a
peer that accepts no presentation context, one association per batch, the requested contexts (each
SOP class with explicit and implicit little endian), and a compressed file sent as is or
decompressed (a deflated one inflated) when the peer takes only uncompressed syntaxes, a deflated
map inflated into a temporary file a piece at a time, never read whole. Does not
cover TLS (no certificate authority here) or DCMTK/Orthanc as the peer (tests/e2e).
"""

from __future__ import annotations

import hashlib
import socket
import threading
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    RLELossless,
)
from pynetdicom import AE

from dicom_node.dicom_answers import Status
from dicom_node.sending.scu import Outcome, Peer, classify_status, send_files, status_name, worst
from tests.harness.peers import free_port
from tests.sending.dicom_files import OUTPUT_SOP_CLASSES, write_object, write_outputs
from tests.sending.scp import Relay, Scp

pytestmark = pytest.mark.integration


@pytest.fixture
def scp() -> Iterator[Scp]:
    server = Scp().start()
    yield server
    server.stop()


@pytest.fixture
def files(tmp_path: Path) -> list[Path]:
    return write_outputs(tmp_path / "out")


def _send(paths: list[Path], peer: Peer, **kw: Any) -> Any:
    return send_files(paths, peer, calling_ae_title="COVIDCTNODE", timeout=kw.pop("timeout", 5.0), **kw)


def test_classification_of_statuses() -> None:
    assert classify_status(0x0000) is Outcome.SUCCESS
    for warning in (0xB000, 0xB006, 0xB007, 0x0001):
        assert classify_status(warning) is Outcome.SUCCESS
    for retriable in (None, 0xA700, 0xA7FF, 0x0110):
        assert classify_status(retriable) is Outcome.RETRIABLE
    for permanent in (0xA900, 0xA9FF, 0xC000, 0xCFFF, 0x0122, 0x0124, 0x0111, 0x0212):
        assert classify_status(permanent) is Outcome.PERMANENT
    assert status_name(0xA700) == "OUT_OF_RESOURCES (0xA700)"
    assert status_name(0xA7FE) == "0xA7FE"
    assert status_name(None) == "no response"
    assert worst([Outcome.SUCCESS, Outcome.RETRIABLE, Outcome.PERMANENT]) is Outcome.PERMANENT
    assert worst([]) is Outcome.SUCCESS


def test_batch_over_one_association_with_both_little_endian_syntaxes(scp: Scp, files: list[Path]) -> None:
    result = _send(files, scp.peer)
    assert result.outcome is Outcome.SUCCESS, result.reason
    assert result.sent == len(files) == len(scp.received)
    assert result.associations == 1 and scp.associations == 1
    requested = dict(scp.requested)
    assert set(requested) == {str(u) for u in OUTPUT_SOP_CLASSES.values()}
    for syntaxes in requested.values():
        assert set(syntaxes) == {ExplicitVRLittleEndian, ImplicitVRLittleEndian}


def test_warnings_count_as_stored(scp: Scp, files: list[Path]) -> None:
    scp.default_status = Status.COERCION_OF_DATA_ELEMENTS
    result = _send(files, scp.peer)
    assert result.outcome is Outcome.SUCCESS and result.sent == len(files)


def test_out_of_resources_is_retriable_and_the_rest_still_sent(scp: Scp, files: list[Path], tmp_path: Path) -> None:
    refused = str(pydicom.dcmread(files[1]).SOPInstanceUID)
    scp.statuses[refused] = Status.OUT_OF_RESOURCES
    result = _send(files, scp.peer)
    assert result.outcome is Outcome.RETRIABLE
    assert result.sent == len(files) - 1
    assert "OUT_OF_RESOURCES (0xA700)" in result.reason


@pytest.mark.parametrize(
    "status", [Status.DATASET_DOES_NOT_MATCH_SOP_CLASS, Status.CANNOT_UNDERSTAND, Status.NOT_AUTHORIZED]
)
def test_refusals_are_permanent_and_win_over_retriable(scp: Scp, files: list[Path], status: int) -> None:
    scp.statuses[str(pydicom.dcmread(files[0]).SOPInstanceUID)] = Status.OUT_OF_RESOURCES
    scp.statuses[str(pydicom.dcmread(files[-1]).SOPInstanceUID)] = status
    result = _send(files, scp.peer)
    assert result.outcome is Outcome.PERMANENT
    assert f"0x{status:04X}" in result.reason
    assert len(scp.received) == len(files)  # a refusal does not stop the batch


def test_wrong_called_ae_title_is_a_permanent_rejection(scp: Scp, files: list[Path]) -> None:
    result = _send(files, Peer("NOTPACS", "127.0.0.1", scp.port))
    assert result.outcome is Outcome.PERMANENT
    assert "rejected" in result.reason.lower() and "Permanent" in result.reason
    assert result.associations == 0 and scp.received == []


def test_transient_rejection_is_retriable(files: list[Path]) -> None:
    busy = Scp(max_associations=1).start()
    try:
        holder = AE(ae_title="HOLDER")
        holder.add_requested_context(OUTPUT_SOP_CLASSES["sr"])
        held = holder.associate("127.0.0.1", busy.port, ae_title=busy.title)
        assert held.is_established
        try:
            result = _send(files, busy.peer)
        finally:
            held.release()
        assert result.outcome is Outcome.RETRIABLE
        assert "Transient" in result.reason
    finally:
        busy.stop()


def test_nobody_listening_is_retriable(files: list[Path]) -> None:
    result = _send(files, Peer("PACS", "127.0.0.1", free_port()), timeout=2.0)
    assert result.outcome is Outcome.RETRIABLE
    assert "no association" in result.reason
    assert result.sent == 0


def test_an_unanswered_association_request_is_retriable_and_named(files: list[Path]) -> None:
    # A listening socket nobody accepts from: the kernel completes the TCP handshake, and the
    # A-ASSOCIATE-RQ waits unanswered, as it does at a peer stalled for longer than the timeout.
    with socket.create_server(("127.0.0.1", 0)) as silent:
        port = silent.getsockname()[1]
        result = _send(files, Peer("PACS", "127.0.0.1", port), timeout=1.0)
    assert result.outcome is Outcome.RETRIABLE
    assert "no answer to the association request within 1 s" in result.reason
    refused = _send(files, Peer("PACS", "127.0.0.1", free_port()), timeout=1.0)
    assert "no TCP connection" in refused.reason


def test_a_connection_dropped_without_an_answer_is_asked_once_more(scp: Scp, files: list[Path]) -> None:
    """A peer that closes the connection at once (a reset in passing, or a rejection whose
    A-ASSOCIATE-RJ was lost to the reset) is asked again within the same attempt; twice is the end."""
    once = Relay(scp.port, drops=1)
    try:
        result = _send(files, Peer("PACS", "127.0.0.1", once.port))
    finally:
        once.close()
    assert result.outcome is Outcome.SUCCESS, result.reason
    assert once.connections == 2 and scp.associations == 1 and result.sent == len(files)

    always = Relay(scp.port, drops=10)
    try:
        result = _send(files, Peer("PACS", "127.0.0.1", always.port))
    finally:
        always.close()
    assert result.outcome is Outcome.RETRIABLE and result.sent == 0, result
    assert "the connection was closed before an answer to the association request" in result.reason, result.reason
    assert always.connections == 2


def test_a_peer_taking_none_of_the_sop_classes_is_permanent(files: list[Path]) -> None:
    only_ct = Scp(sop_classes=[CTImageStorage]).start()
    try:
        result = _send(files, only_ct.peer)
    finally:
        only_ct.stop()
    assert result.outcome is Outcome.PERMANENT
    assert "accepted none" in result.reason


def test_a_sop_class_the_peer_lacks_is_permanent_for_that_object_only(files: list[Path]) -> None:
    without_seg = Scp(sop_classes=[u for k, u in OUTPUT_SOP_CLASSES.items() if k != "seg"]).start()
    try:
        result = _send(files, without_seg.peer)
    finally:
        without_seg.stop()
    assert result.outcome is Outcome.PERMANENT
    assert result.sent == len(files) - 1
    assert "Segmentation" in result.reason


def test_no_response_ends_the_batch_as_retriable(scp: Scp, files: list[Path]) -> None:
    scp.delay = 3.0  # longer than the DIMSE timeout below
    result = _send(files, scp.peer, timeout=1.0)
    assert result.outcome is Outcome.RETRIABLE
    assert result.objects[0].status is None
    assert all(o.outcome is Outcome.RETRIABLE for o in result.objects)


@pytest.mark.parametrize(
    ("kind", "syntax"),
    [("sc", RLELossless), ("pm", DeflatedExplicitVRLittleEndian)],  # an RLE overlay; a deflated map (SEG, PM)
)
def test_compressed_file_sent_as_is_or_decompressed(tmp_path: Path, kind: str, syntax: str) -> None:
    """A peer that takes the file's syntax gets the file so; another one gets the same data set,
    decompressed or inflated, in a little-endian syntax it took."""
    rle, deflate = syntax == RLELossless, syntax == DeflatedExplicitVRLittleEndian
    path = write_object(tmp_path, OUTPUT_SOP_CLASSES[kind], kind, rle=rle, deflate=deflate)
    takes_it = Scp(syntaxes=[syntax, ExplicitVRLittleEndian]).start()
    uncompressed_only = Scp().start()
    try:
        assert _send([path], takes_it.peer).outcome is Outcome.SUCCESS
        assert _send([path], uncompressed_only.peer).outcome is Outcome.SUCCESS
    finally:
        takes_it.stop()
        uncompressed_only.stop()
    assert takes_it.received[0][1] == syntax
    assert uncompressed_only.received[0][1] in (ExplicitVRLittleEndian, ImplicitVRLittleEndian)


def test_progress_is_reported_after_each_stored_object(scp: Scp, files: list[Path]) -> None:
    seen: list[int] = []
    lock = threading.Lock()

    def progress(n: int) -> None:
        with lock:
            seen.append(n)

    result = _send(files, scp.peer, on_progress=progress)
    assert result.outcome is Outcome.SUCCESS
    assert seen == list(range(1, len(files) + 1))


def test_a_deflated_map_goes_to_an_uncompressed_only_peer_without_being_read_whole(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The node's Parametric Map is deflated: a map of a 1,000-slice series inflates to 1 GB. To a
    peer that takes only uncompressed syntaxes it is inflated a piece at a time into a temporary
    file and sent from there, never read into memory (dcmread made to fail here), and the
    temporary file is gone afterwards. What arrives is the same map, in Explicit VR Little Endian."""
    frames = 64
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    ds.SOPClassUID = OUTPUT_SOP_CLASSES["pm"]
    ds.SOPInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.2", "1.2.826.0.1.3680043.8.498.3"
    ds.PatientID = "TEST"
    ds.Rows, ds.Columns, ds.NumberOfFrames = 128, 128, frames
    values = np.zeros((frames, 128, 128), dtype=np.float32)
    values[30:34, 40:60, 50:70] = np.linspace(0.1, 1.0, 4 * 20 * 20, dtype=np.float32).reshape(4, 20, 20)
    ds.FloatPixelData = values.tobytes()
    path = tmp_path / "pm.dcm"
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    assert path.stat().st_size < values.nbytes // 20  # mostly zeros: deflated to a few per cent

    def not_whole(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("the deflated map was read into memory")

    monkeypatch.setattr("dicom_node.sending.scu.pydicom.dcmread", not_whole)
    peer = Scp().start()  # Explicit and Implicit VR Little Endian only
    try:
        assert _send([path], peer.peer).outcome is Outcome.SUCCESS
    finally:
        peer.stop()
    assert peer.received == [(ds.SOPInstanceUID, ExplicitVRLittleEndian)]
    assert peer.pixels[ds.SOPInstanceUID] == hashlib.sha256(values.tobytes()).digest()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pm.dcm"]  # no temporary file left
