"""The C-STORE fast lane: C-STORE-RQ messages handled in the DUL thread, without pynetdicom's
DIMSE round trip.

In pynetdicom every C-STORE crosses two threads and builds its command sets with pydicom, which
costs a few milliseconds a message: more than writing a 512x512 CT image to disk. Here, in state
Sta6 (association established), every C-STORE-RQ on an accepted presentation context is taken by
the fast lane: its data set fragments go to a spool as they arrive (dicom_node.storage.spool: in
memory for an image, a file for a large one), the store handler is called, and the C-STORE-RSP is
written back, all in the DUL thread (the one thread that writes to the socket). Any other message
goes through pynetdicom: association negotiation, C-ECHO, release, abort and any message we do
not recognise.

P-DATA in Sta6 does not change the state of the upper-layer state machine (PS3.8 9.2, actions
DT-1 and DT-2), so taking such PDUs out of the machine leaves it consistent.
"""

from __future__ import annotations

import logging
import struct
from dataclasses import dataclass
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
_TAG_PRIORITY = 0x00000700
_TAG_DATA_SET_TYPE = 0x00000800
_TAG_STATUS = 0x00000900
_TAG_ERROR_COMMENT = 0x00000902
_TAG_AFFECTED_SOP_INSTANCE = 0x00001000
# A command set is a few hundred bytes; one longer than this is a protocol error.
MAX_COMMAND_BYTES = 64 * 1024
# The data set of a message the fast lane does not take (pynetdicom builds it in memory).
PASSTHROUGH_BYTES = 1024 * 1024


class DatasetSink(Protocol):
    """Where a data set goes as its fragments arrive (dicom_node.storage.spool.Spool)."""

    def write(self, fragment: bytes | memoryview) -> None: ...

    def discard(self) -> None: ...


class StoreHandler(Protocol):
    def open(self, *, transfer_syntax: str, sop_class_uid: str, sop_instance_uid: str) -> DatasetSink:
        """A sink for the data set of a C-STORE-RQ that has just begun."""
        ...

    def store(
        self,
        *,
        context_id: int,
        transfer_syntax: str,
        sop_class_uid: str,
        sop_instance_uid: str,
        dataset: DatasetSink,
        priority: int = 0,
    ) -> tuple[int, str]:
        """Store the whole data set; return (status, error comment or ""). ``priority``: the
        request's Priority (0000,0700): 0 medium, 1 high, 2 low."""
        ...


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
    dataset: DatasetSink
    priority: int = 0  # the request's Priority (0000,0700)


