"""Every output object checked by tools nobody here wrote.

Covers: dciodvfy (dicom3tools) on SR, every SC image, SEG, KOS and Parametric Map (single-frame and multi-frame
sources, COVID-19, normal and no-decision results); pixelmed's DicomSRValidator (with
-checktemplateid) on the SRs and the KOS of the single-frame source (the multi-frame ones differ
only by Referenced Frame Number, left to dciodvfy and dsrdump); pixelmed's DicomInstanceValidator on SEG, SC and KOS;
``dsrdump -Ec`` (DCMTK) on the SRs. Each run must report no message other than the named known
disagreements of validators.py, and each known disagreement is pinned to where it may occur.
Pixelmed has no rules for the Parametric Map (as for SC): dciodvfy checks it. A missing tool fails
these tests.

Not covered: what the content means (test_sr.py, test_sc.py, test_seg.py, test_kos.py).
"""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest

from tests.outputs import validators as v

pytestmark = pytest.mark.services  # dciodvfy, pixelmed (a JVM), dsrdump

DCIODVFY_KNOWN = (
    v.DCIODVFY_CONTRIBUTING_DEVICE_UID,
    v.DCIODVFY_PARAMETRIC_MAP_QUANTITY,
    v.DCIODVFY_SC_IMAGE_PLANE,
    v.DCIODVFY_PRIVATE_CODING_SCHEME,
)


def test_dciodvfy_reports_no_error_on_any_object(written: dict[str, Path]) -> None:
    for name, path in written.items():
        messages = v.dciodvfy(path)
        assert not [m for m in messages if m.startswith("Error")], (name, messages)
        assert v.unexplained(messages, DCIODVFY_KNOWN) == [], (name, messages)
        if "_pm" not in name:
            assert v.explained_by(messages, v.DCIODVFY_PARAMETRIC_MAP_QUANTITY) == [], (name, messages)
        if "_sc" not in name:
            assert v.explained_by(messages, v.DCIODVFY_SC_IMAGE_PLANE) == [], (name, messages)
        private = v.explained_by(messages, v.DCIODVFY_PRIVATE_CODING_SCHEME)
        if name.endswith("_sr") and name != "no_decision_sr":
            assert len(private) == 4, (name, messages)  # three probability codes and the scheme's identification
        else:
            assert private == [], (name, messages)


def test_dciodvfy_device_uid_warning_is_the_only_warning_and_only_for_the_contributing_equipment(
    written: dict[str, Path],
) -> None:
    """The one known dciodvfy disagreement, and proof that it is about our Device UID: without
    it the object has no warning at all."""
    path = written["covid_kos"]
    assert v.explained_by(v.dciodvfy(path), v.DCIODVFY_CONTRIBUTING_DEVICE_UID)
    ds = pydicom.dcmread(path)
    for item in ds.ContributingEquipmentSequence:
        if "DeviceUID" in item:
            del item.DeviceUID
    stripped = path.with_name("kos_without_device_uid.dcm")
    ds.save_as(stripped, enforce_file_format=True)
    assert v.dciodvfy(stripped) == []


def test_dciodvfy_rejects_an_empty_laterality_on_the_seg(written: dict[str, Path]) -> None:
    """Why the SEG has no Laterality although pixelmed asks for one (see
    PIXELMED_GENERAL_SERIES_LATERALITY): dciodvfy, following PS3.3 C.7.3.1, errs if it is there."""
    ds = pydicom.dcmread(written["covid_seg"])
    ds.Laterality = ""
    path = written["covid_seg"].with_name("seg_with_laterality.dcm")
    ds.save_as(path, enforce_file_format=True)
    assert any("Laterality" in m and m.startswith("Error") for m in v.dciodvfy(path))


SR_NAMES = ("covid_sr", "normal_sr", "no_decision_sr", "indeterminate_sr", "multiframe_sr")


