"""The node as the end-to-end tests run it: ``dicom-node serve``, ``worker`` or ``up`` as
subprocesses (tests.harness.peers.NodeProcess), configured through the real command line, read back
through its database; and the checks of what arrives in Orthanc.

``TEST_WEIGHTS_DIR`` (optional) points the worker at another weights folder than the shipped
model/weights (for trying new weights); by default the shipped ones are used.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any, Callable

import numpy as np
import psutil
import pydicom
from pydicom.dataset import Dataset
from pydicom.uid import (
    Comprehensive3DSRStorage,
    KeyObjectSelectionDocumentStorage,
    ParametricMapStorage,
    SecondaryCaptureImageStorage,
    SegmentationStorage,
)

from dicom_node.db import Database
from dicom_node.db.models import Job
from dicom_node.jobs.queries import job_rows
from dicom_node.outputs.codes import CLASS_FINDINGS, PRESENT
from dicom_node.outputs.kinds import OUTPUT_KINDS
from dicom_node.settings import load_settings
from model.inference.io import load_series
from model.phantoms.writer import read_phantom_truth
from tests.harness.jobs import RunningJob, hold_running_job
from tests.harness.peers import NodeProcess, Orthanc, cli, free_port, node_env, storescu, wait_until
from tests.outputs import validators as v

# Settings that keep the tests short on a 2-core machine: one listener process, fast polling,
# CAM localisation (integrated gradients cost minutes on a CPU), a short heartbeat and backoff.
FAST = {
    "listener__processes": 1,
    "completion__poll_seconds": 0.2,
    "worker__localisation": "cam",
    "worker__heartbeat_seconds": 1,
    "worker__lost_after_seconds": 600,
    "export__backoff_base_seconds": 1,
    "export__backoff_cap_seconds": 2,
    "export__timeout_seconds": 10,
}
SOP_CLASS_KIND = {
    str(Comprehensive3DSRStorage): "sr", str(SecondaryCaptureImageStorage): "sc", str(SegmentationStorage): "seg",
    str(KeyObjectSelectionDocumentStorage): "kos", str(ParametricMapStorage): "pm",
}  # fmt: skip
SR_KNOWN = (v.PIXELMED_ONE_TEMPLATE_PER_CONTAINER, v.PIXELMED_TID1501_QUALITATIVE_EVALUATION)
DCIODVFY_KNOWN = (v.DCIODVFY_CONTRIBUTING_DEVICE_UID,)


class Node:
    """One node: its data dir, environment, local AE port and the processes it runs."""

    def __init__(
        self, tmp: Path, *, database_url: str | None = None, broker_url: str | None = None, **settings: Any
    ) -> None:
        self.data_dir = tmp / "node-data"
        self.data_dir.mkdir(parents=True, exist_ok=True)
        values = dict(FAST, database_url=database_url, broker_url=broker_url, admin_port=free_port())
        values.update(settings)
        weights = os.environ.get("TEST_WEIGHTS_DIR")
        if weights:
            values["worker__weights_dir"] = weights
        self.env = node_env(self.data_dir, **values)
        self.database_url = database_url or load_settings(data_dir=self.data_dir).effective_database_url
        self.port = free_port()
        self.title = "COVIDNODE"
        self.processes: list[NodeProcess] = []
        self._db: Database | None = None

    # -- configuration through the command line ----------------------------------------------

    def configure(self, destinations: list[tuple[str, int]], *, quiet_seconds: float = 1.0) -> None:
        """Destinations (title, port on 127.0.0.1) and the local AE that sends to all of them."""
        cli(self.env, "db", "upgrade")
        for title, port in destinations:
            cli(self.env, "ae", "add-destination", title, "--host", "127.0.0.1", "--port", str(port))
        args = [
            "ae",
            "add-local",
            self.title,
            "--port",
            str(self.port),
            "--quiet-seconds",
            str(quiet_seconds),
            "--allow-any-source",
        ]
        if destinations:
            args += ["--send-results-to", ",".join(t for t, _ in destinations)]
        cli(self.env, *args)

    # -- processes ---------------------------------------------------------------------------

    def start(self, *command: str) -> NodeProcess:
        proc = NodeProcess(self.env, command).start()
        self.processes.append(proc)
        return proc

    def kill_tree(self, proc: NodeProcess) -> None:
        """SIGKILL a process and every process under it (worker children included)."""
        assert proc.proc is not None
        root = psutil.Process(proc.proc.pid)
        victims = [root, *root.children(recursive=True)]
        for p in victims:
            try:
                p.send_signal(signal.SIGKILL)
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(victims, timeout=10)
        proc.stop(signal.SIGKILL)

    def kill_mid_job(self, proc: NodeProcess, series_uids: list[str], timeout: float) -> RunningJob:
        """Kill ``proc``'s tree (kill_tree) while a job of one of ``series_uids`` runs, with the
        job's row locked so that it can not end first (tests.harness.jobs); returns that job."""
        try:
            with hold_running_job(self.db, series_uids, timeout) as job:
                self.kill_tree(proc)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{self.logs()}") from None
        return job

    def stop(self) -> None:
        for proc in reversed(self.processes):
            proc.stop(signal.SIGTERM, timeout=40)
        if self._db is not None:
            self._db.dispose()

    def logs(self) -> str:
        return "\n".join(f"--- {p.command} ---\n{p.output()[-4000:]}" for p in self.processes)

    # -- sending and reading back ----------------------------------------------------------------

    def send(self, folder: Path) -> None:
        proc = storescu(folder, self.port, called=self.title)
        assert proc.returncode == 0, f"storescu failed: {proc.stdout}\n{proc.stderr}\n{self.logs()}"

    @property
    def db(self) -> Database:
        if self._db is None:
            self._db = Database(self.database_url)
        return self._db

    def jobs(self) -> list[dict[str, Any]]:
        return job_rows(self.db)

    def wait(self, predicate: Callable[[list[dict[str, Any]]], Any], timeout: float, what: str) -> Any:
        """Wait until ``predicate(jobs)`` is truthy; on time-out say what the jobs and logs were."""
        try:
            return wait_until(lambda: predicate(self.jobs()), timeout, what, interval=0.25)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\njobs: {self.jobs()}\n{self.logs()}") from None