class FastLane:
    """Per-association state of the fast lane (lives in the DUL thread).

    Every C-STORE-RQ on an accepted context is taken, its command set in one fragment or several;
    its data set goes to the handler's sink as it arrives, so a data set of any size costs the
    lane one PDU of memory. What the lane does not take goes to pynetdicom, whose messages are
    built in memory: there a data set may be at most :data:`PASSTHROUGH_BYTES` long (the node
    answers nothing else that carries one), and a longer one is a protocol error (ValueError).
    """

    def __init__(
        self, handler: StoreHandler, accepted: Callable[[int], str | None], send: Callable[[bytes], None]
    ) -> None:
        self.handler = handler
        self.accepted = accepted  # context id -> transfer syntax, None if not accepted
        self.send = send
        self.message: _Message | None = None
        self._command: bytearray | None = None  # command fragments so far
        self._command_context = 0
        self._passed = 0  # data set bytes given to pynetdicom since its last command

    def take(self, pdu: bytes) -> bytes | None:
        """Handle a P-DATA-TF PDU (with its 6-byte header).

        Returns None when the fast lane consumed the whole PDU, else a P-DATA-TF PDU of what is
        left (the PDU itself when the lane took nothing of it) for pynetdicom to process.
        """
        items = _pdvs(pdu)
        rest: list[tuple[int, int, bytes | memoryview]] = []
        took = False
        for context_id, control, data in items:
            if self.message is not None:
                if control & 0x01 or context_id != self.message.context_id:
                    raise ValueError("a new command arrived before the data set of a C-STORE ended")
                self.message.dataset.write(data)
                took = True
                if control & 0x02:
                    self._finish()
                continue
            if control & 0x01:
                took = self._command_fragment(context_id, control, data, rest) or took
                continue
            if self._command is not None:
                raise ValueError("a data set fragment arrived before its command set ended")
            self._passed += len(data)
            if self._passed > PASSTHROUGH_BYTES:
                raise ValueError(
                    f"a data set of more than {PASSTHROUGH_BYTES} bytes on a message other than a C-STORE-RQ"
                )
            rest.append((context_id, control, data))
        if not rest:
            return None
        return pdu if not took and len(rest) == len(items) else _repack(rest)

    def _command_fragment(
        self, context_id: int, control: int, data: memoryview, rest: list[tuple[int, int, bytes | memoryview]]
    ) -> bool:
        """A command fragment: gathered until the last one. Returns whether the lane took it
        (a whole command set in one fragment that is not a C-STORE-RQ goes on as it came)."""
        if self._command is None:
            if control & 0x02:  # the whole command set in one fragment, as most senders do
                if self._is_store_command(context_id, data):
                    self._start(context_id, data)
                    return True
                self._passed = 0
                rest.append((context_id, control, data))
                return False
            self._command = bytearray()
            self._command_context = context_id
        elif context_id != self._command_context:
            raise ValueError("command fragments on two presentation contexts")
        self._command += data
        if len(self._command) > MAX_COMMAND_BYTES:
            raise ValueError(f"a command set of more than {MAX_COMMAND_BYTES} bytes")
        if control & 0x02:
            command, self._command = bytes(self._command), None
            if self._is_store_command(context_id, command):
                self._start(context_id, command)
            else:
                self._passed = 0
                rest.append((context_id, 0x03, command))
        return True

    def _is_store_command(self, context_id: int, data: bytes | memoryview) -> bool:
        """A C-STORE-RQ command set, with a data set to follow, on an accepted context."""
        if self.accepted(context_id) is None:
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

    def _start(self, context_id: int, data: bytes | memoryview) -> None:
        command = parse_command(data)
        transfer_syntax = str(self.accepted(context_id))
        sop_class_uid = _ui(command[_TAG_AFFECTED_SOP_CLASS])
        sop_instance_uid = _ui(command[_TAG_AFFECTED_SOP_INSTANCE])
        self.message = _Message(
            context_id=context_id,
            transfer_syntax=transfer_syntax,
            sop_class_uid=sop_class_uid,
            sop_instance_uid=sop_instance_uid,
            message_id=_us(command[_TAG_MESSAGE_ID]),
            dataset=self.handler.open(
                transfer_syntax=transfer_syntax, sop_class_uid=sop_class_uid, sop_instance_uid=sop_instance_uid
            ),
            priority=_us(command[_TAG_PRIORITY]) if _TAG_PRIORITY in command else 0,
        )

    def _finish(self) -> None:
        message, self.message = self.message, None
        assert message is not None
        try:
            status, comment = self.handler.store(
                context_id=message.context_id,
                transfer_syntax=message.transfer_syntax,
                sop_class_uid=message.sop_class_uid,
                sop_instance_uid=message.sop_instance_uid,
                dataset=message.dataset,
                priority=message.priority,
            )
        except Exception:
            # As pynetdicom does for a handler that raises: log it, answer a failure.
            log.exception("C-STORE handler failed for %s", message.sop_instance_uid)
            status, comment = int(Status.UNABLE_TO_PROCESS), "internal error, see the node's log"
        finally:
            message.dataset.discard()
        response = encode_store_response(
            sop_class_uid=message.sop_class_uid,
            sop_instance_uid=message.sop_instance_uid,
            message_id=message.message_id,
            status=status,
            error_comment=comment,
        )
        self.send(p_data_tf(message.context_id, 0x03, response))

    def close(self) -> None:
        """The association ended: a data set still arriving is dropped (its temporary file removed)."""
        message, self.message = self.message, None
        if message is not None:
            message.dataset.discard()


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


def _repack(items: list[tuple[int, int, bytes | memoryview]]) -> bytes:
    body = b"".join(struct.pack(">IBB", len(data) + 2, cid, ctl) + bytes(data) for cid, ctl, data in items)
    return struct.pack(">BBI", 0x04, 0x00, len(body)) + body
