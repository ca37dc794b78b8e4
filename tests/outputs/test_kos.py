"""The Key Object Selection document of the key slices.

Covers: title (DCM 113000 "Of Interest"), the description saying why these slices, the device
observer, one IMAGE reference per key slice, strongest first, without a purpose-of-reference
concept name (TID 2010), evidence, and no KOS without key slices.
Not covered: validators (test_validators.py), multi-frame sources (test_multiframe.py).
"""

from __future__ import annotations

import dataclasses

from pydicom.uid import KeyObjectSelectionDocumentStorage

from dicom_node.outputs.build import build_outputs
from dicom_node.outputs.common import OutputOptions
from model.contract.uids import derived_uid
from tests.outputs.conftest import CREATED, Case


def test_title_description_and_observer(covid: Case) -> None:
    (kos,) = covid.outputs["kos"]
    assert kos.SOPClassUID == KeyObjectSelectionDocumentStorage
    assert kos.SeriesNumber == 9004
    title = kos.ConceptNameCodeSequence[0]
    assert (title.CodeValue, title.CodingSchemeDesignator, title.CodeMeaning) == ("113000", "DCM", "Of Interest")
    texts = [
        i.TextValue
        for i in kos.ContentSequence
        if i.ValueType == "TEXT" and i.ConceptNameCodeSequence[0].CodeValue == "113012"
    ]
    assert len(texts) == 1
    assert "strongest suspected-infection findings" in texts[0] and "COVID-19" in texts[0]
    assert "NOT FOR CLINICAL USE" in texts[0]
    observer = [
        i for i in kos.ContentSequence if i.ValueType == "UIDREF" and i.ConceptNameCodeSequence[0].CodeValue == "121012"
    ]
    model = covid.result.model
    assert [i.UID for i in observer] == [derived_uid("device", model.name, model.version, model.weights_sha256)]


def test_key_slices_strongest_first(covid: Case) -> None:
    (kos,) = covid.outputs["kos"]
    images = [i for i in kos.ContentSequence if i.ValueType == "IMAGE"]
    assert [i.ReferencedSOPSequence[0].ReferencedSOPInstanceUID for i in images] == [
        covid.result.sop_instance_uids[k] for k in covid.result.key_slices
    ]
    assert all("ConceptNameCodeSequence" not in i for i in images)
    assert all("ReferencedFrameNumber" not in i.ReferencedSOPSequence[0] for i in images)
    evidence = kos.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.SeriesInstanceUID == covid.source(0).SeriesInstanceUID
    assert {i.ReferencedSOPInstanceUID for i in evidence.ReferencedSOPSequence} == {
        covid.result.sop_instance_uids[k] for k in covid.result.key_slices
    }


def test_repeated_key_slices_are_listed_once(covid: Case) -> None:
    first = covid.result.key_slices[0]
    repeated = dataclasses.replace(covid.result, key_slices=[first, first, *covid.result.key_slices[1:]])
    (kos,) = build_outputs(repeated, covid.sources, kinds=["kos"], options=OutputOptions(created=CREATED))["kos"]
    assert len([i for i in kos.ContentSequence if i.ValueType == "IMAGE"]) == len(covid.result.key_slices)


def test_no_kos_without_key_slices(normal: Case) -> None:
    assert normal.outputs["kos"] == []