@pytest.mark.parametrize("name", ("covid_sr", "normal_sr", "no_decision_sr", "indeterminate_sr"))
def test_pixelmed_sr_validator_finds_only_known_disagreements(
    name: str, pixelmed_results: dict[tuple[str, str], list[str]], written: dict[str, Path]
) -> None:
    lines = pixelmed_results[("sr", name)]
    assert "Found Comprehensive3DSR IOD" in lines
    assert "Found Root Template TID_1500 (MeasurementReport)" in lines
    messages = v.pixelmed_messages(lines)
    with_regions = name == "covid_sr"
    known: tuple[v.KnownDisagreement, ...] = (v.PIXELMED_TID1501_QUALITATIVE_EVALUATION,)
    if with_regions:
        known += (v.PIXELMED_ONE_TEMPLATE_PER_CONTAINER,)
    assert v.unexplained(messages, known) == [], messages
    if name == "no_decision_sr":
        assert messages == []  # no Imaging Measurements: nothing of TID 1501 to disagree about
        return
    # The qualitative evaluation is the one TID 1501 item pixelmed does not know.
    assert len(v.explained_by(messages, v.PIXELMED_TID1501_QUALITATIVE_EVALUATION)) == 1, messages
    if with_regions:
        errors = [m for m in messages if m.startswith("Error")]
        assert len(errors) == 3, errors  # rows 5, 7 and 10 of TID 1411, all within content item 1.8.1
        assert v.misapplied_templates(written[name], messages) == []


def test_without_region_groups_the_image_level_group_has_only_the_qualitative_evaluation_message(
    pixelmed_results: dict[tuple[str, str], list[str]],
) -> None:
    """The normal SR has the same image-level group as the COVID-19 SR (finding, algorithm,
    probabilities, involvement, source images) but no region groups: pixelmed then checks it
    against TID 1501 and finds nothing but the qualitative evaluation. So the 1.8.1 messages of the
    COVID-19 SR come from the mixing of group templates, not from the group."""
    messages = v.pixelmed_messages(pixelmed_results[("sr", "normal_sr")])
    assert messages == v.explained_by(messages, v.PIXELMED_TID1501_QUALITATIVE_EVALUATION)
    assert len(messages) == 1


def test_pixelmed_sr_validator_passes_the_kos(pixelmed_results: dict[tuple[str, str], list[str]]) -> None:
    lines = pixelmed_results[("sr", "covid_kos")]
    assert "Found KeyObjectSelectionDocument IOD" in lines
    assert "Found Root Template TID_2010 (KeyObjectSelection)" in lines
    assert v.pixelmed_messages(lines) == []


@pytest.mark.parametrize("name", ("covid_seg", "multiframe_seg"))
def test_pixelmed_instance_validator_passes_the_seg_but_for_laterality(
    name: str, pixelmed_results: dict[tuple[str, str], list[str]]
) -> None:
    lines = pixelmed_results[("iod", name)]
    assert "Found Segmentation IOD" in lines
    messages = v.pixelmed_messages(lines)
    assert messages == v.explained_by(messages, v.PIXELMED_GENERAL_SERIES_LATERALITY) and len(messages) == 1, messages


@pytest.mark.parametrize("name", ("covid_sc_000", "covid_kos"))
def test_pixelmed_instance_validator_has_no_rules_for_sc_and_kos(
    name: str, pixelmed_results: dict[tuple[str, str], list[str]]
) -> None:
    assert v.pixelmed_messages(pixelmed_results[("iod", name)]) == ["IOD (SOP Class) unrecognized"]


@pytest.mark.parametrize("name", SR_NAMES)
def test_dsrdump_reads_the_sr_without_encoding_errors(name: str, written: dict[str, Path]) -> None:
    status, out, err = v.dsrdump(written[name])
    assert status == 0, err
    assert err.strip() == "", err
    assert "Comprehensive 3D SR Document" in out
    assert "Imaging Measurement Report" in out
