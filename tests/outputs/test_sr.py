"""What the SR says: the TID 1500 tree of a COVID-19 result with two regions, of a normal result
and of a no-decision result, read back item by item.

Covers: document flags, device observer and its Device UID rule, procedure reported, the
image-level group (finding, site, algorithm, one "Probability of <class>" per class in per cent,
involvement, the box on the key slice they are inferred from, qualitative evaluation, source
images), region groups (a TID 1411 and a TID 1410 group per region sharing the tracking UID = SEG
TrackingUID; referenced segment, source images, volume, algorithm and finding site under the
measurement; the outline on the region's key slice and its area), a TID 1410 group per region
with its centre point (its own derived tracking UID), no zero-valued number (a
viewer prints it empty), every group having spatial coordinates (what viewers list), the readable decision and "not
for clinical use" text, no Imaging Measurements without a decision, evidence and contributing
equipment.
Not covered: validation by external tools (test_validators.py), multi-frame references
(test_multiframe.py).
"""

from __future__ import annotations

import dataclasses
from typing import Iterator

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import Comprehensive3DSRStorage, SegmentationStorage

from dicom_node.outputs.build import build_outputs
from dicom_node.outputs.common import OutputOptions
from dicom_node.outputs.render import label_lines
from model.contract.result import ModelInfo
from model.contract.uids import derived_uid
from tests.outputs.conftest import CREATED, Case


def children(item: Dataset, code_value: str | None = None) -> list[Dataset]:
    out = list(item.get("ContentSequence", []))
    if code_value is not None:
        out = [
            c for c in out if "ConceptNameCodeSequence" in c and c.ConceptNameCodeSequence[0].CodeValue == code_value
        ]
    return out


def child(item: Dataset, code_value: str) -> Dataset:
    found = children(item, code_value)
    assert len(found) == 1, f"{len(found)} items {code_value}"
    return found[0]


def walk(item: Dataset) -> Iterator[Dataset]:
    for c in children(item):
        yield c
        yield from walk(c)


def code(item: Dataset) -> tuple[str, str]:
    value = item.ConceptCodeSequence[0]
    return value.CodeValue, value.CodingSchemeDesignator


def groups(sr: Dataset) -> list[Dataset]:
    return children(child(sr, "126010"), "125007")


def probability_items(group: Dataset) -> list[Dataset]:
    """The class probabilities: NUM items named by the node's own "Probability of <class>" codes."""
    return [
        c
        for c in children(group)
        if c.ValueType == "NUM" and c.ConceptNameCodeSequence[0].CodeMeaning.startswith("Probability of ")
    ]


def template(group: Dataset) -> str:
    return str(group.ContentTemplateSequence[0].TemplateIdentifier)


def by_template(sr: Dataset, tid: str) -> list[Dataset]:
    return [g for g in groups(sr) if template(g) == tid]


def outlines(sr: Dataset) -> list[Dataset]:
    """The planar groups of the regions' outlines (not of their centre points)."""
    return [g for g in by_template(sr, "1410") if child(g, "111030").GraphicType != "POINT"]


def centres(sr: Dataset) -> list[Dataset]:
    return [g for g in by_template(sr, "1410") if child(g, "111030").GraphicType == "POINT"]


def texts(item: Dataset, code_value: str) -> list[str]:
    return [c.TextValue for c in children(item, code_value)]


def test_document_flags_and_class(covid: Case) -> None:
    sr = covid.outputs["sr"][0]
    assert sr.SOPClassUID == Comprehensive3DSRStorage
    assert sr.Modality == "SR"
    assert (sr.CompletionFlag, sr.VerificationFlag, sr.PreliminaryFlag) == ("COMPLETE", "UNVERIFIED", "PRELIMINARY")
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    assert sr.ConceptNameCodeSequence[0].CodeValue == "126000"  # Imaging Measurement Report


def test_device_observer_and_its_uid(covid: Case) -> None:
    sr = covid.outputs["sr"][0]
    model = covid.result.model
    assert code(child(sr, "121005")) == ("121007", "DCM")  # observer type: device
    device_uid = child(sr, "121012").UID
    assert device_uid == derived_uid("device", model.name, model.version, model.weights_sha256)
    assert child(sr, "121013").TextValue == model.name
    assert child(sr, "121014").TextValue == "COVID-CT AI node"
    # Retrained weights, same name and version: another Device UID.
    retrained = dataclasses.replace(covid.result, model=dataclasses.replace(model, weights_sha256="cd" * 32))
    other = build_outputs(retrained, covid.sources, kinds=["sr"], options=OutputOptions(created=CREATED))["sr"][0]
    assert child(other, "121012").UID != device_uid


