"""Unit tests of the storage layout and its durable writes.

Covers: the layout, refusal of UIDs that would leave the root, the Part 10 header we write (read
back by pydicom and by DCMTK's dcmdump), atomic writes that leave no temporary behind. Does not
cover fsync's effect on a real power cut (not testable here).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pydicom
import pytest
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset

from dicom_node.dicom_answers import Status
from dicom_node.listener.dataset import RejectedInstance, parse_header
from dicom_node.storage.files import INCOMING, SERIES_RECORD, Storage, part10_header
from tests.harness.peers import require_tool
from tests.pydicom_files import pydicom_file


def _raw_dataset(ds: pydicom.Dataset) -> bytes:
    buf = DicomBytesIO()
    buf.is_little_endian = True
    buf.is_implicit_VR = False
    write_dataset(buf, ds)
    return buf.getvalue()


def test_layout_is_study_series_instance(tmp_path: Path) -> None:
    storage = Storage(tmp_path)
    assert storage.relative_path("1.2", "1.2.3", "1.2.3.4") == "1.2/1.2.3/1.2.3.4.dcm"


@pytest.mark.parametrize("bad", ["../../x", "1.2/../..", "..", "/abs"])
def test_traversal_uids_are_refused_with_the_attribute_named(tmp_path: Path, bad: str) -> None:
    storage = Storage(tmp_path)
    with pytest.raises(ValueError, match="SOPInstanceUID"):
        storage.relative_path("1.2", "1.2.3", bad)
    with pytest.raises(ValueError, match="StudyInstanceUID"):
        storage.relative_path(bad, "1.2.3", "1.2.3.4")


@pytest.mark.services  # DCMTK's dcmdump reads the file back
def test_write_is_part10_and_the_dataset_is_byte_identical(tmp_path: Path) -> None:
    ds = pydicom.dcmread(pydicom_file("CT_small.dcm"))
    raw = _raw_dataset(ds)
    storage = Storage(tmp_path / "store")
    rel = storage.relative_path(ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    stored = storage.write(
        rel,
        raw,
        sop_class_uid=ds.SOPClassUID,
        sop_instance_uid=ds.SOPInstanceUID,
        transfer_syntax_uid=ds.file_meta.TransferSyntaxUID,
        source_ae_title="MODALITY",
        series_record={"local_ae": "COVIDNODE"},
    )
    data = stored.path.read_bytes()
    assert data.endswith(raw)
    back = pydicom.dcmread(stored.path)
    assert back.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    assert back.file_meta.SourceApplicationEntityTitle == "MODALITY"
    assert back.PatientName == ds.PatientName
    assert list(storage.incoming.iterdir()) == []
    assert storage.series_record(stored.path.parent) == {"local_ae": "COVIDNODE"}
    dump = subprocess.run([require_tool("dcmdump", "dcmtk"), "-M", str(stored.path)], capture_output=True, text=True)
    assert dump.returncode == 0, dump.stderr
    assert "MediaStorageSOPInstanceUID" in dump.stdout


def test_part10_header_pads_odd_values(tmp_path: Path) -> None:
    header = part10_header("1.2.840.10008.5.1.4.1.1.2", "1.2.3", "1.2.840.10008.1.2.1", "ODD")
    path = tmp_path / "h.dcm"
    path.write_bytes(header)
    meta = pydicom.filereader.read_file_meta_info(path)
    assert meta.MediaStorageSOPInstanceUID == "1.2.3"
    assert str(meta.SourceApplicationEntityTitle).strip() == "ODD"
    assert meta.FileMetaInformationGroupLength == len(header) - 128 - 4 - 12


def test_failed_write_leaves_nothing_half_written(tmp_path: Path) -> None:
    storage = Storage(tmp_path)

    class Exploding:
        def __len__(self) -> int:
            return 10

    with pytest.raises(TypeError):
        storage.write(
            "1.2/1.2.3/1.2.3.4.dcm",
            Exploding(),  # type: ignore[arg-type]  # not bytes, on purpose
            sop_class_uid="1.2",
            sop_instance_uid="1.2.3.4",
            transfer_syntax_uid="1.2.840.10008.1.2.1",
        )
    assert not (tmp_path / "1.2" / "1.2.3" / "1.2.3.4.dcm").exists()
    assert list((tmp_path / INCOMING).iterdir()) == []


def test_stale_temporaries_are_removed(tmp_path: Path) -> None:
    storage = Storage(tmp_path)
    (storage.incoming / "crashed.part").write_bytes(b"x")
    assert storage.remove_stale_incoming() == 1
    assert SERIES_RECORD == "series.json"


@pytest.mark.parametrize(
    ("name", "cut"), [("CT_small.dcm", 10), ("CT_small.dcm", 3000), ("JPEG2000.dcm", 10), ("SC_rgb_rle.dcm", 3000)]
)
def test_truncated_data_sets_are_refused(name: str, cut: int) -> None:
    path = pydicom_file(name)
    meta = pydicom.filereader.read_file_meta_info(path)
    data = Path(path).read_bytes()[132 + 12 + meta.FileMetaInformationGroupLength :]
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    header = parse_header(
        data, meta.TransferSyntaxUID, command_sop_class=ds.SOPClassUID, command_sop_instance=ds.SOPInstanceUID
    )
    assert header.sop_instance_uid == ds.SOPInstanceUID
    with pytest.raises(RejectedInstance) as exc:
        parse_header(
            data[:-cut],
            meta.TransferSyntaxUID,
            command_sop_class=ds.SOPClassUID,
            command_sop_instance=ds.SOPInstanceUID,
        )
    assert exc.value.status == Status.CANNOT_UNDERSTAND
