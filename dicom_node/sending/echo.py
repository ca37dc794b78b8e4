"""The C-ECHO test of a destination: does its storage SCP answer, how, and how fast."""

from __future__ import annotations

import ssl
import time
from dataclasses import asdict, dataclass
from typing import Any

from pynetdicom import AE
from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # pynetdicom makes its SOP class names at import time; mypy can not see them

from dicom_node.dicom_answers import Status
from dicom_node.sending.scu import associate

# The answer should come quickly; the export timeout (30 s by default) is too long for a page.
MAX_ECHO_SECONDS = 10.0


@dataclass(frozen=True)
class EchoResult:
    ok: bool
    # "Success", "association rejected", "no answer" ...
    outcome: str
    status: str  # "0x0000" or "" when no DIMSE status came back
    detail: str
    # C-ECHO request to response; None when no echo was sent.
    round_trip_ms: float | None
    # Connecting and associating included.
    total_ms: float
    calling_ae_title: str
    called_ae_title: str
    host: str
    port: int
    tls: bool
    # A DICOMweb destination's base URL (its test is a QIDO-RS search, dicom_node.sending.dicomweb).
    url: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _status_name(code: int) -> str:
    try:
        return Status(code).name.replace("_", " ").lower()
    except ValueError:
        return "unknown status"


def c_echo(
    host: str,
    port: int,
    called_ae_title: str,
    *,
    calling_ae_title: str,
    tls: bool = False,
    timeout: float = MAX_ECHO_SECONDS,
) -> EchoResult:
    """Associate, send one C-ECHO, release; report what happened (never raises for a peer's
    refusal or silence: those are the answer)."""
    ae = AE(ae_title=calling_ae_title)
    ae.add_requested_context(Verification)
    ae.acse_timeout = timeout
    ae.dimse_timeout = timeout
    ae.network_timeout = timeout
    ae.connection_timeout = timeout
    tls_args = (ssl.create_default_context(), host) if tls else None
    start = time.perf_counter()

    def result(ok: bool, outcome: str, status: str, detail: str, rtt: float | None) -> EchoResult:
        total = round((time.perf_counter() - start) * 1000.0, 1)
        return EchoResult(ok, outcome, status, detail, rtt, total, calling_ae_title, called_ae_title, host, port, tls)

    where = f"{called_ae_title}@{host}:{port}"
    assoc, negotiation = associate(ae, host, port, called_ae_title, tls_args, timeout)
    if not assoc.is_established:
        if negotiation.was_rejected(assoc):
            return result(False, "association rejected", "", negotiation.rejection, None)
        return result(False, "no association", "", negotiation.no_association(where, timeout), None)

    def ms(since: float) -> float:
        return round((time.perf_counter() - since) * 1000.0, 1)

    try:
        echo_start = time.perf_counter()
        answer = assoc.send_c_echo()
        rtt = ms(echo_start)
    finally:
        assoc.release()
    if not answer or "Status" not in answer:
        return result(False, "no answer", "", "the association timed out or was aborted before a C-ECHO response", None)
    code = int(answer.Status)
    ok = code == Status.SUCCESS
    return result(ok, "Success" if ok else "failure", f"0x{code:04X}", _status_name(code), rtt)