def test_procedure_reported_is_a_cid_100_ct_code(covid: Case) -> None:
    assert code(child(covid.outputs["sr"][0], "121058")) == ("25045-6", "LN")


def test_image_level_group(covid: Case) -> None:
    sr = covid.outputs["sr"][0]
    result = covid.result
    group = groups(sr)[0]
    assert group.ContentTemplateSequence[0].TemplateIdentifier == "1501"
    assert texts(group, "112039") == ["Series classification: COVID-19"]
    assert code(child(group, "121071")) == ("840539006", "SCT")  # finding: COVID-19
    assert code(child(group, "363698007")) == ("39607008", "SCT")  # finding site: lung
    assert texts(group, "111001") == [result.model.name]
    assert texts(group, "111003") == [result.model.version]
    # The three class probabilities, each its own concept (what a viewer prints), in per cent.
    probabilities = {}
    for num in probability_items(group):
        assert num.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeValue == "%"
        name = num.ConceptNameCodeSequence[0]
        assert name.CodingSchemeDesignator == "99COVIDCT"
        probabilities[name.CodeMeaning] = float(num.MeasuredValueSequence[0].NumericValue)
    assert list(probabilities) == [
        "Probability of COVID-19",
        "Probability of CAP",
        "Probability of no pneumonia",
    ]
    assert probabilities == pytest.approx(
        {
            "Probability of COVID-19": 100 * result.probabilities["covid"],
            "Probability of CAP": 100 * result.probabilities["cap"],
            "Probability of no pneumonia": 100 * result.probabilities["normal"],
        },
        rel=1e-3,
    )
    # CAP is abbreviated (OHIF's label must fit beside the box) and spelt out under its measurement.
    cap = next(n for n in probability_items(group) if n.ConceptNameCodeSequence[0].CodeValue == "P-CAP")
    assert texts(cap, "121050") == ["Probability of community-acquired pneumonia (CAP)"]
    (scheme,) = sr.CodingSchemeIdentificationSequence
    assert scheme.CodingSchemeDesignator == "99COVIDCT" and scheme.CodingSchemeName
    involvement = child(group, "113288")
    assert involvement.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeValue == "%"
    assert float(involvement.MeasuredValueSequence[0].NumericValue) == pytest.approx(
        result.lung_involvement_percent, abs=1e-3
    )
    # Qualitative evaluation: COVID-19 present (a code, not a number).
    evaluations = children(group, "840539006")
    assert [code(e) for e in evaluations] == [("52101004", "SCT")]
    # Source images: the lung slices the model looked at, in slice order.
    sources = [c.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for c in children(group) if c.ValueType == "IMAGE"]
    expected = [uid for uid, lung in zip(result.sop_instance_uids, result.lung_slices) if lung]
    assert sources == expected


def test_classification_measurements_are_inferred_from_the_lungs_on_the_first_key_slice(covid: Case) -> None:
    """Each number of the image-level group points at one image (TID 300 INFERRED FROM SCOORD):
    the box around the lungs on the first key slice, so a viewer's list entry jumps there."""
    group = groups(covid.outputs["sr"][0])[0]
    result = covid.result
    key = result.key_slices[0]
    assert result.lung_mask is not None
    lungs = result.lung_mask[key]
    ys, xs = lungs.nonzero()
    expected_box = [float(xs.min()), float(ys.min()), float(xs.max()) + 1, float(ys.min()),
                    float(xs.max()) + 1, float(ys.max()) + 1, float(xs.min()), float(ys.max()) + 1,
                    float(xs.min()), float(ys.min())]  # fmt: skip
    numbers = probability_items(group) + children(group, "113288")
    assert len(numbers) == 4
    for num in numbers:
        (scoord,) = [c for c in children(num) if c.ValueType == "SCOORD"]
        assert scoord.RelationshipType == "INFERRED FROM" and scoord.GraphicType == "POLYLINE"
        assert [float(v) for v in scoord.GraphicData] == expected_box
        (image,) = children(scoord)
        assert image.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == result.sop_instance_uids[key]


