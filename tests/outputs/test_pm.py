"""What the Parametric Map says: the joint heatmap on the CT's grid, read back frame by frame.

Covers: one instance per result with a heatmap (none for no decision); SOP class, series,
description, body part; the CT's frame of reference; one frame per CT slice at that slice's
position and orientation, derived from it (Referenced Frame Number for a multi-frame source);
the frames in ascending order along cross(row, column direction), the order of OHIF's CT volume,
whatever the source's instance or frame order; the pixel values (32-bit float) equal to the
heatmap within its 1/256 steps; the identity real-world value mapping (unit "1", range 0-1) and
the window; the file deflated and its size against the CT's; determinism of the bytes; when a
series is over the slice limit (left_out: frames of an Enhanced CT counted as slices, the reason
naming the setting; nothing at or under it, without a limit, or without a heatmap).
Not covered: validation by external tools (test_validators.py), fusion in a viewer (tests/viewer).
"""

from __future__ import annotations

from copy import deepcopy
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import DeflatedExplicitVRLittleEndian, ParametricMapStorage

from dicom_node.outputs.build import build_outputs
from dicom_node.outputs.common import OutputOptions, SourceSeries
from dicom_node.outputs.pm import LEVELS, left_out
from tests.outputs.conftest import CREATED, Case


def test_one_parametric_map_on_the_ct_frame_of_reference(covid: Case) -> None:
    (pm,) = covid.outputs["pm"]
    ct = covid.source(0)
    assert pm.SOPClassUID == ParametricMapStorage
    assert pm.StudyInstanceUID == ct.StudyInstanceUID and pm.SeriesInstanceUID != ct.SeriesInstanceUID
    assert pm.FrameOfReferenceUID == ct.FrameOfReferenceUID
    assert pm.SeriesNumber == 9005
    assert pm.SeriesDescription.startswith("AI:") and "NOT FOR DIAGNOSTIC USE" in pm.SeriesDescription
    assert pm.BodyPartExamined == "CHEST"
    assert (pm.Rows, pm.Columns) == (ct.Rows, ct.Columns)
    assert "ReferencedSeriesSequence" in pm and pm.ReferencedSeriesSequence[0].SeriesInstanceUID == ct.SeriesInstanceUID


def frame_slices(case: Case) -> list[int]:
    """For each frame of the map, the index of the CT slice at its position (every frame's
    position says where it is)."""
    (pm,) = case.outputs["pm"]
    normal = np.cross(
        *np.reshape(
            [
                float(v)
                for v in pm.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient
            ],
            (2, 3),
        )
    )
    slice_z = [float(np.dot(normal, _slice_position(case, i))) for i in range(len(case.result.sop_instance_uids))]
    out = []
    for frame in pm.PerFrameFunctionalGroupsSequence:
        z = float(np.dot(normal, [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient]))
        out.append(int(np.argmin(np.abs(np.subtract(slice_z, z)))))
    return out


def _slice_position(case: Case, i: int) -> list[float]:
    ds = case.source(i)
    frame = case.series.frame_numbers[i]
    if frame is None:
        return [float(v) for v in ds.ImagePositionPatient]
    return [
        float(v) for v in ds.PerFrameFunctionalGroupsSequence[frame - 1].PlanePositionSequence[0].ImagePositionPatient
    ]


def test_a_frame_per_ct_slice_at_its_position_derived_from_it(covid: Case) -> None:
    (pm,) = covid.outputs["pm"]
    uids = covid.result.sop_instance_uids
    assert int(pm.NumberOfFrames) == len(uids)
    orientation = [
        float(v) for v in pm.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient
    ]
    assert orientation == pytest.approx([float(v) for v in covid.source(0).ImageOrientationPatient])
    slices = frame_slices(covid)
    assert sorted(slices) == list(range(len(uids)))  # every slice once
    for frame, i in zip(pm.PerFrameFunctionalGroupsSequence, slices):
        position = [float(v) for v in frame.PlanePositionSequence[0].ImagePositionPatient]
        assert position == pytest.approx(_slice_position(covid, i), abs=1e-4)
        source = frame.DerivationImageSequence[0].SourceImageSequence[0]
        assert source.ReferencedSOPInstanceUID == uids[i]


def along_normal(pm: Dataset) -> list[float]:
    """Each frame's position along cross(row direction, column direction), in frame order."""
    orientation = pm.SharedFunctionalGroupsSequence[0].PlaneOrientationSequence[0].ImageOrientationPatient
    normal = np.cross(*np.reshape([float(v) for v in orientation], (2, 3)))
    return [
        float(np.dot(normal, [float(v) for v in f.PlanePositionSequence[0].ImagePositionPatient]))
        for f in pm.PerFrameFunctionalGroupsSequence
    ]


@pytest.mark.parametrize("name", ["covid", "multiframe"])
def test_frames_run_in_the_order_of_the_viewers_volume(name: str, request: pytest.FixtureRequest) -> None:
    """OHIF 3.13 copies frame k of the map onto slice k of its CT volume, which it sorts ascending
    along cross(row, column direction): the map's frames must run the same way (the test series
    numbers its instances and frames against that order, so nothing here follows them)."""
    case: Case = request.getfixturevalue(name)
    (pm,) = case.outputs["pm"]
    along = along_normal(pm)
    assert along == sorted(along) and len(set(along)) == len(along)
    assert frame_slices(case) == list(range(len(case.result.sop_instance_uids)))
    values = [int(f.FrameContentSequence[0].DimensionIndexValues) for f in pm.PerFrameFunctionalGroupsSequence]
    assert values == list(range(1, len(values) + 1))


