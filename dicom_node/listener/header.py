"""A fast reader of the few attributes the listener keeps, straight from the received bytes.

pydicom builds an object for every element, which costs about a millisecond for a CT image
header: a third of what storing the image costs. This walks the element headers of a data set
(explicit or implicit VR, either byte order), checks that every element and item lies wholly
inside the data (a truncated data set fails here), and decodes only the attributes in
:data:`WANTED`. Anything it does not handle (a VR that is not two capital letters, item tags out
of place) raises :class:`Unsupported` and the caller falls back to pydicom for a small data set.
tests/listener/test_header.py checks it against pydicom on every file of the pydicom-data package.

The data set is read front to back through a :class:`Reader`: bytes in memory, a spooled file
(:class:`FileReader`, values it does not keep are skipped without reading them) or a deflated data
set inflated a chunk at a time (:class:`InflateReader`), so that reading the header of a data set
of any size costs a few hundred kilobytes of memory.
"""

from __future__ import annotations

import os
import struct
import zlib

from dicom_node.errors import NodeError

WANTED: dict[int, str] = {
    0x00080005: "SpecificCharacterSet",
    0x00080008: "ImageType",
    0x00080016: "SOPClassUID",
    0x00080018: "SOPInstanceUID",
    0x00080060: "Modality",
    0x0008103E: "SeriesDescription",
    0x00100020: "PatientID",
    0x00180015: "BodyPartExamined",
    0x0020000D: "StudyInstanceUID",
    0x0020000E: "SeriesInstanceUID",
    0x00200011: "SeriesNumber",
    0x00200013: "InstanceNumber",
    0x00280008: "NumberOfFrames",
    # US values: checked against the length of Pixel Data (dicom_node.listener.scp).
    0x00280002: "SamplesPerPixel",
    0x00280010: "Rows",
    0x00280011: "Columns",
    0x00280100: "BitsAllocated",
}
_US_TAGS = frozenset({0x00280002, 0x00280010, 0x00280011, 0x00280100})
PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})
PIXEL_DATA = 0x7FE00010
# The key under which scan() puts the length of a native (defined-length) Pixel Data, 4 bytes LE.
PIXEL_DATA_LENGTH = "PixelData.length"
# The longest value of a WANTED attribute (all of them short text or binary VRs; an explicit VR
# length of these is 2 bytes): an implicit VR data set claiming more is refused, not read.
MAX_WANTED_BYTES = 0xFFFF
CHUNK = 256 * 1024  # bytes read or inflated at a time from a file or a deflated stream
# Deflated bytes handed to zlib at a time: what it has not used yet is copied at every call.
DEFLATED_CHUNK = 16 * 1024

_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
_UNDEFINED = 0xFFFFFFFF
_ITEM = 0xFFFEE000
_ITEM_END = 0xFFFEE00D
_SEQUENCE_END = 0xFFFEE0DD


class Unsupported(NodeError):
    """Not something this reader handles; use pydicom."""


class Malformed(NodeError):
    """Not a data set that can be stored: what it says contradicts itself."""


class Truncated(Malformed):
    """The data ends inside an element or item."""


class TooLarge(NodeError):
    """A deflated data set that inflates to more than the limit it was read with."""


# --- readers -------------------------------------------------------------------------------------


class Reader:
    """The bytes of a data set, front to back. ``take(n)``: the next ``n`` bytes (fewer at the
    end); ``skip(n)``: pass over ``n`` bytes, returning how many there were; ``position``: bytes
    passed so far; ``peek(n)``: the next ``n`` bytes without passing them."""

    position: int = 0

    def take(self, n: int) -> bytes | memoryview:
        raise NotImplementedError

    def peek(self, n: int) -> bytes | memoryview:
        """The next ``n`` bytes (fewer at the end), without passing them."""
        raise NotImplementedError

    def skip(self, n: int) -> int:
        raise NotImplementedError

    def at_end(self) -> bool:
        raise NotImplementedError


class MemoryReader(Reader):
    def __init__(self, data: bytes | bytearray | memoryview) -> None:
        self.view = memoryview(data)
        self.position = 0
        self.end = len(self.view)

    def take(self, n: int) -> memoryview:
        out = self.view[self.position : self.position + n]
        self.position += len(out)
        return out

    def peek(self, n: int) -> memoryview:
        return self.view[self.position : self.position + n]

    def skip(self, n: int) -> int:
        k = min(n, self.end - self.position)
        self.position += k
        return k

    def at_end(self) -> bool:
        return self.position >= self.end


