"""The fast header reader against pydicom, on every Part 10 file of the pydicom-data package and
pydicom's own test files.

Covers: the same header (UIDs, frames, modality, text values) as pydicom's reading for every file
the fast reader handles, in either byte order; truncation anywhere inside the data found; other
encodings handed to pydicom; the same values read from a file and from a deflated stream. Does not
cover the network path (tests/integration).
"""

from __future__ import annotations

import os
import struct
import zlib
from pathlib import Path

import pydicom
import pytest

from dicom_node.listener import header as fast_header
from dicom_node.listener.dataset import RejectedInstance, _read_header
from dicom_node.storage.instance import header_of
from tests.pydicom_files import PYDICOM_DATA, pydicom_file

PYDICOM_TEST_FILES = [
    pydicom_file(n)
    for n in (
        "CT_small.dcm",
        "MR_small.dcm",
        "JPEG2000.dcm",
        "SC_rgb_rle.dcm",
        "emri_small.dcm",
        "rtplan.dcm",
        "693_UNCI.dcm",
        "JPGLosslessP14SV1_1s_1f_8b.dcm",
    )
]


def _part10_files() -> list[Path]:
    out = []
    for f in [*sorted(PYDICOM_DATA.glob("*.dcm")), *map(Path, PYDICOM_TEST_FILES)]:
        try:
            pydicom.filereader.read_file_meta_info(f)
        except pydicom.errors.InvalidDicomError:
            continue
        out.append(f)
    return out


def _data(path: Path) -> tuple[bytes, pydicom.uid.UID]:
    meta = pydicom.filereader.read_file_meta_info(path)
    return path.read_bytes()[132 + 12 + meta.FileMetaInformationGroupLength :], meta.TransferSyntaxUID


@pytest.mark.parametrize("path", _part10_files(), ids=lambda p: p.name)
def test_fast_reader_agrees_with_pydicom(path: Path) -> None:
    data, ts = _data(path)
    try:
        expected = header_of(pydicom.dcmread(path, stop_before_pixels=True, force=True))
    except (RejectedInstance, AttributeError, ValueError, KeyError) as exc:
        pytest.fail(f"pydicom cannot read the reference header: {exc}")
    if ts.is_deflated:
        data = zlib.decompress(data, -zlib.MAX_WBITS)
    try:
        values, _ = fast_header.scan(data, implicit=ts.is_implicit_VR, little_endian=ts.is_little_endian)
    except fast_header.Unsupported:
        return  # handed to pydicom, which _read_header then uses
    except fast_header.Truncated:
        assert "too_short" in path.name
        return
    got, _ = _read_header(data, ts)
    assert got == expected


@pytest.mark.parametrize("cut", [1, 7, 100, 3000, 20000])
def test_truncation_anywhere_is_found(cut: int) -> None:
    data, ts = _data(Path(pydicom_file("CT_small.dcm")))
    with pytest.raises(fast_header.Truncated):
        fast_header.scan(data[:-cut], implicit=ts.is_implicit_VR)


def test_encapsulated_truncation_is_found() -> None:
    data, ts = _data(Path(pydicom_file("JPEG2000.dcm")))
    fast_header.scan(data, implicit=False)
    with pytest.raises(fast_header.Truncated):
        fast_header.scan(data[:-10], implicit=False)


def test_sequences_of_undefined_length_are_walked() -> None:
    data, ts = _data(Path(pydicom_file("rtplan.dcm")))
    values, has_pixels = fast_header.scan(data, implicit=ts.is_implicit_VR)
    assert values["SOPInstanceUID"] and not has_pixels


@pytest.mark.parametrize("path", _part10_files(), ids=lambda p: p.name)
def test_a_file_and_an_inflating_reader_read_what_memory_reads(path: Path, tmp_path: Path) -> None:
    data, ts = _data(path)
    if ts.is_deflated:
        data = zlib.decompress(data, -zlib.MAX_WBITS)
    order = {"implicit": ts.is_implicit_VR, "little_endian": ts.is_little_endian}
    try:
        expected = fast_header.scan(data, **order)
    except (fast_header.Unsupported, fast_header.Malformed) as exc:
        expected_error: type[Exception] = type(exc)
        expected = None
    spooled = tmp_path / "spooled"
    spooled.write_bytes(b"x" * 132 + data)
    compressor = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
    deflated = compressor.compress(data) + compressor.flush()
    fd = os.open(spooled, os.O_RDONLY)
    try:
        for reader in (
            fast_header.FileReader(fd, 132, len(data)),
            fast_header.InflateReader(fast_header.MemoryReader(deflated), len(data)),
        ):
            if expected is None:
                with pytest.raises(expected_error):
                    fast_header.scan(reader, **order)
            else:
                assert fast_header.scan(reader, **order) == expected
    finally:
        os.close(fd)


@pytest.mark.parametrize("cut", [1, 7, 100, 3000, 20000])
def test_truncation_is_found_in_a_file(cut: int, tmp_path: Path) -> None:
    data, ts = _data(Path(pydicom_file("CT_small.dcm")))
    spooled = tmp_path / "spooled"
    spooled.write_bytes(data[:-cut])
    fd = os.open(spooled, os.O_RDONLY)
    try:
        with pytest.raises(fast_header.Truncated):
            fast_header.scan(fast_header.FileReader(fd, 0, len(data) - cut), implicit=ts.is_implicit_VR)
    finally:
        os.close(fd)


def test_an_implicit_vr_attribute_claiming_gigabytes_is_refused_unread() -> None:
    # (0020,000D) StudyInstanceUID, implicit VR, length 0xFFFFFFF0: nothing that long is allocated.
    data = struct.pack("<HHI", 0x0020, 0x000D, 0xFFFFFFF0) + b"1.2"
    with pytest.raises(fast_header.Malformed, match="more than it may hold"):
        fast_header.scan(data, implicit=True)