def test_each_region_is_one_finding_in_a_volumetric_and_a_planar_group(covid: Case) -> None:
    sr = covid.outputs["sr"][0]
    assert [template(g) for g in groups(sr)] == ["1501", "1411", "1410", "1410", "1411", "1410", "1410"]
    volumetric, planar = by_template(sr, "1411"), outlines(sr)
    for v, p in zip(volumetric, planar, strict=True):
        assert child(v, "112040").UID == child(p, "112040").UID
        assert texts(v, "112039") == texts(p, "112039")


def test_region_groups_reference_the_seg_segments(covid: Case) -> None:
    sr, seg = covid.outputs["sr"][0], covid.outputs["seg"][0]
    result = covid.result
    region_groups = by_template(sr, "1411")
    assert len(region_groups) == len(result.regions) == len(seg.SegmentSequence)
    for number, (group, region, segment) in enumerate(zip(region_groups, result.regions, seg.SegmentSequence), start=1):
        tracking_uid = child(group, "112040").UID
        assert tracking_uid == segment.TrackingUID
        assert texts(group, "112039") == [segment.TrackingID]
        reference = child(group, "121191")  # Referenced Segment
        ref = reference.ReferencedSOPSequence[0]
        assert (ref.ReferencedSOPClassUID, ref.ReferencedSOPInstanceUID) == (SegmentationStorage, seg.SOPInstanceUID)
        assert ref.ReferencedSegmentNumber == number == segment.SegmentNumber
        sources = [c.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for c in children(group, "121233")]
        z0, z1 = region.slice_range
        assert sources == result.sop_instance_uids[z0 : z1 + 1]
        assert children(group, "121233")[0].ConceptNameCodeSequence[0].CodeMeaning == "Source image for segmentation"
        volume = child(group, "118565006")
        assert float(volume.MeasuredValueSequence[0].NumericValue) == pytest.approx(region.volume_ml, abs=1e-3)
        # TID 4019 under the measurement (TID 1419 row 20), not on the group.
        assert texts(volume, "111001") == [result.model.name]
        assert children(group, "111001") == []
        assert code(child(volume, "363698007")) == ("39607008", "SCT") and children(group, "363698007") == []


def test_planar_groups_outline_each_region_on_its_largest_slice(covid: Case) -> None:
    """TID 1410: a closed POLYLINE on the CT image where the region is largest, every point on
    the region's edge, and its area there (mm2) close to the region's pixels on that slice."""
    sr = covid.outputs["sr"][0]
    result = covid.result
    labels = result.region_labels
    assert labels is not None
    for region, group in zip(result.regions, outlines(sr), strict=True):
        mask = np.asarray(labels == region.index)
        key = int(mask.sum(axis=(1, 2)).argmax())
        (scoord,) = children(group, "111030")  # Image Region
        assert scoord.ValueType == "SCOORD" and scoord.GraphicType == "POLYLINE"
        image = children(scoord)[0].ReferencedSOPSequence[0]
        assert image.ReferencedSOPInstanceUID == result.sop_instance_uids[key]
        points = [(float(x), float(y)) for x, y in zip(scoord.GraphicData[0::2], scoord.GraphicData[1::2])]
        assert points[0] == points[-1] and len(points) >= 4
        for x, y in points:  # on the boundary: within a pixel of a region pixel's centre
            assert mask[key, max(0, int(y - 1)) : int(y + 1) + 1, max(0, int(x - 1)) : int(x + 1) + 1].any(), (x, y)
        area = child(group, "42798000")
        assert area.MeasuredValueSequence[0].MeasurementUnitsCodeSequence[0].CodeValue == "mm2"
        spacing = [float(v) for v in covid.source(key).PixelSpacing]
        pixels_mm2 = mask[key].sum() * spacing[0] * spacing[1]
        assert 0.6 * pixels_mm2 < float(area.MeasuredValueSequence[0].NumericValue) <= pixels_mm2
        assert texts(area, "111001") == [result.model.name]
        assert code(child(group, "121071")) == ("840539006", "SCT")
        # The site belongs to each measurement (TID 300), not to the group: viewers print a
        # group's finding site as its raw code ("363698007: Lung").
        assert children(group, "363698007") == []
        assert code(child(area, "363698007")) == ("39607008", "SCT")


