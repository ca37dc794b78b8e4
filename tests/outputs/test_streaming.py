"""The map objects are built and written without copies of a whole volume (a
1,000-slice series' float32 heatmap is 1 GB; every extra copy of it is a gigabyte of the worker's
peak).

Covers: the Parametric Map built frame by frame is the object highdicom builds from the whole
quantised array (every element, every pixel); dicom_node.storage.part10.write_file writes the
bytes ``pydicom.dcmwrite`` writes (a deflated data set: the same bytes once inflated, deflated at
its own level); the traced peak of building and writing a
Parametric Map stays within one copy of its pixels (was five or more). No timings.
"""

from __future__ import annotations

import dataclasses
import tracemalloc
import zlib
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest

from dicom_node.outputs import pm as pm_module
from dicom_node.outputs.build import build_outputs
from dicom_node.outputs.common import OutputOptions
from dicom_node.storage.part10 import DEFLATE_LEVEL, write_file
from model.contract.result import SeriesResult
from tests.outputs.conftest import CREATED, Case


def _along(ds: Any, normal: np.ndarray) -> float:
    return float(np.dot(normal, [float(v) for v in ds.PlanePositionSequence[0].ImagePositionPatient]))


def test_the_map_built_frame_by_frame_is_highdicoms_of_the_whole_array(
    covid: Case, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, Any] = {}
    header_only = pm_module.HeaderOnlyParametricMap

    def spy(**kwargs: Any) -> Any:
        seen.update(kwargs)
        return header_only(**kwargs)

    monkeypatch.setattr(pm_module, "HeaderOnlyParametricMap", spy)
    (pm,) = build_outputs(covid.result, covid.sources, kinds=["pm"], options=OutputOptions(created=CREATED))["pm"]
    monkeypatch.undo()
    assert covid.result.heatmap is not None
    # The reference: highdicom given every quantised frame, then the frames put along the normal.
    whole = hd.pm.ParametricMap(**{**seen, "pixel_array": pm_module.quantised_scores(covid.result.heatmap)})
    pm_module._fix_dimension_organization(whole, pm.DimensionOrganizationSequence[0].DimensionOrganizationUID)
    shared = whole.SharedFunctionalGroupsSequence[0]
    normal = pm_module.slice_normal([float(v) for v in shared.PlaneOrientationSequence[0].ImageOrientationPatient])
    order = np.argsort([_along(f, normal) for f in whole.PerFrameFunctionalGroupsSequence], kind="stable")
    pixels = np.frombuffer(whole.FloatPixelData, dtype="<f4").reshape(len(order), -1)
    assert pm.FloatPixelData == pixels[order].tobytes()
    assert (pm.Rows, pm.Columns) == (whole.Rows, whole.Columns)
    frames = whole.PerFrameFunctionalGroupsSequence
    for number, (ours, i) in enumerate(zip(pm.PerFrameFunctionalGroupsSequence, order), start=1):
        theirs = frames[int(i)]
        theirs.FrameContentSequence[0].DimensionIndexValues = number
        assert ours == theirs
    # Written after highdicom by the builder (stamp, body part), the same way for both.
    skip = {"FloatPixelData", "PerFrameFunctionalGroupsSequence", "InstanceCreationDate", "InstanceCreationTime"}
    skip |= {"ContentDate", "ContentTime", "ContributingEquipmentSequence", "SoftwareVersions"}
    for elem in whole:
        if elem.keyword not in skip:
            assert pm[elem.tag] == elem, elem.keyword


@pytest.mark.parametrize("kind", ["pm", "seg", "sr"])
def test_write_file_writes_the_bytes_of_dcmwrite(covid: Case, tmp_path: Path, kind: str) -> None:
    (ds,) = covid.outputs[kind]
    ours, theirs = tmp_path / "ours.dcm", tmp_path / "theirs.dcm"
    write_file(ours, ds)
    pydicom.dcmwrite(theirs, ds, enforce_file_format=True)
    assert _inflated(ours) == _inflated(theirs)
    back = pydicom.dcmread(ours)
    assert back.SOPInstanceUID == ds.SOPInstanceUID


