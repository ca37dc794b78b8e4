"""Unit tests of the C-STORE fast lane's command-set codec and PDV handling.

Covers: our C-STORE-RSP encoding decodes with pynetdicom/pydicom to the same values; requests
encoded by pynetdicom are recognised; a message split over PDUs; what is not a C-STORE goes back
to pynetdicom untouched; a handler that raises gives a failure status. The end-to-end behaviour
against DCMTK is in tests/integration/test_listener.py.
"""

from __future__ import annotations

import struct
from io import BytesIO

import pytest
from pynetdicom.dimse_messages import C_STORE_RQ
from pynetdicom.dimse_primitives import C_STORE
from pynetdicom.dsutils import decode

from dicom_node.dicom_answers import Status
from dicom_node.listener.fastlane import (
    MAX_COMMAND_BYTES,
    PASSTHROUGH_BYTES,
    FastLane,
    encode_store_response,
    p_data_tf,
    parse_command,
)

CT = "1.2.840.10008.5.1.4.1.1.2"


def _store_rq_command(message_id: int = 7, instance: str = "1.2.3.4.5") -> bytes:
    primitive = C_STORE()
    primitive.MessageID = message_id
    primitive.AffectedSOPClassUID = CT
    primitive.AffectedSOPInstanceUID = instance
    primitive.Priority = 0
    primitive.DataSet = BytesIO(b"\x00" * 4)
    msg = C_STORE_RQ()
    msg.primitive_to_message(primitive)
    encoded = msg.encode_msg(1, 0)
    pdata = next(iter(encoded))
    context_id, data = pdata.presentation_data_value_list[0]
    assert data[0] & 0x01
    return bytes(data[1:])


def test_response_decodes_with_pydicom() -> None:
    raw = encode_store_response(
        sop_class_uid=CT, sop_instance_uid="1.2.3", message_id=9, status=0xA700, error_comment="disk full"
    )
    ds = decode(BytesIO(raw), True, True)
    assert ds.CommandField == 0x8001
    assert ds.MessageIDBeingRespondedTo == 9
    assert ds.Status == 0xA700
    assert ds.ErrorComment == "disk full"
    assert ds.AffectedSOPInstanceUID == "1.2.3"
    assert ds.CommandDataSetType == 0x0101
    assert ds.CommandGroupLength == len(raw) - 12


def test_success_response_has_no_error_comment() -> None:
    ds = decode(
        BytesIO(
            encode_store_response(sop_class_uid=CT, sop_instance_uid="1.2", message_id=1, status=0, error_comment="x")
        ),
        True,
        True,
    )
    assert "ErrorComment" not in ds


def test_parses_pynetdicom_store_request() -> None:
    command = parse_command(_store_rq_command())
    assert struct.unpack("<H", command[0x00000100])[0] == 0x0001
    assert command[0x00001000].rstrip(b"\x00") == b"1.2.3.4.5"


class _Sink:
    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.discarded = False

    def write(self, fragment: bytes | memoryview) -> None:
        self.parts.append(bytes(fragment))

    def discard(self) -> None:
        self.discarded = True


class _Handler:
    """Records what the lane hands over; ``status`` answered, or raises when ``broken``."""

    def __init__(self, results: list[dict], status: int = 0, broken: bool = False) -> None:
        self.results = results
        self.status = status
        self.broken = broken
        self.sinks: list[_Sink] = []

    def open(self, **kwargs: object) -> _Sink:
        self.sinks.append(_Sink())
        return self.sinks[-1]

    def store(self, **kwargs: object) -> tuple[int, str]:
        if self.broken:
            raise RuntimeError("boom")
        sink = kwargs.pop("dataset")
        assert isinstance(sink, _Sink)
        self.results.append({**kwargs, "dataset": b"".join(sink.parts)})
        return self.status, "why"


def _lane(results: list[dict], sent: list[bytes], status: int = 0) -> FastLane:
    return FastLane(_Handler(results, status), lambda cid: "1.2.840.10008.1.2.1" if cid == 1 else None, sent.append)


def test_message_over_several_pdus() -> None:
    results: list[dict] = []
    sent: list[bytes] = []
    lane = _lane(results, sent)
    command = _store_rq_command()
    first = p_data_tf(1, 0x03, command)
    assert lane.take(first) is None
    assert lane.take(p_data_tf(1, 0x00, b"AB")) is None
    assert results == []
    assert lane.take(p_data_tf(1, 0x02, b"CD")) is None
    assert results[0]["dataset"] == b"ABCD"
    assert results[0]["sop_instance_uid"] == "1.2.3.4.5"
    response = parse_command(sent[0][12:])
    assert struct.unpack("<H", response[0x00000900])[0] == 0
    assert struct.unpack("<H", response[0x00000120])[0] == 7