def job_of(jobs: list[dict[str, Any]], series_uid: str) -> dict[str, Any] | None:
    for job in jobs:
        if job["series_uid"] == series_uid:
            return job
    return None


def done_and_exported(series_uid: str) -> Callable[[list[dict[str, Any]]], dict[str, Any] | None]:
    def check(jobs: list[dict[str, Any]]) -> dict[str, Any] | None:
        job = job_of(jobs, series_uid)
        if job and job["status"] == "failed":
            raise AssertionError(f"job failed: {job['reason']}")
        if job and job["status"] == "done" and job["exports"] and all(e["status"] == "done" for e in job["exports"]):
            return job
        return None

    return check


def series_uids(folder: Path) -> tuple[str, str]:
    """(StudyInstanceUID, SeriesInstanceUID) of a series folder."""
    first = next(p for p in sorted(folder.iterdir()) if p.suffix == ".dcm")
    ds = pydicom.dcmread(first, stop_before_pixels=True)
    return str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID)


# -- what arrived in PACS ----------------------------------------------------------------------


def values_in_sequences(ds: Dataset, keyword: str) -> set[str]:
    """Every value of ``keyword`` inside the object's sequences (not at its top level)."""
    found: set[str] = set()

    def walk(items: Any) -> None:
        for item in items:
            for elem in item:
                if elem.VR == "SQ":
                    walk(elem.value)
                elif elem.keyword == keyword:
                    found.add(str(elem.value))

    for elem in ds:
        if elem.VR == "SQ":
            walk(elem.value)
    return found


def referenced_series(ds: Dataset) -> set[str]:
    """Every Series Instance UID inside the object's sequences (its references)."""
    return values_in_sequences(ds, "SeriesInstanceUID")


