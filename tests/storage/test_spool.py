"""Unit tests of the spool a received data set goes to as it arrives, and of reading a header from
it whatever its size.

Covers: a small data set stays in memory and is stored as before; a large one goes to a file of
``.incoming/`` that starts with the Part 10 header and is renamed into place (no copy); beyond
``max_bytes`` or below the free-disk watermark nothing more is kept, the file is removed and the
refusal says why; the header read from a spooled file and from a deflated data set inflated a
chunk at a time is the one read from memory; a deflated data set that inflates beyond the limit is
refused 0xA700 without the inflated bytes ever being in memory. The network path is in
tests/reliability/test_hostile.py.
"""

from __future__ import annotations

import tracemalloc
import zlib
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import CTImageStorage, DeflatedExplicitVRLittleEndian, ExplicitVRLittleEndian, generate_uid

from dicom_node.dicom_answers import Status
from dicom_node.listener.dataset import RejectedInstance, parse_header
from dicom_node.storage.files import INCOMING, Storage
from dicom_node.storage.spool import Spool


def _ct(pixel_bytes: int) -> tuple[Dataset, bytes]:
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "CT"
    ds.Rows, ds.Columns, ds.SamplesPerPixel = 512, 512, 1
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.NumberOfFrames = max(1, pixel_bytes // (512 * 512 * 2))
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.PixelData = b"\x01" * pixel_bytes
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = True, False
    write_dataset(fp, ds)
    return ds, fp.getvalue()


def _spool(storage: Storage, ds: Dataset, ts: str = ExplicitVRLittleEndian, max_bytes: int = 1 << 40) -> Spool:
    return storage.spool(
        sop_class_uid=ds.SOPClassUID,
        sop_instance_uid=ds.SOPInstanceUID,
        transfer_syntax_uid=ts,
        source_ae_title="SCANNER",
        max_bytes=max_bytes,
    )


def _feed(spool: Spool, data: bytes, fragment: int = 16384) -> None:
    for i in range(0, len(data), fragment):
        spool.write(memoryview(data)[i : i + fragment])


def test_an_image_stays_in_memory_and_is_stored_as_before(tmp_path: Path) -> None:
    storage = Storage(tmp_path)
    ds, raw = _ct(512 * 512 * 2)
    spool = _spool(storage, ds)
    _feed(spool, raw)
    assert spool.in_memory and list(storage.incoming.iterdir()) == []
    relative = storage.relative_path(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    stored = storage.write(
        relative,
        spool,
        sop_class_uid=ds.SOPClassUID,
        sop_instance_uid=ds.SOPInstanceUID,
        transfer_syntax_uid=ExplicitVRLittleEndian,
    )
    assert pydicom.dcmread(stored.path).SOPInstanceUID == ds.SOPInstanceUID


def test_a_large_data_set_goes_to_a_file_that_is_renamed_into_place(tmp_path: Path) -> None:
    storage = Storage(tmp_path)
    ds, raw = _ct(8 * 512 * 512 * 2)
    spool = _spool(storage, ds)
    _feed(spool, raw)
    assert not spool.in_memory and spool.path is not None and spool.path.parent == storage.incoming
    temporary = spool.path
    header = parse_header(
        spool, ExplicitVRLittleEndian, command_sop_class=CTImageStorage, command_sop_instance=ds.SOPInstanceUID
    )
    assert header.frames == 8
    relative = storage.relative_path(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    stored = storage.write(
        relative,
        spool,
        sop_class_uid=ds.SOPClassUID,
        sop_instance_uid=ds.SOPInstanceUID,
        transfer_syntax_uid=ExplicitVRLittleEndian,
    )
    assert not temporary.exists() and list(storage.incoming.iterdir()) == []
    assert stored.size == stored.path.stat().st_size
    back = pydicom.dcmread(stored.path)
    assert back.SOPInstanceUID == ds.SOPInstanceUID and back.file_meta.SourceApplicationEntityTitle == "SCANNER"
    assert back.PixelData == ds.PixelData
    spool.discard()
    assert stored.path.exists()


def test_beyond_max_bytes_nothing_is_kept(tmp_path: Path) -> None:
    storage = Storage(tmp_path)
    ds, raw = _ct(8 * 512 * 512 * 2)
    spool = _spool(storage, ds, max_bytes=3 * 1024 * 1024)
    _feed(spool, raw)
    assert spool.refusal is not None and "listener.max_dataset_bytes" in spool.refusal
    assert spool.size == len(raw)  # counted, not kept
    assert list((tmp_path / INCOMING).iterdir()) == []


def test_below_the_free_disk_watermark_nothing_is_kept(tmp_path: Path) -> None:
    storage = Storage(tmp_path)
    ds, raw = _ct(4 * 512 * 512 * 2)
    spool = Spool(storage.incoming, b"", max_bytes=1 << 40, has_room=lambda n: False)
    _feed(spool, raw)
    assert spool.refusal is not None and "free disk space" in spool.refusal
    assert list(storage.incoming.iterdir()) == []


def test_discard_removes_the_file(tmp_path: Path) -> None:
    storage = Storage(tmp_path)
    ds, raw = _ct(4 * 512 * 512 * 2)
    spool = _spool(storage, ds)
    _feed(spool, raw[: 3 * 2**20])
    assert spool.path is not None and spool.path.exists()
    spool.discard()
    spool.discard()
    assert list(storage.incoming.iterdir()) == []


def _deflate(raw: bytes) -> bytes:
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(raw) + compressor.flush()


@pytest.mark.parametrize("on_file", [False, True])
def test_a_deflated_data_set_is_read_a_chunk_at_a_time(tmp_path: Path, on_file: bool) -> None:
    storage = Storage(tmp_path)
    ds, raw = _ct(64 * 512 * 512 * 2)  # 32 MiB inflated
    deflated = _deflate(raw)
    spool = _spool(storage, ds, DeflatedExplicitVRLittleEndian)
    spool.memory_bytes = 0 if on_file else len(deflated)
    _feed(spool, deflated)
    assert spool.in_memory is not on_file
    tracemalloc.start()
    try:
        header = parse_header(
            spool,
            DeflatedExplicitVRLittleEndian,
            command_sop_class=CTImageStorage,
            command_sop_instance=ds.SOPInstanceUID,
        )
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert header.frames == 64
    assert peak < 4 * 2**20, f"{peak / 2**20:.1f} MiB to read a header of {len(raw) / 2**20:.0f} MiB inflated"


def test_a_deflated_data_set_that_inflates_beyond_the_limit_is_refused(tmp_path: Path) -> None:
    ds, raw = _ct(64 * 512 * 512 * 2)
    with pytest.raises(RejectedInstance) as refused:
        parse_header(
            _deflate(raw),
            DeflatedExplicitVRLittleEndian,
            command_sop_class=CTImageStorage,
            command_sop_instance=ds.SOPInstanceUID,
            max_bytes=16 * 2**20,
        )
    assert refused.value.status == Status.OUT_OF_RESOURCES
    assert "inflates to more than" in refused.value.reason


def test_a_deflated_data_set_cut_short_is_refused(tmp_path: Path) -> None:
    ds, raw = _ct(512 * 512 * 2)
    with pytest.raises(RejectedInstance) as refused:
        parse_header(
            _deflate(raw)[:-100],
            DeflatedExplicitVRLittleEndian,
            command_sop_class=CTImageStorage,
            command_sop_instance=ds.SOPInstanceUID,
        )
    assert refused.value.status == Status.CANNOT_UNDERSTAND