class _ChunkedReader(Reader):
    """A reader over chunks from :meth:`_next_chunk` (b"" at the end), a buffer of at most one
    chunk plus the value being taken."""

    def __init__(self) -> None:
        self.position = 0
        self._buffer = b""
        self._offset = 0
        self._eof = False

    def _next_chunk(self) -> bytes:
        raise NotImplementedError

    def _skip_raw(self, n: int) -> int | None:
        """Skip ``n`` bytes past the buffer without reading them, if the source can; None if not."""
        return None

    def _fill(self, n: int) -> None:
        """Make ``n`` bytes available in the buffer (fewer at the end)."""
        if len(self._buffer) - self._offset >= n or self._eof:
            return
        parts = [self._buffer[self._offset :]]
        have = len(parts[0])
        while have < n:
            chunk = self._next_chunk()
            if not chunk:
                self._eof = True
                break
            parts.append(chunk)
            have += len(chunk)
        self._buffer = b"".join(parts)
        self._offset = 0

    def take(self, n: int) -> bytes:
        self._fill(n)
        out = self._buffer[self._offset : self._offset + n]
        self._offset += len(out)
        self.position += len(out)
        return out

    def peek(self, n: int) -> bytes:
        self._fill(n)
        return self._buffer[self._offset : self._offset + n]

    def skip(self, n: int) -> int:
        buffered = min(n, len(self._buffer) - self._offset)
        self._offset += buffered
        skipped = buffered
        rest = n - buffered
        if rest:
            raw = self._skip_raw(rest)
            if raw is not None:
                skipped += raw
            else:
                while rest and not self._eof:
                    self._buffer, self._offset = b"", 0
                    self._fill(min(rest, CHUNK))
                    k = min(rest, len(self._buffer))
                    self._offset = k
                    skipped += k
                    rest -= k
        self.position += skipped
        return skipped

    def at_end(self) -> bool:
        self._fill(1)
        return len(self._buffer) - self._offset == 0


class FileReader(_ChunkedReader):
    """``size`` bytes of an open file from ``offset`` (os.pread: the file position is not used)."""

    def __init__(self, fd: int, offset: int, size: int) -> None:
        super().__init__()
        self.fd = fd
        self._raw = offset
        self._end = offset + size

    def _next_chunk(self) -> bytes:
        n = min(CHUNK, self._end - self._raw)
        if n <= 0:
            return b""
        chunk = os.pread(self.fd, n, self._raw)
        self._raw += len(chunk)
        return chunk

    def _skip_raw(self, n: int) -> int:
        k = max(0, min(n, self._end - self._raw))
        self._raw += k
        if k < n:
            self._eof = True
        return k


class InflateReader(_ChunkedReader):
    """A Deflated Explicit VR Little Endian data set (PS3.5 A.5: raw deflate) inflated a chunk at
    a time from the deflated bytes in ``source``. More than ``limit`` inflated bytes raises
    :class:`TooLarge`; deflated data that does not inflate, or ends before its last block, raises
    :class:`Malformed`."""

    def __init__(self, source: Reader, limit: int) -> None:
        super().__init__()
        self.source = source
        self.limit = limit
        self.inflated = 0
        self._zlib = zlib.decompressobj(-zlib.MAX_WBITS)
        self._pending = b""

    def _next_chunk(self) -> bytes:
        while True:
            if self._zlib.eof:
                return b""
            if not self._pending:
                self._pending = bytes(self.source.take(DEFLATED_CHUNK))
                if not self._pending:
                    raise Malformed("deflated data set does not inflate: it ends before its last block")
            try:
                out = self._zlib.decompress(self._pending, CHUNK)
            except zlib.error as exc:
                raise Malformed(f"deflated data set does not inflate: {exc}") from None
            self._pending = self._zlib.unconsumed_tail
            self.inflated += len(out)
            if self.inflated > self.limit:
                raise TooLarge(f"the deflated data set inflates to more than {self.limit} bytes")
            if out:
                return out


# --- the scan ------------------------------------------------------------------------------------


def scan(
    data: bytes | bytearray | memoryview | Reader, *, implicit: bool, little_endian: bool = True
) -> tuple[dict[str, bytes], bool]:
    """Walk the top-level data set; return the raw values of :data:`WANTED` (by keyword; binary
    values little endian, whatever the data set's order) and whether pixel data is present.
    Raises Truncated, Malformed or Unsupported (and TooLarge from an InflateReader)."""
    reader = data if isinstance(data, Reader) else MemoryReader(data)
    order = "<" if little_endian else ">"
    values: dict[str, bytes] = {}
    has_pixels = False
    while not reader.at_end():
        tag, length, undefined_kind = _element(reader, implicit, order)
        if tag in PIXEL_TAGS:
            has_pixels = True
        if length == _UNDEFINED:
            _skip_undefined(reader, implicit, order, encapsulated=undefined_kind == "encapsulated")
            continue
        if tag == PIXEL_DATA:
            values[PIXEL_DATA_LENGTH] = struct.pack("<I", length)
        name = WANTED.get(tag)
        if name is not None:
            if length > MAX_WANTED_BYTES:
                raise Malformed(f"data set is malformed: {name} of {length} bytes, more than it may hold")
            value = reader.take(length)
            got = len(value)
            if got == length:
                values[name] = bytes(value) if little_endian or tag not in _US_TAGS else _swap16(bytes(value))
        else:
            got = reader.skip(length)
        if got < length:
            raise Truncated(f"element ({tag >> 16:04X},{tag & 0xFFFF:04X}) needs {length} bytes, {got} remain")
    return values, has_pixels