def test_a_deferred_map_writes_the_bytes_of_the_built_one(covid: Case, tmp_path: Path) -> None:
    options = OutputOptions(created=CREATED, defer_map_pixels=True)
    (lazy,) = build_outputs(covid.result, covid.sources, kinds=["pm"], options=options)["pm"]
    assert "FloatPixelData" not in lazy
    write_file(tmp_path / "lazy.dcm", lazy)
    pydicom.dcmwrite(tmp_path / "built.dcm", covid.outputs["pm"][0], enforce_file_format=True)
    assert _inflated(tmp_path / "lazy.dcm") == _inflated(tmp_path / "built.dcm")


def test_a_deflated_result_is_deflated_at_the_node_s_level(covid: Case, tmp_path: Path) -> None:
    (ds,) = covid.outputs["pm"]
    assert ds.file_meta.TransferSyntaxUID == pydicom.uid.DeflatedExplicitVRLittleEndian
    write_file(tmp_path / "ours.dcm", ds)
    head, body = _split(tmp_path / "ours.dcm")
    inflated = zlib.decompress(body, -zlib.MAX_WBITS)
    level = zlib.compressobj(DEFLATE_LEVEL, wbits=-zlib.MAX_WBITS)
    again = level.compress(inflated) + level.flush()
    assert body in (again, again + b"\x00")


def _split(path: Path) -> tuple[bytes, bytes]:
    """A Part 10 file's preamble and file meta, and its data set's bytes."""
    raw = path.read_bytes()
    assert raw[128:132] == b"DICM" and raw[132:136] == b"\x02\x00\x00\x00"  # (0002,0000) UL
    end = 144 + int.from_bytes(raw[140:144], "little")
    return raw[:end], raw[end:]


def _inflated(path: Path) -> bytes:
    """A Part 10 file's bytes with a deflated data set inflated (the padding byte dropped)."""
    head, body = _split(path)
    if pydicom.dcmread(path, stop_before_pixels=True).file_meta.TransferSyntaxUID != (
        pydicom.uid.DeflatedExplicitVRLittleEndian
    ):
        return head + body
    return head + zlib.decompressobj(-zlib.MAX_WBITS).decompress(body)


def _large(case: Case) -> SeriesResult:
    """The covid result at 4 x 4 times the matrix: 24 x 512 x 512, a 25 MB float32 heatmap."""
    result = case.result
    assert result.heatmap is not None and result.region_labels is not None and result.lung_mask is not None

    def big(a: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(np.repeat(np.repeat(a, 4, axis=1), 4, axis=2))

    return dataclasses.replace(
        result, heatmap=big(result.heatmap), region_labels=big(result.region_labels), lung_mask=big(result.lung_mask)
    )


def _traced_peak(case: Case, result: SeriesResult, options: OutputOptions, path: Path) -> int:
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        (pm,) = build_outputs(result, case.sources, kinds=["pm"], options=options)["pm"]
        write_file(path, pm)
        return tracemalloc.get_traced_memory()[1] - before
    finally:
        tracemalloc.stop()


def test_building_and_writing_the_map_holds_at_most_one_copy_of_its_pixels(covid: Case, tmp_path: Path) -> None:
    """The traced peak of building the Parametric Map of a 24 x 512 x 512 heatmap and writing it
    deflated, beyond the heatmap itself: the frames and their bytes when the object carries its
    pixels, a frame's worth and a little when they are deferred to the file (the worker's way). The
    whole-array build held the scores, each frame's bytes, their join and a reordered copy, and
    pydicom's deflated writer two more copies: five or more."""
    large = _large(covid)
    assert large.heatmap is not None
    pixels = large.heatmap.nbytes
    built = _traced_peak(covid, large, OutputOptions(created=CREATED), tmp_path / "built.dcm")
    deferred = _traced_peak(covid, large, OutputOptions(created=CREATED, defer_map_pixels=True), tmp_path / "lazy.dcm")
    assert built < 2.25 * pixels, (built, pixels)
    assert deferred < 0.25 * pixels, (deferred, pixels)
    assert (tmp_path / "built.dcm").read_bytes() == (tmp_path / "lazy.dcm").read_bytes()  # both written here