def results_in(orthanc: Orthanc, folder: Path) -> dict[str, list[Path]]:
    """Every instance Orthanc holds, read back over REST into ``folder``, by output kind."""
    folder.mkdir(parents=True, exist_ok=True)
    out: dict[str, list[Path]] = {}
    for instance_id in orthanc.instances():
        tags = orthanc.instance_tags(instance_id)
        kind = SOP_CLASS_KIND.get(str(tags.get("SOPClassUID")), str(tags.get("SOPClassUID")))
        path = folder / f"{kind}-{tags['SOPInstanceUID']}.dcm"
        path.write_bytes(orthanc.instance_file(instance_id))
        out.setdefault(kind, []).append(path)
    return out


def check_results(
    orthanc: Orthanc,
    folder: Path,
    job: dict[str, Any],
    study_uid: str,
    series_uid: str,
    db: Database,
    *,
    validate: bool = True,
) -> dict[str, list[Path]]:
    """The job's objects are in Orthanc exactly once, every kind, in the source study,
    referring to the source series; dciodvfy and pixelmed's SR validator find no error."""
    arrived = results_in(orthanc, folder)
    assert sorted(arrived) == sorted(OUTPUT_KINDS), f"kinds in PACS: {sorted(arrived)}"
    with db.session() as s:
        row = s.get(Job, job["id"])
        assert row is not None
        outputs = row.outputs
    expected = sorted(o["sop_instance_uid"] for o in outputs)
    in_pacs = sorted(orthanc.instance_tags(i)["SOPInstanceUID"] for i in orthanc.instances())
    assert in_pacs == expected, "PACS should hold exactly the job's objects, each once"
    assert orthanc.get("/statistics")["CountInstances"] == len(expected)
    for kind, paths in arrived.items():
        for path in paths:
            ds = pydicom.dcmread(path)
            assert ds.StudyInstanceUID == study_uid, (kind, "not in the source study")
            assert ds.SeriesInstanceUID != series_uid
            assert series_uid in referenced_series(ds), (kind, "does not refer to the source series")
            if not validate:
                continue
            messages = v.dciodvfy(path)
            errors = [m for m in v.unexplained(messages, DCIODVFY_KNOWN) if m.startswith("Error")]
            assert errors == [], (kind, path.name, errors)
            if kind == "sr":
                all_messages = v.pixelmed_messages(v.pixelmed("sr", path))
                sr_messages = v.unexplained(all_messages, SR_KNOWN)
                assert [m for m in sr_messages if m.startswith("Error")] == [], sr_messages
                assert v.misapplied_templates(path, all_messages) == []
    return arrived


def check_finding(arrived: dict[str, list[Path]], source: Path, kind: str) -> None:
    """What the radiologist reads matches the phantom's disease and lesions: the SR names the
    finding ``kind`` as present, the SEG overlaps the phantom's lesion mask, and the KOS points at
    slices that hold lesion."""
    truth = read_phantom_truth(source)
    index = {uid: z for z, uid in enumerate(load_series(source).sop_instance_uids)}
    sr = pydicom.dcmread(arrived["sr"][0])
    found = values_in_sequences(sr, "CodeValue")
    assert CLASS_FINDINGS[kind].value in found and PRESENT.value in found, f"the SR does not say {kind} present"
    seg = pydicom.dcmread(arrived["seg"][0])
    frames = seg.pixel_array.reshape(-1, seg.Rows, seg.Columns).astype(bool)
    overlap = 0
    for frame, item in zip(frames, seg.PerFrameFunctionalGroupsSequence):
        uid = str(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
        overlap += int(np.count_nonzero(frame & truth.lesion_mask[index[uid]]))
    assert overlap > 0, "the SEG's regions miss the phantom's lesions"
    kos = pydicom.dcmread(arrived["kos"][0])
    keys = [
        str(ref.ReferencedSOPInstanceUID)
        for item in kos.CurrentRequestedProcedureEvidenceSequence
        for s in item.ReferencedSeriesSequence
        for ref in s.ReferencedSOPSequence
    ]
    assert any(truth.lesion_mask[index[uid]].any() for uid in keys if uid in index), "no key image holds lesion"
