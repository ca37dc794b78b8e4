"""A native Pixel Data shorter than Rows x Columns x SamplesPerPixel x BitsAllocated/8 x Frames is
refused before success: such an instance can not be decoded, and one of them made a whole
series' analysis fail. Both readers (the fast one and pydicom's, for big endian) check it."""

from __future__ import annotations

import pytest
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.uid import (
    CTImageStorage,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    generate_uid,
)

from dicom_node.dicom_answers import Status
from dicom_node.listener.dataset import RejectedInstance, parse_header

TS_FLAGS: dict[str, tuple[bool, bool]] = {
    ExplicitVRLittleEndian: (True, False),
    ImplicitVRLittleEndian: (True, True),
    ExplicitVRBigEndian: (False, False),
}


def ct(
    pixel_bytes: int, *, rows: int = 16, columns: int = 16, bits: int = 16, frames: int | None = None, samples: int = 1
) -> Dataset:
    ds = Dataset()
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.Modality = "CT"
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = samples
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = bits, bits, bits - 1
    ds.PixelRepresentation = 0
    ds.PhotometricInterpretation = "MONOCHROME2" if samples == 1 else "RGB"
    if frames is not None:
        ds.NumberOfFrames = frames
    ds.PixelData = b"\x01" * pixel_bytes
    return ds


def encode(ds: Dataset, ts: str) -> bytes:
    little, implicit = TS_FLAGS[ts]
    fp = DicomBytesIO()
    fp.is_little_endian, fp.is_implicit_VR = little, implicit
    write_dataset(fp, ds)
    return fp.getvalue()


def check(ds: Dataset, ts: str = ExplicitVRLittleEndian) -> None:
    parse_header(encode(ds, ts), ts, command_sop_class=CTImageStorage, command_sop_instance=str(ds.SOPInstanceUID))


@pytest.mark.parametrize("ts", list(TS_FLAGS))
def test_whole_pixel_data_is_accepted(ts: str) -> None:
    check(ct(16 * 16 * 2), ts)
    check(ct(4 * 16 * 16 * 2, frames=4), ts)
    check(ct(16 * 16 * 3, bits=8, samples=3), ts)
    check(ct(16 * 16 // 8, bits=1), ts)


@pytest.mark.parametrize("ts", list(TS_FLAGS))
def test_half_the_pixel_data_is_refused_with_the_reason(ts: str) -> None:
    with pytest.raises(RejectedInstance) as refused:
        check(ct(16 * 16), ts)
    assert refused.value.status == Status.CANNOT_UNDERSTAND
    assert "Pixel Data has 256 bytes" in refused.value.reason and "need 512" in refused.value.reason


def test_frames_count() -> None:
    with pytest.raises(RejectedInstance, match="x 3\\) need 1536"):
        check(ct(2 * 16 * 16 * 2, frames=3))


def test_pixel_data_without_rows_is_refused() -> None:
    ds = ct(512)
    del ds.Rows
    with pytest.raises(RejectedInstance, match="without Rows"):
        check(ds)


def test_encapsulated_pixel_data_is_not_measured() -> None:
    # A compressed transfer syntax: the length says nothing about the image (decoders check).
    ds = ct(100)
    raw = encode(ds, ExplicitVRLittleEndian)
    with pytest.raises(RejectedInstance) as refused:
        parse_header(
            raw, ExplicitVRLittleEndian, command_sop_class=CTImageStorage, command_sop_instance=str(ds.SOPInstanceUID)
        )
    assert "Pixel Data has 100 bytes" in refused.value.reason
    parse_header(raw, JPEG2000Lossless, command_sop_class=CTImageStorage, command_sop_instance=str(ds.SOPInstanceUID))
