"""The entry point ``build_outputs``: which kinds come back and when a kind is empty, the new
series in the source study, deterministic UIDs and bytes, the inputs it refuses, and the source
series read through model.inference.io (the worker's path).

Not covered here: the content of each kind (test_sr/sc/seg/kos.py), validators (test_validators.py).
"""

from __future__ import annotations

import dataclasses
import datetime
import io

import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.uid import JPEGBaseline8Bit

from dicom_node.outputs.build import build_outputs
from dicom_node.outputs.common import OutputOptions, SourceSeries
from dicom_node.outputs.kinds import OUTPUT_KINDS
from model.contract.result import ModelInfo
from model.contract.uids import check_uid, derived_uid
from model.inference.io import load_series
from tests.outputs.conftest import CREATED, Case

SERIES_NUMBERS = {"sr": 9001, "sc": 9002, "seg": 9003, "kos": 9004, "pm": 9005}


def _bytes(ds: Dataset) -> bytes:
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def _all(outputs: dict[str, list[Dataset]]) -> list[Dataset]:
    return [ds for kind in OUTPUT_KINDS for ds in outputs.get(kind, [])]


def test_every_kind_by_default(covid: Case) -> None:
    assert list(covid.outputs) == list(OUTPUT_KINDS)
    assert len(covid.outputs["sr"]) == 1
    assert len(covid.outputs["sc"]) == sum(covid.result.lung_slices)
    assert len(covid.outputs["seg"]) == 1
    assert len(covid.outputs["kos"]) == 1
    assert len(covid.outputs["pm"]) == 1


def test_only_the_requested_kinds(covid: Case) -> None:
    out = build_outputs(covid.result, covid.sources, kinds=["kos", "sr"], options=OutputOptions(created=CREATED))
    assert list(out) == ["kos", "sr"]
    with pytest.raises(ValueError, match="kinds: unknown output kind"):
        build_outputs(covid.result, covid.sources, kinds=["sr", "pdf"])


def test_empty_kinds_when_there_is_nothing_to_say(normal: Case, no_decision: Case) -> None:
    # Normal: no regions, no key slices -> no SEG, no KOS; SC of every lung slice; an SR; the map.
    assert [len(normal.outputs[k]) for k in OUTPUT_KINDS] == [1, sum(normal.result.lung_slices), 0, 0, 1]
    # No decision: no heatmap -> only the SR.
    assert [len(no_decision.outputs[k]) for k in OUTPUT_KINDS] == [1, 0, 0, 0, 0]


def test_new_series_in_the_source_study(covid: Case) -> None:
    source = covid.source(0)
    series_uids = set()
    for kind in OUTPUT_KINDS:
        for ds in covid.outputs[kind]:
            assert ds.StudyInstanceUID == source.StudyInstanceUID
            assert ds.PatientID == source.PatientID and ds.PatientName == source.PatientName
            assert ds.AccessionNumber == source.AccessionNumber
            assert ds.SeriesInstanceUID != source.SeriesInstanceUID
            assert ds.SeriesNumber == SERIES_NUMBERS[kind]
            assert ds.SeriesDescription.startswith("AI:") and "NOT FOR DIAGNOSTIC USE" in ds.SeriesDescription
            assert ds.Manufacturer == "COVID-CT AI node"
            series_uids.add((kind, ds.SeriesInstanceUID))
    assert len({uid for _, uid in series_uids}) == len(OUTPUT_KINDS)  # one series per kind


def test_building_twice_gives_identical_uids_and_bytes(covid: Case) -> None:
    again = build_outputs(covid.result, covid.sources, options=OutputOptions(created=CREATED))
    first, second = _all(covid.outputs), _all(again)
    assert [ds.SOPInstanceUID for ds in first] == [ds.SOPInstanceUID for ds in second]
    assert all(_bytes(a) == _bytes(b) for a, b in zip(first, second))


_TIME_ATTRIBUTES = (
    "InstanceCreationDate",
    "InstanceCreationTime",
    "ContentDate",
    "ContentTime",
    "DateOfSecondaryCapture",
    "TimeOfSecondaryCapture",
)


def _without_times(ds: Dataset) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(_bytes(ds)))
    for keyword in _TIME_ATTRIBUTES:
        if keyword in ds:
            delattr(ds, keyword)
    for item in ds.get("ContributingEquipmentSequence", []):
        if "ContributionDateTime" in item:
            del item.ContributionDateTime
    return _bytes(ds)


def test_another_creation_time_changes_only_the_date_and_time_attributes(covid: Case) -> None:
    later = build_outputs(
        covid.result, covid.sources, options=OutputOptions(created=CREATED + datetime.timedelta(days=1, seconds=5))
    )
    first, second = _all(covid.outputs), _all(later)
    assert _bytes(first[0]) != _bytes(second[0])
    assert all(_without_times(a) == _without_times(b) for a, b in zip(first, second))
    assert later["sr"][0].ContentDate == "20240305"