def test_a_feet_first_ct_gets_its_frames_head_to_feet(covid: Case) -> None:
    """The order is the normal's, not the patient's axis: a CT whose rows run right to left
    (normal towards the feet) gets its map's frames from the head down."""
    flipped = {}
    for uid, ds in covid.sources.datasets.items():
        copy = deepcopy(ds)
        orientation = [float(v) for v in ds.ImageOrientationPatient]
        copy.ImageOrientationPatient = [-orientation[0], *orientation[1:]]
        flipped[uid] = copy
    sources = SourceSeries(datasets=flipped, hu=covid.sources.hu)
    (pm,) = build_outputs(covid.result, sources, kinds=["pm"], options=OutputOptions(created=CREATED))["pm"]
    along = along_normal(pm)
    assert along == sorted(along)
    z = [float(f.PlanePositionSequence[0].ImagePositionPatient[2]) for f in pm.PerFrameFunctionalGroupsSequence]
    assert z == sorted(z, reverse=True)


def test_pixels_are_the_heatmap_with_an_identity_real_world_value_mapping(covid: Case) -> None:
    (pm,) = covid.outputs["pm"]
    assert "FloatPixelData" in pm and "PixelData" not in pm
    values = np.frombuffer(pm.FloatPixelData, dtype="<f4").reshape(int(pm.NumberOfFrames), pm.Rows, pm.Columns)
    assert covid.result.heatmap is not None
    expected = covid.result.heatmap[frame_slices(covid)]
    np.testing.assert_allclose(values, expected, atol=0.5 / LEVELS + 1e-7)
    np.testing.assert_array_equal(values * LEVELS, np.rint(values * LEVELS))  # steps of 1/256
    assert values.max() == pytest.approx(expected.max(), abs=0.5 / LEVELS)
    shared = pm.SharedFunctionalGroupsSequence[0]
    mapping = shared.RealWorldValueMappingSequence[0]
    assert (float(mapping.RealWorldValueSlope), float(mapping.RealWorldValueIntercept)) == (1.0, 0.0)
    assert (
        float(mapping.DoubleFloatRealWorldValueFirstValueMapped),
        float(mapping.DoubleFloatRealWorldValueLastValueMapped),
    ) == (0.0, 1.0)
    assert mapping.MeasurementUnitsCodeSequence[0].CodeValue == "1"
    assert covid.result.model.name in mapping.LUTExplanation
    window = shared.FrameVOILUTSequence[0]
    assert (float(window.WindowCenter), float(window.WindowWidth)) == (0.5, 1.0)


def test_a_multiframe_source_is_referenced_by_frame(multiframe: Case) -> None:
    (pm,) = multiframe.outputs["pm"]
    frames = multiframe.series.frame_numbers
    for frame, i in zip(pm.PerFrameFunctionalGroupsSequence, frame_slices(multiframe)):
        source = frame.DerivationImageSequence[0].SourceImageSequence[0]
        assert int(source.ReferencedFrameNumber) == frames[i]


def test_written_deflated_at_a_fraction_of_the_ct(covid: Case, tmp_path: Path) -> None:
    """The map as the node writes and sends it: Deflated Explicit VR Little Endian, a few per cent
    of the CT's bytes (the float frames alone are twice the CT), and read back unchanged."""
    (pm,) = build_outputs(covid.result, covid.sources, kinds=["pm"], options=OutputOptions(created=CREATED))["pm"]
    assert pm.file_meta.TransferSyntaxUID == DeflatedExplicitVRLittleEndian
    path = tmp_path / "pm.dcm"
    pydicom.dcmwrite(path, pm, enforce_file_format=True)
    ct_bytes = sum(p.stat().st_size for p in covid.paths)
    raw = len(pm.FloatPixelData)
    assert raw > 1.9 * ct_bytes
    assert path.stat().st_size < 0.05 * ct_bytes, (path.stat().st_size, ct_bytes)
    back = pydicom.dcmread(path)
    assert back.FloatPixelData == pm.FloatPixelData


def test_no_parametric_map_without_a_heatmap(no_decision: Case, normal: Case) -> None:
    assert no_decision.outputs["pm"] == []
    assert len(normal.outputs["pm"]) == 1  # a faint map is still a map


def test_the_same_result_gives_the_same_bytes(covid: Case) -> None:
    again = build_outputs(covid.result, covid.sources, kinds=["pm"], options=OutputOptions(created=CREATED))["pm"][0]
    assert again == covid.outputs["pm"][0]


def test_left_out_over_the_slice_limit_only(covid: Case, multiframe: Case, no_decision: Case) -> None:
    slices = len(covid.result.sop_instance_uids)
    assert slices == 24
    assert left_out(covid.result, slices) is None and left_out(covid.result, None) is None
    assert left_out(covid.result, slices - 1) == (
        "parametric map left out: 24 slices, over worker.parametric_map_max_slices = 23 (the heatmap overlays and "
        "the SEG are sent; raise the limit, or set it to null, to send the map too)"
    )
    # An Enhanced CT's frames are its slices.
    assert len(multiframe.paths) == 1
    assert str(left_out(multiframe.result, 10)).startswith("parametric map left out: 24 slices, over")
    # No heatmap, no map: nothing is left out.
    assert left_out(no_decision.result, 1) is None
