"""The listener against hostile and broken peers, over real sockets against
`dicom-node serve` with two listener processes, DCMTK's storescu as the sender that must still get
through. Each row of the issue's table is a test here; tests/reliability/test_fuzz.py runs the
seeded fuzz, tests/reliability/test_crash.py the kill -9 rounds.

Bounds asserted: every listener process stays under RSS_BOUND; the listener processes are the same
ones at the end (none crashed and was restarted); a refused peer is logged, a few lines a minute.
"""

from __future__ import annotations

import os
import random
import select
import struct
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import pydicom
import pytest
from pydicom.filebase import DicomBytesIO

from dicom_node.listener.fastlane import p_data_tf
from dicom_node.listener.limits import REFUSAL_SECONDS
from model.phantoms.writer import write_phantom_series
from tests.harness.hostile import (
    CT_IMAGE,
    DEFLATED_LE,
    EXPLICIT_LE,
    MR_IMAGE,
    Peer,
    RssPeak,
    accepted_contexts,
    deflate_bomb,
    fresh_uid,
    listener_processes,
    max_listener_rss,
    send_endless,
    send_store,
    store_status,
)
from tests.harness.peers import NodeProcess, cli, cli_json, free_port, node_env, storescu, wait_until

pytestmark = pytest.mark.integration

TITLE = "COVIDNODE"
RSS_BOUND = 300 * 2**20  # bytes, per listener process
ASSOCIATION_TIMEOUT = 8.0  # ARTIM: long enough that the half-open test holds its connections
NETWORK_TIMEOUT = 3.0
PER_ADDRESS = 16
MAX_DATASET = 384 * 2**20  # listener.max_dataset_bytes here (takes the 315 MB Enhanced CT below)


class HostileNode:
    def __init__(self, env: dict[str, str], port: int, process: NodeProcess) -> None:
        self.env, self.port, self.process = env, port, process
        assert process.proc is not None
        self.pid = process.proc.pid
        self.listeners = sorted(p.pid for p in listener_processes(self.pid))

    def log(self) -> str:
        return self.process.output()

    def rss(self) -> int:
        return max_listener_rss(self.pid)

    @property
    def incoming(self) -> Path:
        """Where data sets being received are spooled (dicom_node.storage.spool)."""
        return Path(self.env["DICOM_NODE_DATA_DIR"]) / "storage" / ".incoming"

    def stored(self, sop_instance: str) -> list[Path]:
        return list((Path(self.env["DICOM_NODE_DATA_DIR"]) / "storage").rglob(f"{sop_instance}.dcm"))


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostileNode]:
    data_dir = tmp_path_factory.mktemp("hostile") / "data"
    data_dir.mkdir()
    env = node_env(
        data_dir,
        admin_port=free_port(),
        listener__processes=2,
        listener__reload_seconds=0.5,
        listener__association_timeout_seconds=ASSOCIATION_TIMEOUT,
        listener__network_timeout_seconds=NETWORK_TIMEOUT,
        listener__max_connections_per_address=PER_ADDRESS,
        listener__max_dataset_bytes=MAX_DATASET,
        completion__poll_seconds=0.2,
    )
    port = free_port()
    cli(env, "db", "upgrade")
    cli(env, "ae", "add-local", TITLE, "--port", str(port), "--quiet-seconds", "1")
    cli(env, "ae", "add-source", "STORESCU")
    cli(env, "ae", "add-source", "FUZZER")
    process = NodeProcess(env, ["serve"]).start()
    process.wait_for_port(port)
    wait_until(lambda: len(listener_processes(process.proc.pid)) == 2, 30, "two listener processes")  # type: ignore[union-attr]
    started = HostileNode(env, port, process)
    yield started
    process.stop()


