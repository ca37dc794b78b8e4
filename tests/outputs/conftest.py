"""Fixtures of the output-writer tests: a small CT series on disk (24 slices, 128 x 128), the same
series as one multi-frame Legacy Converted Enhanced CT instance, hand-made results (COVID-19 with
two regions, normal, no decision) and their outputs, built once per session.

Session-scoped outputs are shared: tests must not modify them (build a fresh set to modify).
"""

from __future__ import annotations

import datetime
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset

from dicom_node.outputs import OutputOptions, SourceSeries, build_outputs
from dicom_node.uids import derived_uid
from model.result import SeriesResult
from tests.outputs import synthetic, validators

CREATED = datetime.datetime(2024, 3, 4, 5, 6, 7)


@dataclass
class Case:
    """One source series with one result and its outputs."""

    paths: list[Path]
    hu: np.ndarray
    sources: SourceSeries
    result: SeriesResult
    outputs: dict[str, list[Dataset]]

    def source(self, index: int) -> Dataset:
        return self.sources.datasets[self.result.sop_instance_uids[index]]


def _uids(paths: list[Path]) -> list[str]:
    return [str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths]


@pytest.fixture(scope="session")
def series(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[Path], np.ndarray]:
    return synthetic.write_ct_series(tmp_path_factory.mktemp("ct"), slices=24, size=128)


@pytest.fixture(scope="session")
def sources(series: tuple[list[Path], np.ndarray]) -> SourceSeries:
    paths, hu = series
    return SourceSeries.from_files(paths, hu=hu)


def _case(series: tuple[list[Path], np.ndarray], sources: SourceSeries, result: SeriesResult) -> Case:
    paths, hu = series
    outputs = build_outputs(result, sources, options=OutputOptions(created=CREATED))
    return Case(paths=paths, hu=hu, sources=sources, result=result, outputs=outputs)


@pytest.fixture(scope="session")
def covid(series: tuple[list[Path], np.ndarray], sources: SourceSeries) -> Case:
    paths, hu = series
    return _case(series, sources, synthetic.blob_result(hu, _uids(paths)))


@pytest.fixture(scope="session")
def normal(series: tuple[list[Path], np.ndarray], sources: SourceSeries) -> Case:
    paths, hu = series
    return _case(series, sources, synthetic.normal_result(hu, _uids(paths)))


@pytest.fixture(scope="session")
def no_decision(series: tuple[list[Path], np.ndarray], sources: SourceSeries) -> Case:
    paths, _hu = series
    return _case(series, sources, synthetic.no_decision_result(_uids(paths)))


@pytest.fixture(scope="session")
def multiframe(series: tuple[list[Path], np.ndarray], tmp_path_factory: pytest.TempPathFactory) -> Case:
    """The fixture series converted to one Legacy Converted Enhanced CT instance. Its frames are in
    instance-number order, which runs against the slice order: slice i is frame 24 - i."""
    paths, hu = series
    legacy = [pydicom.dcmread(p) for p in paths]
    enhanced = hd.legacy.LegacyConvertedEnhancedCTImage(
        legacy_datasets=legacy,
        series_instance_uid=derived_uid("fixture", "multiframe", "series"),
        series_number=4,
        sop_instance_uid=derived_uid("fixture", "multiframe", "instance"),
        instance_number=1,
    )
    path = tmp_path_factory.mktemp("multiframe") / "enhanced.dcm"
    enhanced.save_as(path, enforce_file_format=True)
    z = [float(f.PlanePositionSequence[0].ImagePositionPatient[2]) for f in enhanced.PerFrameFunctionalGroupsSequence]
    frame_of_slice = [int(i) + 1 for i in np.argsort(z)]
    sources = SourceSeries.from_files([path], hu=hu, frame_numbers=frame_of_slice)
    result = synthetic.blob_result(hu, [str(enhanced.SOPInstanceUID)] * len(paths))
    outputs = build_outputs(result, sources, options=OutputOptions(created=CREATED))
    return Case(paths=[path], hu=hu, sources=sources, result=result, outputs=outputs)


@pytest.fixture(scope="session")
def written(covid: Case, normal: Case, no_decision: Case, multiframe: Case, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The objects the validators check, as files: name -> path."""
    folder = tmp_path_factory.mktemp("outputs")
    objects: dict[str, Dataset] = {
        "covid_sr": covid.outputs["sr"][0],
        "covid_seg": covid.outputs["seg"][0],
        "covid_kos": covid.outputs["kos"][0],
        "normal_sr": normal.outputs["sr"][0],
        "normal_sc": normal.outputs["sc"][0],
        "no_decision_sr": no_decision.outputs["sr"][0],
        "multiframe_sr": multiframe.outputs["sr"][0],
        "multiframe_seg": multiframe.outputs["seg"][0],
        "multiframe_kos": multiframe.outputs["kos"][0],
        "multiframe_sc": multiframe.outputs["sc"][0],
    }
    for i, sc in enumerate(covid.outputs["sc"]):
        objects[f"covid_sc_{i:03d}"] = sc
    paths = {}
    for name, ds in objects.items():
        paths[name] = folder / f"{name}.dcm"
        ds.save_as(paths[name], enforce_file_format=True)
    return paths


# Which pixelmed validator runs on which object. DicomSRValidator: the SR documents and the KOS
# (an SR-family IOD, TID 2010). DicomInstanceValidator: SEG, SC and KOS, as the brief asks. Each
# run is a JVM that compiles pixelmed's rules (~10 s of CPU), so the multi-frame SR and KOS, whose
# content trees equal the single-frame ones but for Referenced Frame Number, are left to dciodvfy
# and dsrdump.
PIXELMED_RUNS: tuple[tuple[str, str], ...] = (
    ("sr", "covid_sr"),
    ("sr", "normal_sr"),
    ("sr", "no_decision_sr"),
    ("sr", "covid_kos"),
    ("iod", "covid_seg"),
    ("iod", "multiframe_seg"),
    ("iod", "covid_sc_000"),
    ("iod", "covid_kos"),
)


@pytest.fixture(scope="session")
def pixelmed_results(written: dict[str, Path]) -> dict[tuple[str, str], list[str]]:
    """Pixelmed's output per (validator, object), run two at a time (each run is a JVM that
    compiles pixelmed's rules; a few seconds each)."""
    with ThreadPoolExecutor(max_workers=2) as pool:
        futures = {run: pool.submit(validators.pixelmed, run[0], written[run[1]]) for run in PIXELMED_RUNS}
        return {run: future.result() for run, future in futures.items()}
