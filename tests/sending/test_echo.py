"""The C-ECHO test of a destination against a pynetdicom SCP and raw sockets: what each kind of
failure is called, and that a connection dropped without an answer is asked once more."""

from __future__ import annotations

from typing import Iterator

import pytest
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # made at import time

from dicom_node.sending.echo import c_echo
from tests.harness.peers import free_port
from tests.sending.scp import Relay, Scp


@pytest.fixture
def scp() -> Iterator[Scp]:
    peer = Scp(sop_classes=[Verification]).start()
    try:
        yield peer
    finally:
        peer.stop()


def test_an_answering_peer(scp: Scp) -> None:
    answer = c_echo("127.0.0.1", scp.port, scp.title, calling_ae_title="NODE")
    assert answer.ok and answer.outcome == "Success" and answer.status == "0x0000", answer
    assert answer.round_trip_ms is not None and answer.round_trip_ms >= 0
    assert scp.associations == 1


def test_a_wrong_called_title_is_a_rejection_with_its_reason(scp: Scp) -> None:
    answer = c_echo("127.0.0.1", scp.port, "NOTPACS", calling_ae_title="NODE")
    assert not answer.ok and answer.outcome == "association rejected", answer
    assert "Permanent" in answer.detail and "Called AE title not recognised" in answer.detail, answer.detail
    assert scp.associations == 1  # a refusal is not asked again


def test_nobody_listening_and_a_silent_peer_are_told_apart() -> None:
    refused = c_echo("127.0.0.1", free_port(), "PACS", calling_ae_title="NODE", timeout=1.0)
    assert refused.outcome == "no association" and "no TCP connection" in refused.detail, refused
    silent = Relay(None)  # takes the connection, never answers the association request
    try:
        answer = c_echo("127.0.0.1", silent.port, "PACS", calling_ae_title="NODE", timeout=1.0)
    finally:
        silent.close()
    assert answer.outcome == "no association", answer
    assert "no answer to the association request within 1 s" in answer.detail, answer.detail
    assert silent.connections == 1  # silence is not waited for twice


def test_a_connection_dropped_without_an_answer_is_asked_once_more(scp: Scp) -> None:
    once = Relay(scp.port, drops=1)
    try:
        answer = c_echo("127.0.0.1", once.port, scp.title, calling_ae_title="NODE")
    finally:
        once.close()
    assert answer.ok and answer.outcome == "Success", answer
    assert once.connections == 2 and scp.associations == 1

    always = Relay(scp.port, drops=10)
    try:
        answer = c_echo("127.0.0.1", always.port, scp.title, calling_ae_title="NODE")
    finally:
        always.close()
    assert answer.outcome == "no association", answer
    assert "the connection was closed before an answer to the association request" in answer.detail, answer.detail
    assert always.connections == 2
