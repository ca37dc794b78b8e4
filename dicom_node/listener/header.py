"""A fast reader of the few attributes the listener keeps, straight from the received bytes.

pydicom builds an object for every element, which costs about a millisecond for a CT image
header: a third of what storing the image costs. This walks the element headers of a little
endian data set (explicit or implicit VR), checks that every element and item lies wholly inside
the data (a truncated data set fails here), and decodes only the attributes in :data:`WANTED`.
Anything it does not handle (big endian, malformed lengths) raises :class:`Unsupported` and the
caller falls back to pydicom. tests/listener/test_header.py checks it against pydicom on every
file of the pydicom-data package.
"""

from __future__ import annotations

import struct

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
PIXEL_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})
PIXEL_DATA = 0x7FE00010
# The key under which scan() puts the length of a native (defined-length) Pixel Data, 4 bytes LE.
PIXEL_DATA_LENGTH = "PixelData.length"

_LONG_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV"})
_UNDEFINED = 0xFFFFFFFF
_ITEM = 0xFFFEE000
_ITEM_END = 0xFFFEE00D
_SEQUENCE_END = 0xFFFEE0DD


class Unsupported(NodeError):
    """Not something this reader handles; use pydicom."""


class Truncated(NodeError):
    """The data ends inside an element or item."""


def scan(data: bytes | memoryview, *, implicit: bool) -> tuple[dict[str, bytes], bool]:
    """Walk the top-level data set; return the raw values of :data:`WANTED` (by keyword) and
    whether pixel data is present. Raises Truncated or Unsupported."""
    view = memoryview(data)
    values: dict[str, bytes] = {}
    has_pixels = False
    pos, end = 0, len(view)
    while pos < end:
        tag, length, value_at, undefined_kind = _element(view, pos, end, implicit)
        if tag in PIXEL_TAGS:
            has_pixels = True
        if length == _UNDEFINED:
            pos = _skip_undefined(view, value_at, end, implicit, encapsulated=undefined_kind == "encapsulated")
            continue
        stop = value_at + length
        if stop > end:
            raise Truncated(
                f"element ({tag >> 16:04X},{tag & 0xFFFF:04X}) needs {length} bytes, {end - value_at} remain"
            )
        if tag == PIXEL_DATA:
            values[PIXEL_DATA_LENGTH] = struct.pack("<I", length)
        name = WANTED.get(tag)
        if name is not None:
            values[name] = bytes(view[value_at:stop])
        pos = stop
    return values, has_pixels


def _element(view: memoryview, pos: int, end: int, implicit: bool) -> tuple[int, int, int, str]:
    """(tag, length, start of value, kind of undefined length) of the element at ``pos``."""
    if pos + 8 > end:
        raise Truncated(f"element header at byte {pos} cut short")
    group, element = struct.unpack_from("<HH", view, pos)
    tag = (group << 16) | element
    if group == 0xFFFE:
        raise Unsupported(f"item tag ({group:04X},{element:04X}) at the top level")
    if implicit:
        (length,) = struct.unpack_from("<I", view, pos + 4)
        kind = "encapsulated" if tag in PIXEL_TAGS else "sequence"
        return tag, length, pos + 8, kind
    vr = bytes(view[pos + 4 : pos + 6])
    if not (65 <= vr[0] <= 90 and 65 <= vr[1] <= 90):
        raise Unsupported(f"VR {vr!r} at byte {pos}")
    if vr in _LONG_VRS:
        if pos + 12 > end:
            raise Truncated(f"element header at byte {pos} cut short")
        (length,) = struct.unpack_from("<I", view, pos + 8)
        kind = "sequence" if vr in (b"SQ", b"UN") and tag not in PIXEL_TAGS else "encapsulated"
        return tag, length, pos + 12, kind
    (length,) = struct.unpack_from("<H", view, pos + 6)
    return tag, length, pos + 8, "sequence"


def _skip_undefined(view: memoryview, pos: int, end: int, implicit: bool, *, encapsulated: bool) -> int:
    """Skip the items of an undefined-length value; return the position after its delimiter."""
    while True:
        if pos + 8 > end:
            raise Truncated("undefined-length value without its sequence delimiter")
        group, element, length = struct.unpack_from("<HHI", view, pos)
        tag = (group << 16) | element
        pos += 8
        if tag == _SEQUENCE_END:
            return pos
        if tag != _ITEM:
            raise Unsupported(f"({group:04X},{element:04X}) inside an undefined-length value")
        if length != _UNDEFINED:
            if pos + length > end:
                raise Truncated("item cut short")
            pos += length
            continue
        if encapsulated:
            raise Unsupported("undefined-length fragment")
        pos = _skip_item(view, pos, end, implicit)


def _skip_item(view: memoryview, pos: int, end: int, implicit: bool) -> int:
    """Skip the elements of an undefined-length sequence item, up to its item delimiter."""
    while True:
        if pos + 8 > end:
            raise Truncated("sequence item without its delimiter")
        group, element, length = struct.unpack_from("<HHI", view, pos)
        if (group << 16) | element == _ITEM_END:
            return pos + 8
        _tag, length, value_at, kind = _element(view, pos, end, implicit)
        if length == _UNDEFINED:
            pos = _skip_undefined(view, value_at, end, implicit, encapsulated=kind == "encapsulated")
        else:
            if value_at + length > end:
                raise Truncated("element in a sequence item cut short")
            pos = value_at + length


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