def _swap16(value: bytes) -> bytes:
    swapped = bytearray(value)
    swapped[0::2], swapped[1::2] = value[1::2], value[0::2]
    return bytes(swapped)


def _element(reader: Reader, implicit: bool, order: str) -> tuple[int, int, str]:
    """(tag, length, kind of undefined length) of the next element; the reader is left at its value."""
    at = reader.position
    head = reader.take(8)
    if len(head) < 8:
        raise Truncated(f"element header at byte {at} cut short")
    group, element = struct.unpack_from(order + "HH", head)
    tag = (group << 16) | element
    if group == 0xFFFE:
        raise Unsupported(f"item tag ({group:04X},{element:04X}) at the top level")
    if implicit:
        (length,) = struct.unpack_from(order + "I", head, 4)
        kind = "encapsulated" if tag in PIXEL_TAGS else "sequence"
        return tag, length, kind
    vr = bytes(head[4:6])
    if not (65 <= vr[0] <= 90 and 65 <= vr[1] <= 90):
        raise Unsupported(f"VR {vr!r} at byte {at}")
    if vr in _LONG_VRS:
        more = reader.take(4)
        if len(more) < 4:
            raise Truncated(f"element header at byte {at} cut short")
        (length,) = struct.unpack_from(order + "I", more)
        kind = "sequence" if vr in (b"SQ", b"UN") and tag not in PIXEL_TAGS else "encapsulated"
        return tag, length, kind
    (length,) = struct.unpack_from(order + "H", head, 6)
    return tag, length, "sequence"


def _skip_undefined(reader: Reader, implicit: bool, order: str, *, encapsulated: bool) -> None:
    """Skip the items of an undefined-length value, up to and with its delimiter."""
    while True:
        head = reader.take(8)
        if len(head) < 8:
            raise Truncated("undefined-length value without its sequence delimiter")
        group, element, length = struct.unpack_from(order + "HHI", head)
        tag = (group << 16) | element
        if tag == _SEQUENCE_END:
            return
        if tag != _ITEM:
            raise Unsupported(f"({group:04X},{element:04X}) inside an undefined-length value")
        if length != _UNDEFINED:
            if reader.skip(length) < length:
                raise Truncated("item cut short")
            continue
        if encapsulated:
            raise Unsupported("undefined-length fragment")
        _skip_item(reader, implicit, order)


def _skip_item(reader: Reader, implicit: bool, order: str) -> None:
    """Skip the elements of an undefined-length sequence item, up to and with its item delimiter."""
    while True:
        head = reader.peek(8)
        if len(head) < 8:
            raise Truncated("sequence item without its delimiter")
        group, element = struct.unpack_from(order + "HH", head)
        if (group << 16) | element == _ITEM_END:
            reader.skip(8)
            return
        _tag, length, kind = _element(reader, implicit, order)
        if length == _UNDEFINED:
            _skip_undefined(reader, implicit, order, encapsulated=kind == "encapsulated")
        elif reader.skip(length) < length:
            raise Truncated("element in a sequence item cut short")


def text(raw: bytes | None, encodings: list[str] | None = None) -> str:
    """A text value without padding, multiple values joined with a backslash."""
    if not raw:
        return ""
    try:
        value = raw.decode(encodings[0] if encodings else "ascii")
    except (UnicodeDecodeError, LookupError):
        value = raw.decode("latin-1")
    return value.rstrip("\x00 ").strip()


def unsigned_short(raw: bytes | None) -> int | None:
    """The first value of a US element (binary, little endian)."""
    if raw is None or len(raw) < 2:
        return None
    return int(struct.unpack_from("<H", raw)[0])


def unsigned_long(raw: bytes | None) -> int | None:
    if raw is None or len(raw) < 4:
        return None
    return int(struct.unpack_from("<I", raw)[0])


def integer(raw: bytes | None) -> int | None:
    value = text(raw)
    try:
        return int(value.split("\\")[0]) if value else None
    except ValueError:
        return None
