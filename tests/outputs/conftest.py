"""Fixtures of the output-writer tests: a small phantom chest CT on disk (model.phantoms, 24 slices
of 128 x 128), the same phantom as one multi-frame Enhanced CT instance, hand-made results
(COVID-19 with two regions, normal, no decision) and their outputs, built once per session.

Session-scoped outputs are shared: tests must not modify them (build a fresh set to modify).
"""

from __future__ import annotations

import datetime
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from pydicom.dataset import Dataset

from dicom_node.outputs.build import build_outputs
from dicom_node.outputs.common import OutputOptions, SourceSeries
from model.contract.result import SeriesResult
from model.phantoms.phantom import Phantom
from tests.harness import synthetic
from tests.outputs import validators

CREATED = datetime.datetime(2024, 3, 4, 5, 6, 7)


@dataclass
class Case:
    """One source series with one result and its outputs."""

    series: synthetic.Series
    sources: SourceSeries
    result: SeriesResult
    outputs: dict[str, list[Dataset]]

    @property
    def paths(self) -> list[Path]:
        return self.series.paths

    @property
    def hu(self) -> np.ndarray:
        return self.series.hu

    def source(self, index: int) -> Dataset:
        return self.sources.datasets[self.result.sop_instance_uids[index]]


@pytest.fixture(scope="session")
def phantom() -> Phantom:
    """24 slices of 128 x 128: small, but real anatomy from model.phantoms."""
    return synthetic.make_test_phantom()


@pytest.fixture(scope="session")
def series(phantom: Phantom, tmp_path_factory: pytest.TempPathFactory) -> synthetic.Series:
    return synthetic.write_series(phantom, tmp_path_factory.mktemp("ct"))


@pytest.fixture(scope="session")
def sources(series: synthetic.Series) -> SourceSeries:
    return SourceSeries.from_files(series.paths, hu=series.hu)


def _case(series: synthetic.Series, sources: SourceSeries, result: SeriesResult) -> Case:
    outputs = build_outputs(result, sources, options=OutputOptions(created=CREATED))
    return Case(series=series, sources=sources, result=result, outputs=outputs)


@pytest.fixture(scope="session")
def covid(series: synthetic.Series, sources: SourceSeries) -> Case:
    return _case(series, sources, synthetic.blob_result(series))


@pytest.fixture(scope="session")
def normal(series: synthetic.Series, sources: SourceSeries) -> Case:
    return _case(series, sources, synthetic.normal_result(series))


@pytest.fixture(scope="session")
def indeterminate(series: synthetic.Series, sources: SourceSeries) -> Case:
    return _case(series, sources, synthetic.indeterminate_result(series))


@pytest.fixture(scope="session")
def no_decision(series: synthetic.Series, sources: SourceSeries) -> Case:
    return _case(series, sources, synthetic.no_decision_result(series))


@pytest.fixture(scope="session")
def multiframe(phantom: Phantom, tmp_path_factory: pytest.TempPathFactory) -> Case:
    """The phantom as one Enhanced CT instance whose frames run against the slice order."""
    series = synthetic.write_series(phantom, tmp_path_factory.mktemp("enhanced"), multiframe=True)
    sources = SourceSeries.from_files(series.paths, hu=series.hu, frame_numbers=series.frame_numbers)
    return _case(series, sources, synthetic.blob_result(series))


@pytest.fixture(scope="session")
def written(
    covid: Case,
    normal: Case,
    indeterminate: Case,
    no_decision: Case,
    multiframe: Case,
    tmp_path_factory: pytest.TempPathFactory,
) -> dict[str, Path]:
    """The objects the validators check, as files: name -> path."""
    folder = tmp_path_factory.mktemp("outputs")
    objects: dict[str, Dataset] = {
        "covid_sr": covid.outputs["sr"][0],
        "covid_seg": covid.outputs["seg"][0],
        "covid_kos": covid.outputs["kos"][0],
        "normal_sr": normal.outputs["sr"][0],
        "normal_sc": normal.outputs["sc"][0],
        "no_decision_sr": no_decision.outputs["sr"][0],
        "indeterminate_sr": indeterminate.outputs["sr"][0],
        "multiframe_sr": multiframe.outputs["sr"][0],
        "multiframe_seg": multiframe.outputs["seg"][0],
        "multiframe_kos": multiframe.outputs["kos"][0],
        "multiframe_sc": multiframe.outputs["sc"][0],
        "covid_pm": covid.outputs["pm"][0],
        "multiframe_pm": multiframe.outputs["pm"][0],
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
    ("sr", "indeterminate_sr"),
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