def test_each_region_has_a_centre_point_on_its_largest_slice(covid: Case) -> None:
    """TID 1410 with a POINT per region, a finding of its own (OHIF 3.13 restores an SR's
    measurements only from a rectangle or a point, not from an outline): on the region's key slice
    (the outline's image), at the pixel deepest inside the region, its own tracking UID (derived,
    the same in every build) and the region's identifier with ": centre"."""
    sr = covid.outputs["sr"][0]
    result = covid.result
    labels = result.region_labels
    assert labels is not None
    again = build_outputs(covid.result, covid.sources, kinds=["sr"], options=OutputOptions(created=CREATED))["sr"][0]
    points = centres(sr)
    assert len(points) == len(result.regions) == len(outlines(sr))
    assert [child(g, "112040").UID for g in points] == [child(g, "112040").UID for g in centres(again)]
    region_uids = {child(g, "112040").UID for g in outlines(sr)}
    for region, outline_group, group in zip(result.regions, outlines(sr), points, strict=True):
        assert child(group, "112040").UID not in region_uids
        assert texts(group, "112039") == [texts(outline_group, "112039")[0] + ": centre"]
        mask = np.asarray(labels == region.index)
        key = int(mask.sum(axis=(1, 2)).argmax())
        scoord = child(group, "111030")
        assert scoord.ValueType == "SCOORD" and len(scoord.GraphicData) == 2
        image = children(scoord)[0].ReferencedSOPSequence[0]
        assert image.ReferencedSOPInstanceUID == result.sop_instance_uids[key]
        assert (
            image.ReferencedSOPInstanceUID
            == children(child(outline_group, "111030"))[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        )
        x, y = (float(v) for v in scoord.GraphicData)
        assert mask[key, int(y), int(x)], (x, y)
        assert code(child(group, "121071")) == ("840539006", "SCT")
        # No number to print and no group-level site (viewers print it as its raw code).
        assert [c for c in walk(group) if c.ValueType == "NUM"] == [] and children(group, "363698007") == []


def test_every_finding_has_spatial_coordinates(covid: Case, normal: Case) -> None:
    """What viewers need to list a finding as a measurement and jump to its image (OHIF 3.x
    merges the groups of one tracking UID and takes a finding without SCOORD/SCOORD3D for an
    error): every tracking UID of Imaging Measurements has one in its groups."""
    for case in (covid, normal):
        findings: dict[str, list[Dataset]] = {}
        for group in groups(case.outputs["sr"][0]):
            findings.setdefault(child(group, "112040").UID, []).append(group)
        for uid, members in findings.items():
            assert any(item.ValueType in ("SCOORD", "SCOORD3D") for g in members for item in walk(g)), uid


def test_decision_and_disclaimer_are_readable(covid: Case) -> None:
    sr = covid.outputs["sr"][0]
    evaluations = child(sr, "C0034375")
    assert code(child(evaluations, "840539006")) == ("52101004", "SCT")
    impression = child(evaluations, "121073").TextValue
    assert impression.startswith("AI result: COVID-19")
    assert "COVID-19 0.820" in impression and covid.result.reason in impression
    # One full stop between the reason (which ends with the notice) and the involvement.
    assert "Lung involvement" in impression and ".." not in impression
    assert "NOT FOR CLINICAL USE" in child(evaluations, "121106").TextValue


def test_evidence_is_the_source_series_and_the_seg(covid: Case) -> None:
    sr, seg = covid.outputs["sr"][0], covid.outputs["seg"][0]
    source = covid.source(0)
    evidence = sr.CurrentRequestedProcedureEvidenceSequence
    assert len(evidence) == 1 and evidence[0].StudyInstanceUID == source.StudyInstanceUID
    by_series = {
        s.SeriesInstanceUID: [i.ReferencedSOPInstanceUID for i in s.ReferencedSOPSequence]
        for s in evidence[0].ReferencedSeriesSequence
    }
    assert sorted(by_series[source.SeriesInstanceUID]) == sorted(covid.result.sop_instance_uids)
    assert by_series[seg.SeriesInstanceUID] == [seg.SOPInstanceUID]


def test_contributing_equipment_names_the_algorithm(covid: Case) -> None:
    sr = covid.outputs["sr"][0]
    model = covid.result.model
    items = [i for i in sr.ContributingEquipmentSequence if i.PurposeOfReferenceCodeSequence[0].CodeValue == "109102"]
    ours = [i for i in items if i.Manufacturer == "COVID-CT AI node"]
    assert len(ours) == 1
    item = ours[0]
    assert item.ManufacturerModelName == model.name
    assert model.version in item.SoftwareVersions
    assert item.DeviceUID == derived_uid("device", model.name, model.version, model.weights_sha256)
    assert str(item.ContributionDateTime) == CREATED.strftime("%Y%m%d%H%M%S")
    assert "NOT FOR CLINICAL USE" in item.ContributionDescription
    # The scanner is named as acquisition equipment.
    scanner = covid.source(0).Manufacturer
    assert any(
        i.PurposeOfReferenceCodeSequence[0].CodeValue == "109101" and i.Manufacturer == scanner
        for i in sr.ContributingEquipmentSequence
    )


def test_normal_result(normal: Case) -> None:
    sr = normal.outputs["sr"][0]
    assert len(groups(sr)) == 1  # no region groups
    group = groups(sr)[0]
    assert code(child(group, "121071")) == ("233604007", "SCT")  # pneumonia ...
    assert code(child(group, "233604007")) == ("272519000", "SCT")  # ... absent
    assert len(probability_items(group)) == 3
    # No region, no involvement to measure: no zero that a viewer would print as an empty value.
    assert children(group, "113288") == []
    for num in walk(group):
        if num.get("ValueType") == "NUM":
            assert float(num.MeasuredValueSequence[0].NumericValue) != 0.0
    assert "CurrentRequestedProcedureEvidenceSequence" in sr
    assert len(sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence) == 1  # no SEG referenced


def test_no_decision_says_so_and_why(no_decision: Case) -> None:
    sr = no_decision.outputs["sr"][0]
    # No probabilities the model stands behind: nothing measured, no Imaging Measurements.
    assert children(sr, "126010") == []
    evaluations = child(sr, "C0034375")
    assert code(child(evaluations, "233604007")) == ("82334004", "SCT")
    impression = child(evaluations, "121073").TextValue
    assert impression == f"AI result: no decision. Reason: {no_decision.result.reason}"
    assert "NOT FOR CLINICAL USE" in child(evaluations, "121106").TextValue


def test_cap_decision_uses_the_cap_finding(covid: Case) -> None:
    cap = dataclasses.replace(covid.result, decision="cap", probabilities={"covid": 0.2, "cap": 0.7, "normal": 0.1})
    sr = build_outputs(cap, covid.sources, kinds=["sr"], options=OutputOptions(created=CREATED))["sr"][0]
    group = groups(sr)[0]
    assert code(child(group, "121071")) == ("385093006", "SCT")
    assert code(child(group, "385093006")) == ("52101004", "SCT")
    assert all(code(child(g, "121071")) == ("385093006", "SCT") for g in groups(sr)[1:])
    assert texts(groups(sr)[0], "112039") == ["Series classification: community-acquired pneumonia"]


def test_long_model_names_do_not_break_coded_meanings(covid: Case) -> None:
    """highdicom refuses code meanings over 64 characters; nothing the model sends ends up in one."""
    long_name = "m" * 90
    result = dataclasses.replace(covid.result, model=ModelInfo(name=long_name, version="9" * 40))
    sr = build_outputs(result, covid.sources, kinds=["sr"], options=OutputOptions(created=CREATED))["sr"][0]
    for item in walk(sr):
        for seq in ("ConceptNameCodeSequence", "ConceptCodeSequence"):
            if seq in item:
                assert len(item[seq][0].CodeMeaning) <= 64


def test_indeterminate_is_reported_as_such(indeterminate: Case) -> None:
    """A low-confidence result: pneumonia indeterminate, the probabilities measured, the reason given;
    the SC overlays' banner says indeterminate."""
    sr = indeterminate.outputs["sr"][0]
    group = groups(sr)[0]
    assert code(child(group, "121071")) == ("233604007", "SCT")  # pneumonia ...
    assert code(child(group, "233604007")) == ("82334004", "SCT")  # ... indeterminate
    assert len(probability_items(group)) == 3  # the probabilities are still there
    assert texts(group, "112039") == ["Series classification: indeterminate (low confidence)"]
    assert "low confidence" in child(child(sr, "C0034375"), "121073").TextValue
    assert label_lines(indeterminate.result)[0] == "AI: indeterminate (low confidence)"
