"""What the Parametric Map says: the joint heatmap on the CT's grid, read back frame by frame.

Covers: one instance per result with a heatmap (none for no decision); SOP class, series,
description, body part; the CT's frame of reference; one frame per CT slice at that slice's
position and orientation, derived from it (Referenced Frame Number for a multi-frame source);
the pixel values (32-bit float) equal to the heatmap; the identity real-world value mapping (unit
"1", range 0-1) and the window; determinism of the bytes.
Not covered: validation by external tools (test_validators.py), fusion in a viewer (tests/viewer).
"""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.uid import ParametricMapStorage

from dicom_node.outputs.build import build_outputs
from dicom_node.outputs.common import OutputOptions
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
    """For each frame of the map, the index of the CT slice at its position (highdicom orders the
    frames along the slice normal; every frame's position says where it is)."""
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


def test_pixels_are_the_heatmap_with_an_identity_real_world_value_mapping(covid: Case) -> None:
    (pm,) = covid.outputs["pm"]
    assert "FloatPixelData" in pm and "PixelData" not in pm
    values = np.frombuffer(pm.FloatPixelData, dtype="<f4").reshape(int(pm.NumberOfFrames), pm.Rows, pm.Columns)
    assert covid.result.heatmap is not None
    np.testing.assert_allclose(values, covid.result.heatmap[frame_slices(covid)], atol=1e-7)
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


def test_no_parametric_map_without_a_heatmap(no_decision: Case, normal: Case) -> None:
    assert no_decision.outputs["pm"] == []
    assert len(normal.outputs["pm"]) == 1  # a faint map is still a map


def test_the_same_result_gives_the_same_bytes(covid: Case) -> None:
    again = build_outputs(covid.result, covid.sources, kinds=["pm"], options=OutputOptions(created=CREATED))["pm"][0]
    assert again == covid.outputs["pm"][0]
