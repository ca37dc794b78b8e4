"""docs/conformance.md (the DICOM Conformance Statement) against the code, so the two cannot drift:
each table marked "*(checked: ...)*" is read and compared with what the code accepts and sends.

- SCP SOP classes and transfer syntaxes: the listener's (Verification, the default storage SOP
  classes of dicom_node.listener.scp, TRANSFER_SYNTAXES);
- association limits: the listener's maximum associations, PDU size and timeouts, the
  implementation class UID and version name written in stored files;
- SCP statuses: every status the listener's code answers with;
- STOW-RS service (DICOMweb input): its limits (dicomweb.max_request_bytes, the listener's
  max_dataset_bytes), every HTTP status dicom_node.admin.dicomweb and dicom_node.dicomweb.stow
  answer, every failure reason an instance can get (the statuses of dicom_node.dicomweb and of
  the receiver's checks in dicom_node.listener.dataset and scp);
- Query/Retrieve SCU SOP classes: those the backfill's C-FIND, C-MOVE and C-GET use
  (dicom_node.sending.retrieve);
- SCU SOP classes and transfer syntaxes, and the IODs created: the objects every output kind of the
  registry (dicom_node.outputs.kinds) builds for a synthetic result with a finding, their SOP
  classes, transfer syntaxes and SR templates; a new kind without its row fails here.

Not covered: the prose (policies described in words).
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydicom.dataset import Dataset
from pydicom.uid import RLELossless
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # pynetdicom makes its SOP class names at import time

from dicom_node.dicom_answers import Status
from dicom_node.dicomweb.stow import Outcome, http_status
from dicom_node.listener import scp as listener_scp
from dicom_node.outputs.build import build_outputs
from dicom_node.outputs.common import SourceSeries
from dicom_node.outputs.kinds import KINDS, OUTPUT_KINDS
from dicom_node.sending import retrieve
from dicom_node.sending.scu import UNCOMPRESSED
from dicom_node.settings import DicomWebSettings, ListenerSettings
from dicom_node.storage.files import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from tests.harness import synthetic

ROOT = Path(__file__).resolve().parents[1]
STATEMENT = ROOT / "docs" / "conformance.md"
UID = re.compile(r"\b1\.2\.840\.10008(?:\.\d+)+\b")


def table(marker: str) -> list[list[str]]:
    """The rows (cells) of the first table after the line holding ``*(checked: <marker>``."""
    lines = STATEMENT.read_text().splitlines()
    start = next((i for i, line in enumerate(lines) if f"*(checked: {marker}" in line), None)
    assert start is not None, f"docs/conformance.md has no table marked (checked: {marker})"
    rows: list[list[str]] = []
    for line in lines[start + 1 :]:
        if line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not all(set(c) <= set("-: ") for c in cells):
                rows.append(cells)
        elif rows:
            break
    return rows[1:]  # without the header


def uids(rows: list[list[str]]) -> list[str]:
    return [m for row in rows for m in UID.findall(" ".join(row))]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[Dataset]]:
    """Every kind of the registry, built for a small synthetic series with a finding."""
    series = synthetic.write_series(synthetic.make_test_phantom(), tmp_path_factory.mktemp("ct"))
    sources = SourceSeries.from_files(series.paths, hu=series.hu)
    outputs = build_outputs(synthetic.blob_result(series), sources, kinds=OUTPUT_KINDS)
    empty = [k for k, objects in outputs.items() if not objects]
    assert not empty, f"kinds that built nothing for a result with a finding: {empty}"
    return outputs


def test_scp_sop_classes_and_transfer_syntaxes_are_the_listeners() -> None:
    assert sorted(uids(table("SCP SOP classes"))) == sorted([Verification, *listener_scp.accepted_sop_classes([])])
    assert uids(table("SCP transfer syntaxes")) == list(listener_scp.TRANSFER_SYNTAXES)


def test_association_limits_are_the_listeners() -> None:
    rows = {row[0]: row[1] for row in table("association limits")}
    servers = (ROOT / "dicom_node" / "listener" / "servers.py").read_text()
    assert "ae.acse_timeout = settings.association_timeout_seconds" in servers
    defaults = ListenerSettings()
    assert rows["simultaneous associations"].startswith(
        f"{defaults.max_associations} negotiated associations per local AE"
    )
    assert rows["connections per remote address"].startswith(f"{defaults.max_connections_per_address} per local AE")
    assert f"{defaults.max_connections} in all" in rows["connections per remote address"]
    assert rows["ACSE timeout"].startswith(f"{defaults.association_timeout_seconds:g} s")
    assert rows["maximum PDU size received"].startswith(f"{defaults.max_pdu_bytes} bytes")
    assert rows["DIMSE and network timeout"].startswith(f"{defaults.network_timeout_seconds:g} s")
    assert rows["Implementation Class UID"] == IMPLEMENTATION_CLASS_UID
    assert rows["Implementation Version Name"] == IMPLEMENTATION_VERSION_NAME


def test_scp_statuses_are_those_the_listener_answers() -> None:
    used = set()
    for module in sorted((ROOT / "dicom_node" / "listener").glob("*.py")):
        used |= {int(Status[name]) for name in re.findall(r"\bStatus\.([A-Z_]+)\b", module.read_text())}
    documented = {int(row[1], 16) for row in table("SCP statuses")}
    assert documented == used, f"documented {sorted(map(hex, documented))}, answered {sorted(map(hex, used))}"


def _statuses(*paths: Path) -> set[int]:
    return {int(Status[name]) for path in paths for name in re.findall(r"\bStatus\.([A-Z_]+)\b", path.read_text())}


def test_stow_rs_limits_statuses_and_failure_reasons_are_the_services() -> None:
    limits = {row[0]: row[1] for row in table("STOW-RS limits")}
    assert limits["request body"].startswith(f"{DicomWebSettings().max_request_bytes} bytes")
    assert "listener.max_dataset_bytes" in limits["one instance"]

    code = "\n".join(
        (ROOT / "dicom_node" / name).read_text() for name in ("admin/dicomweb.py", "dicomweb/stow.py", "admin/app.py")
    )
    answered = {int(n) for n in re.findall(r"(?:RequestRefused|refuse)\(\s*(?:request,\s*)?(\d{3})\b", code)}
    answered |= {http_status(outcomes) for outcomes in ([Outcome("", "", 0)], [Outcome("", "", 0xC000)])}
    answered.add(http_status([Outcome("", "", 0), Outcome("", "", 0xC000)]))
    documented = {int(row[0].split()[0]) for row in table("STOW-RS HTTP statuses")}
    assert documented == answered, f"documented {sorted(documented)}, answered {sorted(answered)}"

    reasons = _statuses(*(ROOT / "dicom_node" / "dicomweb").glob("*.py"))
    reasons |= _statuses(ROOT / "dicom_node" / "listener" / "dataset.py", ROOT / "dicom_node" / "listener" / "scp.py")
    reasons -= {int(Status.SUCCESS)}
    documented = {int(row[1], 16) for row in table("STOW-RS failure reasons")}
    assert documented == reasons, f"documented {sorted(map(hex, documented))}, answered {sorted(map(hex, reasons))}"


def test_scu_sop_classes_and_syntaxes_are_what_the_outputs_are(built: dict[str, list[Dataset]]) -> None:
    sent = {str(ds.SOPClassUID) for objects in built.values() for ds in objects}
    assert sorted(uids(table("SCU SOP classes"))) == sorted({Verification, *sent})
    proposed = uids(table("SCU transfer syntaxes"))
    assert proposed == list(UNCOMPRESSED)
    written = {str(ds.file_meta.TransferSyntaxUID) for objects in built.values() for ds in objects}
    documented = set(uids(table("SCU object syntaxes")))
    assert written <= documented, f"objects written in {written - documented}, which the statement does not list"
    assert RLELossless in documented  # OutputOptions.sc_transfer_syntax_uid may ask for it


def test_every_output_kind_has_its_iod_row(built: dict[str, list[Dataset]]) -> None:
    rows = {row[0].strip("`"): row for row in table("one row per output kind")}
    assert sorted(rows) == sorted(KINDS), (
        "docs/conformance.md 8.1 must list exactly the kinds of dicom_node/outputs/kinds.py"
    )
    for kind, objects in built.items():
        row = rows[kind]
        classes = {str(ds.SOPClassUID) for ds in objects}
        assert set(UID.findall(row[1])) == classes, (kind, row[1], classes)
        assert {str(ds.Modality) for ds in objects} == {row[2]}, (kind, row[2])
        templates = {str(item.TemplateIdentifier) for ds in objects for item in ds.get("ContentTemplateSequence", [])}
        for tid in templates:
            assert f"TID {tid}" in row[3], f"{kind}: its objects use TID {tid}, which its row does not name"


def test_query_retrieve_sop_classes_are_the_backfills() -> None:
    used = [
        retrieve.StudyRootQueryRetrieveInformationModelFind,
        retrieve.StudyRootQueryRetrieveInformationModelMove,
        retrieve.StudyRootQueryRetrieveInformationModelGet,
    ]
    assert uids(table("Q/R SCU SOP classes")) == [str(uid) for uid in used]
    code = (ROOT / "dicom_node" / "sending" / "retrieve.py").read_text()
    for name in ("send_c_find", "send_c_move", "send_c_get"):
        assert f"assoc.{name}(" in code