def test_other_messages_go_to_pynetdicom_unchanged() -> None:
    lane = _lane([], [])
    echo = p_data_tf(1, 0x03, b"\x00\x00\x00\x01\x02\x00\x00\x00\x30\x00")  # not a C-STORE command
    assert lane.take(echo) == echo
    unknown_context = p_data_tf(3, 0x03, _store_rq_command())
    assert lane.take(unknown_context) == unknown_context


def test_a_command_set_in_several_fragments_is_taken() -> None:
    results: list[dict] = []
    sent: list[bytes] = []
    lane = _lane(results, sent)
    command = _store_rq_command(message_id=3)
    assert lane.take(p_data_tf(1, 0x01, command[:10])) is None
    assert lane.take(p_data_tf(1, 0x01, command[10:30])) is None
    assert lane.take(p_data_tf(1, 0x03, command[30:])) is None
    assert lane.take(p_data_tf(1, 0x02, b"WXYZ")) is None
    assert results[0]["dataset"] == b"WXYZ" and results[0]["sop_instance_uid"] == "1.2.3.4.5"
    assert struct.unpack("<H", parse_command(sent[0][12:])[0x00000120])[0] == 3


def test_a_fragmented_command_that_is_not_a_store_goes_to_pynetdicom_whole() -> None:
    lane = _lane([], [])
    echo = b"\x00\x00\x00\x01\x02\x00\x00\x00\x30\x00"
    assert lane.take(p_data_tf(1, 0x01, echo[:4])) is None
    assert lane.take(p_data_tf(1, 0x03, echo[4:])) == p_data_tf(1, 0x03, echo)


def test_a_data_set_pynetdicom_would_gather_is_bounded() -> None:
    lane = _lane([], [])
    not_ours = p_data_tf(3, 0x03, _store_rq_command())
    assert lane.take(not_ours) == not_ours
    fragment = p_data_tf(3, 0x00, b"\x00" * 65536)
    with pytest.raises(ValueError, match="more than"):
        for _ in range(PASSTHROUGH_BYTES // 65536 + 1):
            assert lane.take(fragment) == fragment


def test_a_data_set_without_a_command_is_bounded() -> None:
    lane = _lane([], [])
    with pytest.raises(ValueError):
        for _ in range(PASSTHROUGH_BYTES // 65536 + 1):
            lane.take(p_data_tf(1, 0x00, b"\x00" * 65536))


def test_a_huge_command_set_is_an_error() -> None:
    lane = _lane([], [])
    with pytest.raises(ValueError, match="command set of more than"):
        for _ in range(MAX_COMMAND_BYTES // 4096 + 1):
            lane.take(p_data_tf(1, 0x01, b"\x00" * 4096))


def test_the_data_set_goes_to_the_sink_as_it_arrives_and_is_dropped_on_close() -> None:
    handler = _Handler([])
    lane = FastLane(handler, lambda cid: "1.2.840.10008.1.2.1", lambda _: None)
    lane.take(p_data_tf(1, 0x03, _store_rq_command()))
    lane.take(p_data_tf(1, 0x00, b"AB"))
    lane.take(p_data_tf(1, 0x00, b"CD"))
    assert handler.sinks[0].parts == [b"AB", b"CD"]
    lane.close()
    assert handler.sinks[0].discarded and lane.message is None


def test_a_new_command_inside_a_data_set_is_an_error() -> None:
    lane = _lane([], [])
    lane.take(p_data_tf(1, 0x03, _store_rq_command()))
    with pytest.raises(ValueError):
        lane.take(p_data_tf(1, 0x03, _store_rq_command()))


def test_handler_exception_answers_failure() -> None:
    sent: list[bytes] = []

    lane = FastLane(_Handler([], broken=True), lambda cid: "1.2.840.10008.1.2.1", sent.append)
    lane.take(p_data_tf(1, 0x03, _store_rq_command()))
    lane.take(p_data_tf(1, 0x02, b"XY"))
    response = parse_command(sent[0][12:])
    assert struct.unpack("<H", response[0x00000900])[0] == Status.UNABLE_TO_PROCESS
