"""What a job leaves on disk, under ``settings.results_dir / <job id>/``::

    result.json                    SeriesResult.to_json() (decision, probabilities, regions...)
    maps.npz                       heatmap (float16), region labels (uint16), lung mask (bool);
                                   compressed; absent for a no_decision result
    dicom/<kind>/<SOPInstanceUID>.dcm   the objects sent to PACS (kind: sr, sc, seg, kos, pm)

Exports and re-exports send these files, so every destination and every attempt gets the same
bytes. ``Job.outputs`` lists them with paths relative to the results dir. A new attempt writes a
complete new ``dicom/`` beside the old one and swaps it in, so an attempt that dies half-way never
leaves a mix of two attempts' objects; files are fsync'ed before the job is marked done.
"""

from __future__ import annotations

import json
import os
import shutil
import zipfile
from pathlib import Path
from typing import Any, Iterable

import numpy as np
from pydicom.dataset import Dataset

from dicom_node.storage.files import fsync_dir, fsync_file, write_file_atomic
from dicom_node.storage.part10 import DEFLATE_LEVEL, write_file
from model.contract.result import SeriesResult
from model.contract.uids import clean_uid

RESULT_FILE = "result.json"
MAPS_FILE = "maps.npz"
DICOM_DIR = "dicom"


class JobArtefacts:
    """The result folder of one job."""

    def __init__(self, results_dir: Path, job_id: int) -> None:
        self.results_dir = Path(results_dir)
        self.job_id = int(job_id)
        self.root = self.results_dir / str(self.job_id)

    def absolute(self, relative: str | Path) -> Path:
        """A path from ``Job.outputs`` (relative to the results dir) made absolute."""
        return self.results_dir / relative

    def write_result(self, result: SeriesResult) -> None:
        """result.json and, when the result has maps, maps.npz."""
        self.root.mkdir(parents=True, exist_ok=True)
        write_file_atomic(self.root / RESULT_FILE, json.dumps(result.to_json(), indent=2).encode())
        maps = self.root / MAPS_FILE
        if result.heatmap is None:
            maps.unlink(missing_ok=True)
            return
        arrays: dict[str, np.ndarray] = {"heatmap": np.asarray(result.heatmap, dtype=np.float16)}
        if result.region_labels is not None:
            arrays["region_labels"] = np.asarray(result.region_labels, dtype=np.uint16)
        if result.lung_mask is not None:
            arrays["lung_mask"] = np.asarray(result.lung_mask, dtype=bool)
        tmp = maps.with_suffix(".tmp.npz")
        # np.savez_compressed's file (np.load reads it), deflated at the results' level, not zlib's default
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED, compresslevel=DEFLATE_LEVEL, allowZip64=True) as zf:
            for name, array in arrays.items():
                with zf.open(f"{name}.npy", "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, array, allow_pickle=False)
        fsync_file(tmp)
        os.replace(tmp, maps)

    def write_objects(self, objects: dict[str, list[Dataset]], attempt: int) -> list[dict[str, Any]]:
        """Write every object as a Part 10 file and swap the set in; return the Job.outputs rows."""
        self.root.mkdir(parents=True, exist_ok=True)
        final = self.root / DICOM_DIR
        staging = self.root / f"{DICOM_DIR}.attempt-{attempt}"
        for stale in self.root.glob(f"{DICOM_DIR}.*"):
            shutil.rmtree(stale, ignore_errors=True)
        rows = []
        for kind, datasets in objects.items():
            folder = staging / kind
            folder.mkdir(parents=True, exist_ok=True)
            for ds in datasets:
                uid = clean_uid(ds.SOPInstanceUID)
                path = folder / f"{uid}.dcm"
                write_file(path, ds)  # a deflated map streams through the compressor
                fsync_file(path)
                rows.append(
                    {
                        "kind": kind,
                        "sop_class_uid": str(ds.SOPClassUID),
                        "sop_instance_uid": uid,
                        "series_uid": str(ds.SeriesInstanceUID),
                        "path": f"{self.job_id}/{DICOM_DIR}/{kind}/{uid}.dcm",
                    }
                )
            fsync_dir(folder)
        staging.mkdir(parents=True, exist_ok=True)
        if final.exists():
            old = self.root / f"{DICOM_DIR}.old"
            os.replace(final, old)
            os.replace(staging, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, final)
        fsync_dir(self.root)
        return rows

    def files(self, rows: Iterable[dict[str, Any]]) -> list[Path]:
        return [self.absolute(r["path"]) for r in rows]