@pytest.fixture(scope="module")
def phantom(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_phantom_series(
        "normal", tmp_path_factory.mktemp("phantom") / "series", seed=3, slices=4, rows=64, columns=64
    )


def assert_healthy(node: HostileNode, phantom: Path) -> None:
    """The listener serves a real sender, within its memory bound, with its original processes."""
    sent = storescu(phantom, node.port)
    assert sent.returncode == 0, sent.stderr
    assert node.rss() < RSS_BOUND, f"listener RSS {node.rss() / 2**20:.0f} MB"
    assert sorted(p.pid for p in listener_processes(node.pid)) == node.listeners, node.log()[-3000:]


def established(node: HostileNode, timeout: float = 10.0) -> Peer:
    peer = Peer(node.port, timeout=timeout)
    answer = peer.associate(TITLE, "FUZZER", [(1, CT_IMAGE, [EXPLICIT_LE])])
    assert answer[0] == 0x02, answer
    return peer


def test_a_huge_pdu_length_before_association_is_refused_on_its_header(node: HostileNode, phantom: Path) -> None:
    # 01 00 FF FF FF FF: an A-ASSOCIATE-RQ claiming 4 GiB, before the allow-list is consulted.
    for _ in range(4):
        peer = Peer(node.port, source="127.0.0.3")
        peer.send(b"\x01\x00\xff\xff\xff\xff")
        closed, seen = peer.closed_within(30)
        peer.close()
        assert closed and seen == [0x07], seen  # an A-ABORT, then the connection closed
    assert_healthy(node, phantom)


def test_a_huge_p_data_inside_an_association_is_refused_on_its_header(node: HostileNode, phantom: Path) -> None:
    peer = established(node)
    peer.send(b"\x04\x00\xff\xff\xff\xf0" + b"\x00" * 64)
    closed, seen = peer.closed_within(30)
    assert closed and seen == [0x07], seen
    assert "more than the 4194304 accepted" in node.log()
    assert_healthy(node, phantom)


@pytest.mark.parametrize(
    "what",
    ["3 header bytes", "10 of 100 bytes of an A-ASSOCIATE-RQ", "a P-DATA-TF 10 of 1000 bytes in an association"],
)
def test_a_partial_pdu_then_silence_is_timed_out(node: HostileNode, phantom: Path, what: str) -> None:
    if what.startswith("a P-DATA"):
        peer = established(node)
        peer.send(struct.pack(">BBI", 0x04, 0, 1000) + b"\x00" * 4)
    else:
        peer = Peer(node.port, source="127.0.0.4")
        peer.send(b"\x01\x00\x00" if what.startswith("3") else struct.pack(">BBI", 0x01, 0, 100) + b"\x00" * 4)
    # Closed by the listener: ARTIM before an association, the PDU read timeout in one.
    closed, _ = peer.closed_within(ASSOCIATION_TIMEOUT + NETWORK_TIMEOUT + 30)
    assert closed, f"{what}: connection still open"
    assert_healthy(node, phantom)


def test_random_bytes_get_an_abort_and_the_connection_closed_and_few_log_lines(
    node: HostileNode, phantom: Path
) -> None:
    rng = random.Random(8)
    before = node.log().count("protocol error from 127.0.0.5")
    for _ in range(20):
        peer = Peer(node.port, source="127.0.0.5")
        garbage = bytes([0x09]) + rng.randbytes(64 * 1024 - 1)  # an unknown PDU type first
        peer.send(garbage[:4096])
        closed, seen = peer.closed_within(30)
        peer.close()
        assert closed and seen[:1] == [0x07], seen
    logged = node.log().count("protocol error from 127.0.0.5") - before
    # At most 3 lines a minute per peer and listener process (dicom_node.listener.limits.PeerLog).
    assert 1 <= logged <= 3 * len(node.listeners), logged
    assert_healthy(node, phantom)


def test_half_open_connections_do_not_lock_out_a_real_sender(node: HostileNode, phantom: Path) -> None:
    # 200 connections from another address that each send 3 bytes and hold on.
    hostile = []
    started = time.monotonic()
    for _ in range(200):
        peer = Peer(node.port, source="127.0.0.6", timeout=5)
        peer.send(b"\x01\x00\x00")
        hostile.append(peer)
    opened_in = time.monotonic() - started
    try:
        sent = storescu(phantom, node.port)
        assert sent.returncode == 0, sent.stderr
        # They were still held while storescu sent (ARTIM has not passed yet).
        assert time.monotonic() - started < ASSOCIATION_TIMEOUT, f"opening took {opened_in:.1f} s"
    finally:
        for peer in hostile:
            peer.close()
    assert "connection from 127.0.0.6" in node.log() and "max_connections_per_address" in node.log()
    assert_healthy(node, phantom)


def test_over_the_per_address_limit_a_request_gets_an_associate_rj_and_silence_or_garbage_holds_nothing(
    node: HostileNode, phantom: Path
) -> None:
    """64 half-open connections from one address: each listener process admits 16 (held until
    ARTIM); the others are refused without a slot. A real A-ASSOCIATE-RQ from that address then
    gets an A-ASSOCIATE-RJ (transient, service provider (presentation), local limit exceeded) and
    the connection closed; garbage gets an A-ABORT at once; silence, and the half-open ones over
    the limit, are closed after REFUSAL_SECONDS, well before ARTIM. Once the admitted ones are
    closed the address negotiates again."""
    source = "127.0.0.8"
    holders = []
    for _ in range(4 * PER_ADDRESS):  # each process of the two gets more than PER_ADDRESS (all but surely)
        peer = Peer(node.port, source=source, timeout=5)
        peer.send(b"\x01\x00\x00")
        holders.append(peer)
    opened = time.monotonic()
    try:
        for _ in range(3):
            probe = Peer(node.port, source=source)
            assert probe.associate(TITLE, "FUZZER") == (0x03, bytes([0x00, 0x02, 0x03, 0x02]))
            assert probe.closed_within(5) == (True, [])
            probe.close()
        silent = Peer(node.port, source=source)
        silent_since = time.monotonic()
        unknown = Peer(node.port, source=source)
        unknown.send(bytes([0x09]) + random.Random(9).randbytes(4095))
        huge = Peer(node.port, source=source)
        huge.send(b"\x01\x00\xff\xff\xff\xff")
        for garbage in (unknown, huge):
            assert garbage.closed_within(2) == (True, [0x07])  # an A-ABORT at once
            garbage.close()
        assert silent.closed_within(REFUSAL_SECONDS + 3) == (True, [])
        silent.close()
        assert REFUSAL_SECONDS - 0.2 < time.monotonic() - silent_since < REFUSAL_SECONDS + 3
        # The half-open ones over the limit are closed by now; the admitted ones wait for ARTIM.
        wait_until(lambda: time.monotonic() - opened > REFUSAL_SECONDS + 1, 10, "the refusal deadline")
        readable, _, _ = select.select([peer.sock for peer in holders], [], [], 0)
        assert time.monotonic() - opened < ASSOCIATION_TIMEOUT - 1, "too slow to tell the refusal deadline from ARTIM"
        assert len(holders) - len(readable) == 2 * PER_ADDRESS, f"{len(readable)} of {len(holders)} closed"
    finally:
        for peer in holders:
            peer.close()
    log = node.log()
    limit = f"{PER_ADDRESS} connection(s) from that address already open (listener.max_connections_per_address)"
    assert f"association refused: FUZZER@{source} to {TITLE}: {limit}; A-ASSOCIATE-RJ rejected-transient" in log
    assert f"connection from {source} to {TITLE} (port {node.port}) refused: {limit}; no whole" in log
    # The admission slots are given back: the address negotiates again.
    wait_until(lambda: _negotiates(node, source), 10, f"an association from {source}")
    assert_healthy(node, phantom)


def _negotiates(node: HostileNode, source: str) -> bool:
    peer = Peer(node.port, source=source)
    try:
        return peer.associate(TITLE, "FUZZER")[0] == 0x02
    finally:
        peer.close()


def _dataset_bytes(ds: pydicom.Dataset) -> bytes:
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    pydicom.filewriter.write_dataset(fp, ds)
    return fp.getvalue()


def test_an_image_with_half_its_pixel_data_is_refused_and_the_rest_of_its_series_completes(
    node: HostileNode, tmp_path: Path
) -> None:
    series = write_phantom_series("normal", tmp_path / "series", seed=21, slices=5, rows=64, columns=64)
    files = sorted(series.iterdir())
    bad = pydicom.dcmread(files[2])
    bad.PixelData = bad.PixelData[: len(bad.PixelData) // 2]
    peer = established(node)
    status = send_store(peer, 1, CT_IMAGE, str(bad.SOPInstanceUID), _dataset_bytes(bad))
    peer.close()
    assert status == 0xC000, status  # Cannot understand, before anything is written
    assert f"Pixel Data has {64 * 64} bytes" in node.log() and str(bad.SOPInstanceUID) in node.log()
    rest = [f for i, f in enumerate(files) if i != 2]
    sent = storescu(rest, node.port)
    assert sent.returncode == 0, sent.stderr
    uid = str(bad.SeriesInstanceUID)

    def complete() -> dict | None:
        rows = [
            r
            for r in cli_json(node.env, "series", "list", "--json")
            if r["series_uid"] == uid and r["series_status"] != "receiving"
        ]
        return rows[0] if rows else None

    row = wait_until(complete, 60, "the series to complete")
    assert row["instances"] == 4 and row["series_status"] == "complete", row
    stored = list((Path(node.env["DICOM_NODE_DATA_DIR"]) / "storage").rglob(f"{bad.SOPInstanceUID}.dcm"))
    assert stored == []


def test_rejected_presentation_contexts_are_logged_with_who_and_what(node: HostileNode) -> None:
    """An MR sent to a CT-only AE: nothing accepted, a warning naming the caller and the class. (A
    sender that proposes every class it knows, as storescu does, and gets some accepted, has its
    rejected ones logged at DEBUG: they are not news.)"""
    peer = Peer(node.port)
    kind, body = peer.associate(TITLE, "FUZZER", [(3, MR_IMAGE, [EXPLICIT_LE])])
    peer.send(b"\x05\x00\x00\x00\x00\x04\x00\x00\x00\x00")  # A-RELEASE-RQ
    peer.close()
    assert kind == 0x02 and accepted_contexts(body) == {}
    line = wait_until(
        lambda: next(
            (ln for ln in node.log().splitlines() if "FUZZER@127.0.0.1" in ln and "context(s) rejected" in ln), None
        ),
        10,
        "the log line",
    )
    assert (
        TITLE in line
        and "MR Image Storage" in line
        and "abstract syntax (SOP class) not supported" in line
        and "(0 accepted)" in line
    )


def _endless_then_last(node: HostileNode, total: int) -> int | None:
    """A data set of ``total`` bytes in 16 kB fragments, then its last fragment: the status."""
    peer = established(node, timeout=120)
    try:
        uid = fresh_uid(random.Random())
        assert send_endless(peer, 1, CT_IMAGE, uid, total) == total
        peer.send(p_data_tf(1, 0x02, b"\x00\x00"))
        return store_status(peer.read_pdu())
    finally:
        peer.close()


def test_a_data_set_that_never_ends_is_refused_in_bounded_memory_and_leaves_nothing(
    node: HostileNode, phantom: Path
) -> None:
    """1.5 GB of P-DATA fragments of 16 kB, never the last: the first MAX_DATASET bytes are
    spooled to a file, then counted and dropped; the last fragment gets 0xA700 naming the limit."""
    with RssPeak(node.pid) as rss:
        status = _endless_then_last(node, 1536 * 2**20)
    assert status == 0xA700, status
    assert "listener.max_dataset_bytes" in node.log()
    assert list(node.incoming.iterdir()) == []
    assert rss.peak < RSS_BOUND, f"listener RSS {rss.peak / 2**20:.0f} MB"
    assert_healthy(node, phantom)


def test_a_data_set_cut_off_by_its_sender_leaves_nothing_on_disk(node: HostileNode, phantom: Path) -> None:
    peer = established(node)
    send_endless(peer, 1, CT_IMAGE, fresh_uid(random.Random()), 64 * 2**20)
    wait_until(lambda: any(node.incoming.glob("*.part")), 30, "the data set to be spooled to a file")
    peer.close()
    wait_until(lambda: not any(node.incoming.iterdir()), 30, "the spooled file to be removed")
    assert_healthy(node, phantom)


def _bomb_status(node: HostileNode, bomb: bytes, uid: str) -> int | None:
    peer = Peer(node.port, timeout=120)
    try:
        kind, body = peer.associate(TITLE, "FUZZER", [(1, CT_IMAGE, [DEFLATED_LE])])
        assert kind == 0x02 and accepted_contexts(body) == {1: DEFLATED_LE}, body
        return send_store(peer, 1, CT_IMAGE, uid, bomb)
    finally:
        peer.close()


def test_a_deflate_bomb_is_inflated_in_bounded_memory_and_refused(node: HostileNode, phantom: Path) -> None:
    """1.5 MB that inflates to 1.5 GB: inflated a chunk at a time while its header is read, refused
    0xA700 once it passes listener.max_dataset_bytes; nothing stored."""
    uid = fresh_uid(random.Random())
    bomb = deflate_bomb(uid, 1536 * 2**20)
    assert len(bomb) < 2 * 2**20
    with RssPeak(node.pid) as rss:
        status = _bomb_status(node, bomb, uid)
    assert status == 0xA700, status
    assert "inflates to more than" in node.log()
    assert node.stored(uid) == [] and list(node.incoming.iterdir()) == []
    assert rss.peak < RSS_BOUND, f"listener RSS {rss.peak / 2**20:.0f} MB"
    assert_healthy(node, phantom)


def test_ten_such_peers_at_once_stay_in_bounded_memory(node: HostileNode, phantom: Path) -> None:
    """Ten long data sets of zeros (spooled to files, then refused: not a data set) and ten deflate
    bombs past listener.max_dataset_bytes, all at once."""
    uids = [fresh_uid(random.Random()) for _ in range(10)]
    bombs = [deflate_bomb(uid, MAX_DATASET + 16 * 2**20) for uid in uids]
    with RssPeak(node.pid) as rss:
        with ThreadPoolExecutor(20) as pool:
            endless = [pool.submit(_endless_then_last, node, 64 * 2**20) for _ in range(10)]
            inflating = [pool.submit(_bomb_status, node, bomb, uid) for bomb, uid in zip(bombs, uids)]
            statuses = [f.result() for f in endless + inflating]
    assert statuses == [0xC000] * 10 + [0xA700] * 10, statuses
    assert list(node.incoming.iterdir()) == []
    print(f"ten endless data sets and ten bombs at once: listener RSS peak {rss.peak / 2**20:.0f} MB")
    assert rss.peak < RSS_BOUND, f"listener RSS {rss.peak / 2**20:.0f} MB"
    assert_healthy(node, phantom)


def test_an_enhanced_ct_of_600_frames_is_stored_in_bounded_memory(node: HostileNode, tmp_path: Path) -> None:
    """One 315 MB object by storescu: spooled to a file as it arrives and renamed into place."""
    path = write_phantom_series(
        "covid", tmp_path / "enhanced", seed=5, slices=600, rows=512, columns=512, multiframe=True, write_masks=False
    )
    files = list(path.iterdir())
    assert len(files) == 1 and files[0].stat().st_size > 300 * 2**20
    uid = str(pydicom.dcmread(files[0], stop_before_pixels=True).SOPInstanceUID)
    with RssPeak(node.pid) as rss:
        sent = storescu(files, node.port)
    assert sent.returncode == 0, sent.stderr
    stored = node.stored(uid)
    assert len(stored) == 1 and stored[0].stat().st_size > files[0].stat().st_size - 2**20
    print(f"a 600-frame Enhanced CT: listener RSS peak {rss.peak / 2**20:.0f} MB")
    assert rss.peak < RSS_BOUND, f"listener RSS {rss.peak / 2**20:.0f} MB"


def test_memory_bound_and_no_listener_restarted(node: HostileNode, phantom: Path) -> None:
    assert_healthy(node, phantom)
    assert "listener process" not in node.log() or "exited" not in node.log()
    print(f"listener RSS at the end: {node.rss() / 2**20:.0f} MB (bound {RSS_BOUND / 2**20:.0f} MB); pid {os.getpid()}")
