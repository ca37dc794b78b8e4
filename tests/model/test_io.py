"""model.inference.io: reading one CT series into a HU volume in patient order.

Covers: ordering by position along the normal (reversed instance numbers, shuffled file names,
multi-frame frames in reverse), signed/unsigned encodings and every lossless transfer syntax the
phantom writer produces, Enhanced CT (shared and per-frame Pixel Value Transformation), real files
of pydicom-data (CT_small, JPEG 2000 vs uncompressed pairs, JPEG lossless, an Enhanced CT with a
feet-first normal), skipping non-image files, several series, in-memory Datasets, the errors, and
the header-level chest-CT check. Not covered: pixel formats CT does not use (colour, float).
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Callable

import numpy as np
import pydicom
import pytest

from model.inference.frames import native_frame
from model.inference.io import SeriesReadError, check_chest_ct, load_series, read_series_headers
from model.phantoms.phantom import Phantom, make_phantom
from model.phantoms.writer import masks_path, read_phantom_truth, transfer_syntax_uid, write_phantom_series
from tests.pydicom_files import PYDICOM_DATA, pydicom_file


@pytest.fixture(scope="module")
def tiny() -> Phantom:
    return make_phantom("cap", seed=5, rows=64, columns=64, slices=10)


def _testfile(name: str) -> Path:
    path = pydicom_file(name)
    assert path is not None, f"pydicom-data file {name} missing"
    return Path(path)


def test_sorted_by_position_not_instance_number_or_name(covid_series: Path, small_phantoms: dict[str, Phantom]) -> None:
    p = small_phantoms["covid"]
    v = load_series(covid_series)
    assert v.shape == p.shape
    assert np.array_equal(v.hu, np.rint(p.hu))
    assert np.all(np.diff(v.image_positions[:, 2]) > 0)
    assert v.spacing == pytest.approx(p.spacing, rel=1e-5)
    assert v.superior_last is True and v.is_axial and v.uniform_spacing and not v.warnings
    # Instance numbers run the other way, file names are random.
    files = [f for f in v.source_files if f is not None]
    instances = [int(pydicom.dcmread(f, stop_before_pixels=True).InstanceNumber) for f in files]
    assert instances == list(range(p.shape[0], 0, -1))
    assert sorted(f.name for f in files) != [f.name for f in files]
    assert v.frame_numbers == [None] * p.shape[0]
    assert len(set(v.sop_instance_uids)) == p.shape[0]
    assert (v.modality, v.body_part, v.patient_position) == ("CT", "CHEST", "HFS")
    truth = read_phantom_truth(covid_series)
    assert truth.lung_mask.shape == v.shape and np.array_equal(truth.lesion_mask, p.lesion_mask)


def test_signed_and_unsigned_give_the_same_hu(tmp_path: Path, tiny: Phantom) -> None:
    a = load_series(write_phantom_series(tiny, tmp_path / "signed", signed=True))
    b = load_series(write_phantom_series(tiny, tmp_path / "unsigned", signed=False))
    ds_a = pydicom.dcmread(next((tmp_path / "signed").iterdir()))
    ds_b = pydicom.dcmread(next((tmp_path / "unsigned").iterdir()))
    assert (ds_a.PixelRepresentation, ds_b.PixelRepresentation) == (1, 0)
    assert (float(ds_a.RescaleIntercept), float(ds_b.RescaleIntercept)) == (0.0, -1024.0)
    assert np.array_equal(a.hu, b.hu)
    assert np.array_equal(a.hu, np.rint(tiny.hu))


@pytest.mark.parametrize("syntax", ["implicit", "deflate", "rle", "jpeg-ls", "jpeg2000"])
def test_transfer_syntaxes(tmp_path: Path, tiny: Phantom, syntax: str) -> None:
    folder = write_phantom_series(tiny, tmp_path / syntax, transfer_syntax=syntax)
    ds = pydicom.dcmread(next(folder.iterdir()), stop_before_pixels=True)
    assert ds.file_meta.TransferSyntaxUID == transfer_syntax_uid(syntax)
    assert np.array_equal(load_series(folder).hu, np.rint(tiny.hu))


@pytest.mark.parametrize(("syntax", "per_frame"), [("explicit", False), ("rle", True), ("jpeg-ls", False)])
def test_enhanced_ct_multiframe(tmp_path: Path, tiny: Phantom, syntax: str, per_frame: bool) -> None:
    folder = write_phantom_series(
        tiny,
        tmp_path / "mf",
        transfer_syntax=syntax,
        multiframe=True,
        reverse_instance_numbers=True,
        per_frame_rescale=per_frame,
        signed=False,
    )
    files = list(folder.iterdir())
    assert len(files) == 1
    ds = pydicom.dcmread(files[0], stop_before_pixels=True)
    assert ds.SOPClassUID == pydicom.uid.EnhancedCTImageStorage and int(ds.NumberOfFrames) == tiny.shape[0]
    assert ("PixelValueTransformationSequence" in ds.PerFrameFunctionalGroupsSequence[0]) is per_frame
    v = load_series(folder)
    assert np.array_equal(v.hu, np.rint(tiny.hu))
    # Frames were written head first: the sorted volume reads them last to first.
    assert v.frame_numbers == list(range(tiny.shape[0], 0, -1))
    assert v.source_files == [files[0]] * tiny.shape[0]
    assert v.sop_instance_uids == [str(ds.SOPInstanceUID)] * tiny.shape[0]


@pytest.mark.filterwarnings("ignore:Invalid value for VR UI")  # bad_sequence.dcm carries hash "UIDs"
def test_pydicom_data_ct_files() -> None:
    small = load_series([_testfile("CT_small.dcm")])
    assert small.shape == (1, 128, 128) and small.modality == "CT"
    assert small.spacing[1:] == pytest.approx((0.661468, 0.661468))
    assert -1024 <= small.hu.min() < 0 < small.hu.max() < 3072
    # The same image stored uncompressed and as JPEG 2000 (lossless and irreversible pairs).
    for compressed, plain in (("693_J2KR.dcm", "693_UNCR.dcm"), ("693_J2KI.dcm", "693_UNCI.dcm")):
        a = load_series([_testfile(compressed)]).hu
        b = load_series([_testfile(plain)]).hu
        assert np.array_equal(a, b), compressed
    jpeg_lossless = load_series([_testfile("bad_sequence.dcm")])  # JPEG Lossless, Process 14 SV1
    assert (
        pydicom.dcmread(_testfile("bad_sequence.dcm"), stop_before_pixels=True).file_meta.TransferSyntaxUID
        == pydicom.uid.JPEGLosslessSV1
    )
    assert (
        jpeg_lossless.shape == (1, 512, 512) and -1024 <= jpeg_lossless.hu.min() < -900 and jpeg_lossless.hu.max() > 500
    )


def test_pydicom_data_enhanced_ct_feet_first_normal() -> None:
    v = load_series([_testfile("eCT_Supplemental.dcm")])
    # Orientation -1\0\0\0\1\0: the normal points to the feet, so ascending order along it puts
    # z = -149 (frame 2) before z = -159 (frame 1).
    assert v.frame_numbers == [2, 1]
    assert list(v.image_positions[:, 2]) == [-149.0, -159.0]
    assert v.superior_last is False
    assert v.spacing[0] == pytest.approx(10.0)


def test_non_image_files_are_ignored(tmp_path: Path, tiny: Phantom) -> None:
    folder = write_phantom_series(tiny, tmp_path / "series")
    shutil.copy(_testfile("CT_small.dcm").parent / "dicomdirtests" / "DICOMDIR", folder / "DICOMDIR")
    shutil.copy(_testfile("test-SR.dcm"), folder / "report.dcm")
    (folder / "notes.txt").write_text("not DICOM")
    shutil.copy(masks_path(folder), folder / "masks.npz")
    (folder / "sub").mkdir()
    v = load_series(folder)
    assert np.array_equal(v.hu, np.rint(tiny.hu))


def test_several_series_are_refused_unless_one_is_chosen(tmp_path: Path, tiny: Phantom) -> None:
    write_phantom_series(tiny, tmp_path / "both" / "a")
    other = make_phantom("normal", seed=6, rows=64, columns=64, slices=6)
    write_phantom_series(other, tmp_path / "both" / "b")
    with pytest.raises(SeriesReadError, match="2 series found"):
        load_series(tmp_path / "both")
    uid = read_series_headers(tmp_path / "both" / "b").series_uid
    assert load_series(tmp_path / "both", series_uid=uid).shape == other.shape


def test_in_memory_datasets(tmp_path: Path, tiny: Phantom) -> None:
    folder = write_phantom_series(tiny, tmp_path / "s")
    datasets = [pydicom.dcmread(f) for f in folder.iterdir()]
    for ds in datasets:
        ds.filename = None
    v = load_series(datasets)
    assert np.array_equal(v.hu, np.rint(tiny.hu))
    assert v.source_files == [None] * tiny.shape[0]


def _write_variant(folder: Path, tiny: Phantom, tmp_path: Path, change: Callable[[int, pydicom.Dataset], None]) -> Path:
    src = write_phantom_series(tiny, tmp_path / "src", write_masks=False)
    folder.mkdir()
    for i, f in enumerate(sorted(src.iterdir())):
        ds = pydicom.dcmread(f)
        change(i, ds)
        ds.save_as(folder / f.name)
    return folder


def test_errors_have_reasons(tmp_path: Path, tiny: Phantom) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "readme.txt").write_text("x")
    with pytest.raises(SeriesReadError, match="no DICOM images"):
        load_series(tmp_path / "empty")
    with pytest.raises(SeriesReadError, match="does not exist"):
        load_series(tmp_path / "missing")

    def no_position(i: int, ds: pydicom.Dataset) -> None:
        if i == 3:
            del ds.ImagePositionPatient

    with pytest.raises(SeriesReadError, match="no Image Position"):
        load_series(_write_variant(tmp_path / "nopos", tiny, tmp_path, no_position))

    def duplicate(i: int, ds: pydicom.Dataset) -> None:
        if i == 2:
            ds.ImagePositionPatient = [0, 0, 0]
        if i == 4:
            ds.ImagePositionPatient = [0, 0, 0]

    shutil.rmtree(tmp_path / "src")
    with pytest.raises(SeriesReadError, match="share the position"):
        load_series(_write_variant(tmp_path / "dup", tiny, tmp_path, duplicate))

    def tilted(i: int, ds: pydicom.Dataset) -> None:
        if i == 1:
            ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]

    shutil.rmtree(tmp_path / "src")
    with pytest.raises(SeriesReadError, match="orientation"):
        load_series(_write_variant(tmp_path / "orient", tiny, tmp_path, tilted))


def test_chest_ct_check(covid_series: Path) -> None:
    assert check_chest_ct(load_series(covid_series)) == (True, "")
    mr = load_series([_testfile("MR_small.dcm")])
    ok, reason = check_chest_ct(mr)
    assert not ok and "modality MR" in reason


def _every_part10_file() -> list[Path]:
    folders = [pydicom_file("CT_small.dcm").parent, PYDICOM_DATA]
    files = []
    for folder in folders:
        for f in sorted(folder.rglob("*.dcm")):
            try:
                pydicom.filereader.read_file_meta_info(f)
            except (pydicom.errors.InvalidDicomError, OSError):
                continue
            files.append(f)
    return files


def test_the_tail_reader_agrees_with_pydicom_on_every_file_it_takes(tmp_path: Path, tiny: Phantom) -> None:
    """native_frame (single-frame native 16-bit files read from their tail) gives pydicom's
    pixel_array for every file of pydicom and pydicom-data it takes, and declines the rest."""
    taken = declined = 0
    for f in _every_part10_file():
        try:
            header = pydicom.dcmread(f, stop_before_pixels=True)
            expected = pydicom.dcmread(f).pixel_array
        except Exception:  # files pydicom itself cannot decode are not this reader's to judge
            continue
        got = native_frame(f, header)
        if got is None:
            declined += 1
            continue
        taken += 1
        assert got.dtype == expected.dtype and np.array_equal(got, expected), f.name
    assert taken >= 5 and declined >= 50, (taken, declined)
    # The phantom writer's files (what the tests and the demo send) take the fast path, signed or not.
    for signed in (True, False):
        folder = write_phantom_series(tiny, tmp_path / f"s{signed}", signed=signed)
        first = next(folder.iterdir())
        assert native_frame(first, pydicom.dcmread(first, stop_before_pixels=True)) is not None


def test_the_tail_reader_declines_a_file_whose_pixel_data_is_not_last(tmp_path: Path, tiny: Phantom) -> None:
    folder = write_phantom_series(tiny, tmp_path / "p")
    path = next(folder.iterdir())
    ds = pydicom.dcmread(path)
    ds.DataSetTrailingPadding = b"\0" * 8
    ds.save_as(path)
    header = pydicom.dcmread(path, stop_before_pixels=True)
    assert native_frame(path, header) is None
    assert np.array_equal(load_series(folder).hu, np.rint(tiny.hu))


def test_bits_above_bits_stored_are_cleared_as_pydicom_does(tmp_path: Path, tiny: Phantom) -> None:
    folder = write_phantom_series(tiny, tmp_path / "p", signed=False)
    path = next(folder.iterdir())
    ds = pydicom.dcmread(path)
    ds.BitsStored, ds.HighBit = 12, 11
    values = ds.pixel_array.copy()
    values |= np.uint16(0xA000)  # an old overlay in the unused high bits
    ds.PixelData = values.tobytes()
    ds.save_as(path)
    header = pydicom.dcmread(path, stop_before_pixels=True)
    got = native_frame(path, header)
    assert got is not None and np.array_equal(got, pydicom.dcmread(path).pixel_array)
    assert int(got.max()) < 4096
