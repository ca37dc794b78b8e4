"""The C-STORE fast lane: C-STORE-RQ messages handled in the DUL thread, without pynetdicom's
DIMSE round trip.

In pynetdicom every C-STORE crosses two threads and builds its command sets with pydicom, which
costs a few milliseconds a message: more than writing a 512x512 CT image to disk. Here, in state
Sta6 (association established), a P-DATA-TF PDU whose first PDV is a complete C-STORE-RQ command
set on an accepted presentation context is taken by the fast lane: the data set fragments are
gathered, the store handler is called, and the C-STORE-RSP is written back, all in the DUL thread
(the one thread that writes to the socket). Any other message goes through pynetdicom unchanged:
association negotiation, C-ECHO, release, abort and any message we do not recognise.

P-DATA in Sta6 does not change the state of the upper-layer state machine (PS3.8 9.2, actions
DT-1 and DT-2), so taking such PDUs out of the machine leaves it consistent.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass, field
from typing import Callable, Protocol

from dicom_node.dicom_answers import Status

log = logging.getLogger(__name__)

C_STORE_RQ = 0x0001
C_STORE_RSP = 0x8001
NO_DATA_SET = 0x0101

_TAG_GROUP_LENGTH = 0x00000000
_TAG_AFFECTED_SOP_CLASS = 0x00000002
_TAG_COMMAND_FIELD = 0x00000100
_TAG_MESSAGE_ID = 0x00000110
_TAG_MESSAGE_ID_RESPONDED = 0x00000120
_TAG_DATA_SET_TYPE = 0x00000800
_TAG_STATUS = 0x00000900
_TAG_ERROR_COMMENT = 0x00000902
_TAG_AFFECTED_SOP_INSTANCE = 0x00001000


class StoreHandler(Protocol):
    def __call__(
        self, *, context_id: int, transfer_syntax: str, sop_class_uid: str, sop_instance_uid: str, dataset: bytes
    ) -> tuple[int, str]:
        """Store the data set; return (status, error comment or "")."""


def parse_command(data: bytes | memoryview) -> dict[int, bytes]:
    """Decode a command set (implicit VR little endian, group 0000 only, PS3.7 E.1)."""
    out: dict[int, bytes] = {}
    view = memoryview(data)
    pos = 0
    end = len(view)
    while pos + 8 <= end:
        group, element, length = struct.unpack_from("<HHI", view, pos)
        pos += 8
        if group != 0x0000 or pos + length > end:
            raise ValueError("malformed command set")
        out[(group << 16) | element] = bytes(view[pos : pos + length])
        pos += length
    if pos != end:
        raise ValueError("trailing bytes in command set")
    return out


def _us(value: bytes) -> int:
    return int(struct.unpack("<H", value[:2])[0])


def _ui(value: bytes) -> str:
    return value.rstrip(b"\x00 ").decode("ascii", "replace")


def _element(tag: int, value: bytes) -> bytes:
    if len(value) % 2:
        value += b"\x00"
    return struct.pack("<HHI", tag >> 16, tag & 0xFFFF, len(value)) + value


def encode_store_response(
    *, sop_class_uid: str, sop_instance_uid: str, message_id: int, status: int, error_comment: str = ""
) -> bytes:
    """A C-STORE-RSP command set (PS3.7 9.3.1.2), implicit VR little endian."""
    body = b"".join(
        [
            _element(_TAG_AFFECTED_SOP_CLASS, sop_class_uid.encode("ascii")),
            _element(_TAG_COMMAND_FIELD, struct.pack("<H", C_STORE_RSP)),
            _element(_TAG_MESSAGE_ID_RESPONDED, struct.pack("<H", message_id)),
            _element(_TAG_DATA_SET_TYPE, struct.pack("<H", NO_DATA_SET)),
            _element(_TAG_STATUS, struct.pack("<H", status)),
        ]
        + (
            [_element(_TAG_ERROR_COMMENT, error_comment.encode("ascii", "replace")[:64])]
            if error_comment and status != 0
            else []
        )
        + [_element(_TAG_AFFECTED_SOP_INSTANCE, sop_instance_uid.encode("ascii"))]
    )
    return _element(_TAG_GROUP_LENGTH, struct.pack("<I", len(body))) + body


def p_data_tf(context_id: int, control: int, data: bytes) -> bytes:
    """One P-DATA-TF PDU holding one PDV (PS3.8 9.3.5)."""
    item = struct.pack(">IBB", len(data) + 2, context_id, control) + data
    return struct.pack(">BBI", 0x04, 0x00, len(item)) + item


@dataclass
class _Message:
    context_id: int
    transfer_syntax: str
    sop_class_uid: str
    sop_instance_uid: str
    message_id: int
    parts: list[memoryview] = field(default_factory=list)  # fragments of the PDUs, joined at the end


class FastLane:
    """Per-association state of the fast lane (lives in the DUL thread)."""

    def __init__(
        self, handler: StoreHandler, accepted: Callable[[int], str | None], send: Callable[[bytes], None]
    ) -> None:
        self.handler = handler
        self.accepted = accepted  # context id -> transfer syntax, None if not accepted
        self.send = send
        self.message: _Message | None = None

    def take(self, pdu: bytes) -> bytes | None:
        """Handle a P-DATA-TF PDU (with its 6-byte header).

        Returns None when the fast lane consumed the whole PDU, else the PDU bytes (possibly the
        remainder after a fast-lane message ended in it) for pynetdicom to process.
        """
        items = _pdvs(pdu)
        if self.message is None and not (items and self._is_store_command(items[0])):
            return pdu
        for index, (context_id, control, data) in enumerate(items):
            if self.message is None:
                if not self._is_store_command((context_id, control, data)):
                    return _repack(items[index:])
                self._start((context_id, control, data))
                continue
            if control & 0x01 or context_id != self.message.context_id:
                raise ValueError("a new command arrived before the data set of a C-STORE ended")
            self.message.parts.append(data)
            if control & 0x02:
                self._finish()
        return None

    def _is_store_command(self, pdv: tuple[int, int, memoryview]) -> bool:
        """A complete C-STORE-RQ command set, with a data set to follow, on an accepted context."""
        context_id, control, data = pdv
        if control & 0x03 != 0x03 or self.accepted(context_id) is None:
            return False
        try:
            command = parse_command(data)
        except (ValueError, struct.error):
            return False
        return (
            _us(command.get(_TAG_COMMAND_FIELD, b"\0\0")) == C_STORE_RQ
            and _us(command.get(_TAG_DATA_SET_TYPE, struct.pack("<H", NO_DATA_SET))) != NO_DATA_SET
            and all(t in command for t in (_TAG_AFFECTED_SOP_CLASS, _TAG_AFFECTED_SOP_INSTANCE, _TAG_MESSAGE_ID))
        )

    def _start(self, pdv: tuple[int, int, memoryview]) -> None:
        context_id, _, data = pdv
        command = parse_command(data)
        self.message = _Message(
            context_id=context_id,
            transfer_syntax=str(self.accepted(context_id)),
            sop_class_uid=_ui(command[_TAG_AFFECTED_SOP_CLASS]),
            sop_instance_uid=_ui(command[_TAG_AFFECTED_SOP_INSTANCE]),
            message_id=_us(command[_TAG_MESSAGE_ID]),
        )

    def _finish(self) -> None:
        message, self.message = self.message, None
        assert message is not None
        dataset = b"".join(message.parts)
        message.parts.clear()
        try:
            status, comment = self.handler(
                context_id=message.context_id,
                transfer_syntax=message.transfer_syntax,
                sop_class_uid=message.sop_class_uid,
                sop_instance_uid=message.sop_instance_uid,
                dataset=dataset,
            )
        except Exception:
            # As pynetdicom does for a handler that raises: log it, answer a failure.
            log.exception("C-STORE handler failed for %s", message.sop_instance_uid)
            status, comment = int(Status.UNABLE_TO_PROCESS), "internal error, see the node's log"
        response = encode_store_response(
            sop_class_uid=message.sop_class_uid,
            sop_instance_uid=message.sop_instance_uid,
            message_id=message.message_id,
            status=status,
            error_comment=comment,
        )
        self.send(p_data_tf(message.context_id, 0x03, response))


def _pdvs(pdu: bytes) -> list[tuple[int, int, memoryview]]:
    """(context id, message control header, fragment) of each PDV item of a P-DATA-TF PDU."""
    view = memoryview(pdu)
    (length,) = struct.unpack_from(">I", view, 2)
    end = 6 + length
    pos = 6
    out: list[tuple[int, int, memoryview]] = []
    while pos < end:
        (item_length,) = struct.unpack_from(">I", view, pos)
        if item_length < 2 or pos + 4 + item_length > end:
            raise ValueError("malformed PDV item")
        context_id = view[pos + 4]
        control = view[pos + 5]
        out.append((context_id, control, view[pos + 6 : pos + 4 + item_length]))
        pos += 4 + item_length
    return out


def _repack(items: list[tuple[int, int, memoryview]]) -> bytes:
    body = b"".join(struct.pack(">IBB", len(data) + 2, cid, ctl) + bytes(data) for cid, ctl, data in items)
    return struct.pack(">BBI", 0x04, 0x00, len(body)) + body