def test_without_a_creation_time_the_build_uses_now(covid: Case) -> None:
    before = datetime.datetime.now().replace(microsecond=0)
    sr = build_outputs(covid.result, covid.sources, kinds=["sr"])["sr"][0]
    after = datetime.datetime.now()
    stamped = datetime.datetime.strptime(sr.InstanceCreationDate + sr.InstanceCreationTime[:6], "%Y%m%d%H%M%S")
    assert before <= stamped <= after
    assert sr.ContentDate == sr.InstanceCreationDate and sr.ContentTime == sr.InstanceCreationTime


def test_uids_derive_from_source_series_model_version_and_kind(covid: Case) -> None:
    series_uid = covid.source(0).SeriesInstanceUID
    version = covid.result.model.version
    sr = covid.outputs["sr"][0]
    assert sr.SeriesInstanceUID == derived_uid(series_uid, version, "sr", "series")
    assert sr.SOPInstanceUID == derived_uid(series_uid, version, "sr", "instance", "1")
    for ds in _all(covid.outputs):
        assert check_uid(ds.SOPInstanceUID) == (True, "")
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID
    uids = [ds.SOPInstanceUID for ds in _all(covid.outputs)]
    assert len(set(uids)) == len(uids)
    # Another model version: every UID changes (the new results do not replace the old ones).
    retrained = dataclasses.replace(covid.result, model=ModelInfo(name=covid.result.model.name, version="2.0.0"))
    other = build_outputs(retrained, covid.sources, options=OutputOptions(created=CREATED))
    assert not set(uids) & {ds.SOPInstanceUID for ds in _all(other)}


def test_refuses_a_result_that_does_not_match_the_sources(covid: Case, sources: SourceSeries) -> None:
    unknown = dataclasses.replace(covid.result, sop_instance_uids=["1.2.3.4"] + covid.result.sop_instance_uids[1:])
    with pytest.raises(ValueError, match="slice 0: source instance 1.2.3.4 is not among the source datasets"):
        build_outputs(unknown, sources)
    with pytest.raises(ValueError, match="sources.hu has 3 slices"):
        build_outputs(covid.result, dataclasses.replace(sources, hu=sources.hu[:3] if sources.hu is not None else None))
    with pytest.raises(ValueError, match="decision"):
        build_outputs(dataclasses.replace(covid.result, decision="maybe"), sources)
    with pytest.raises(ValueError, match="sources.hu is needed"):
        build_outputs(covid.result, dataclasses.replace(sources, hu=None), kinds=["sc"])


def test_options_are_checked_when_made() -> None:
    with pytest.raises(ValueError, match="sc_slices"):
        OutputOptions(sc_slices="all")
    with pytest.raises(ValueError, match=r"series_numbers\['sr'\]"):
        OutputOptions(series_numbers={"sr": 0})
    with pytest.raises(ValueError, match="not an output kind"):
        OutputOptions(series_numbers={"pmap": 9005})
    with pytest.raises(ValueError, match="sc_transfer_syntax_uid"):
        OutputOptions(sc_transfer_syntax_uid=str(JPEGBaseline8Bit))
    with pytest.raises(ValueError, match="overlay_threshold"):
        OutputOptions(overlay_threshold=1.5)


def test_sources_from_model_io_volume(covid: Case) -> None:
    """The worker's path: model.inference.io.load_series, then SourceSeries.from_volume."""
    volume = load_series(covid.paths[0].parent)
    assert volume.sop_instance_uids == covid.result.sop_instance_uids
    sources = SourceSeries.from_volume(volume)
    out = build_outputs(covid.result, sources, kinds=["sr", "kos"], options=OutputOptions(created=CREATED))
    assert _bytes(out["sr"][0]) == _bytes(covid.outputs["sr"][0])
    assert _bytes(out["kos"][0]) == _bytes(covid.outputs["kos"][0])
    # Metadata only: the datasets carry no pixel data.
    assert all("PixelData" not in ds for ds in sources.datasets.values())


def test_all_results_together_are_at_most_a_quarter_of_the_ct(covid: Case) -> None:
    """Objects sized for what they say, with the node's default settings (SC of the key slices):
    the SR, key-slice SC, SEG, KOS and Parametric Map together as written, against the CT's files.
    The float map alone would be twice the CT; deflated it is a few per cent."""
    out = build_outputs(
        covid.result, covid.sources, options=dataclasses.replace(OutputOptions(created=CREATED), sc_slices="key")
    )
    sizes = {kind: sum(len(_bytes(ds)) for ds in objects) for kind, objects in out.items()}
    ct = sum(path.stat().st_size for path in covid.paths)
    assert sum(sizes.values()) <= 0.25 * ct, {kind: f"{100 * size / ct:.1f} %" for kind, size in sizes.items()}
    assert sizes["pm"] <= 0.05 * ct and sizes["seg"] <= 0.05 * ct, sizes
