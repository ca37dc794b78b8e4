"""The sending role over DICOMweb: STOW-RS (PS3.18 10.5) of result objects to a destination of
kind "dicomweb", and the connection test of such a destination (a QIDO-RS search).

One call of :func:`stow_files` is one batch in one HTTP request: ``POST <url>/studies`` with a
``multipart/related; type="application/dicom"`` body, one part per Part 10 file as it is stored
(the file's own transfer syntax). The outcome is classified like a C-STORE batch's
(dicom_node.sending.scu: success, retriable, permanent; the same SendResult), and the
Conformance Statement (docs/conformance.md) lists the same:

- 200 OK: every object stored (warnings in the answer are kept as stored);
- 200 OK or 202 Accepted naming objects in its FailedSOPSequence: each of those is classified by
  its FailureReason like a C-STORE status (0xA7xx out of resources and 0x0110 processing failure
  retriable, every other failure permanent); the others were stored;
- 409 Conflict (nothing stored: the request conflicts with what the service holds or takes, e.g.
  a SOP class it does not support or another study than the URL's): each object is refused for
  good unless its FailureReason is 0xA7xx (out of resources);
- retriable: no connection, a timeout, a connection lost before the answer, 408, 429 and every
  5xx;
- permanent: every other status (400 bad request, 401 and 403 credentials refused, 404 no such
  service, 413 too large, 415 media type not supported...): sending again would get the same.

A retry sends the same SOP Instance UIDs; a STOW-RS service stores an instance once (a second
store replaces or keeps it), so a retried batch does not make duplicates.
"""

from __future__ import annotations

import logging
import ssl
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import httpx
import pydicom

from dicom_node.sending.echo import EchoResult
from dicom_node.sending.scu import ObjectResult, Outcome, SendResult, classify_status, status_name, worst

log = logging.getLogger(__name__)

# DICOM JSON (PS3.18 F.2) keys of the STOW-RS response (PS3.18 10.5.3).
FAILED_SOP_SEQUENCE = "00081198"
REFERENCED_SOP_SEQUENCE = "00081199"
REFERENCED_SOP_INSTANCE_UID = "00081155"
FAILURE_REASON = "00081197"
WARNING_REASON = "00081196"

RETRIABLE_HTTP = frozenset({408, 425, 429})


@dataclass(frozen=True)
class WebPeer:
    """Where a batch goes: a DICOMweb service's base URL and how to call it."""

    title: str
    url: str
    auth: str = "none"  # none, basic, bearer
    username: str = ""
    password: str = ""
    token: str = ""
    verify_tls: bool = True
    ca_file: str = ""

    @property
    def stow_url(self) -> str:
        return self.url.rstrip("/") + "/studies"


def classify_http(code: int) -> Outcome:
    """Success, retriable or permanent for a STOW-RS answer's HTTP status as a whole."""
    if code in (200, 202):
        return Outcome.SUCCESS
    if code in RETRIABLE_HTTP or code >= 500:
        return Outcome.RETRIABLE
    return Outcome.PERMANENT


def _client(peer: WebPeer, timeout: float) -> httpx.Client:
    """An HTTP client with the destination's authentication and TLS verification."""
    verify: ssl.SSLContext | bool = True
    if peer.url.startswith("https://"):
        if not peer.verify_tls:
            verify = False
        else:
            verify = ssl.create_default_context(cafile=peer.ca_file or None)
    auth: httpx.Auth | None = None
    headers = {"User-Agent": "covid-ct-node"}
    if peer.auth == "basic":
        auth = httpx.BasicAuth(peer.username, peer.password)
    elif peer.auth == "bearer":
        headers["Authorization"] = f"Bearer {peer.token}"
    return httpx.Client(verify=verify, auth=auth, headers=headers, timeout=timeout, follow_redirects=False)


def _multipart(paths: Sequence[Path], boundary: str) -> bytes:
    """The request body (PS3.18 8.6.1.2: multipart/related), whole: with a Content-Length, as
    every service takes it (not all take a chunked request)."""
    parts: list[bytes] = []
    for path in paths:
        parts.append(f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode("ascii"))
        parts.append(path.read_bytes())
        parts.append(b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode("ascii"))
    return b"".join(parts)


def _values(item: dict[str, Any], tag: str) -> list[Any]:
    element = item.get(tag) or {}
    return list(element.get("Value") or []) if isinstance(element, dict) else []


def _failures(body: Any) -> dict[str, int | None]:
    """{SOP Instance UID: FailureReason (None: not given)} from a DICOM JSON STOW-RS answer."""
    datasets = body if isinstance(body, list) else [body]
    out: dict[str, int | None] = {}
    for ds in datasets:
        if not isinstance(ds, dict):
            continue
        for item in _values(ds, FAILED_SOP_SEQUENCE):
            if not isinstance(item, dict):
                continue
            uids = _values(item, REFERENCED_SOP_INSTANCE_UID)
            reasons = _values(item, FAILURE_REASON)
            if uids:
                out[str(uids[0])] = int(reasons[0]) if reasons else None
    return out


def _referenced(body: Any) -> set[str]:
    datasets = body if isinstance(body, list) else [body]
    out: set[str] = set()
    for ds in datasets:
        if isinstance(ds, dict):
            for item in _values(ds, REFERENCED_SOP_SEQUENCE):
                if isinstance(item, dict):
                    out.update(str(u) for u in _values(item, REFERENCED_SOP_INSTANCE_UID))
    return out


def _answer_json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def read_answer(
    files: Sequence[tuple[Path, str]], response: httpx.Response, where: str
) -> tuple[list[ObjectResult], str]:
    """Each object's result (``files``: path and SOP Instance UID) from a STOW-RS answer, and what
    the answer said as a whole (see the module docstring)."""
    code = response.status_code
    body = _answer_json(response)
    failures = _failures(body)
    stored = _referenced(body)
    http = f"HTTP {code} {response.reason_phrase}".strip()
    outcome = classify_http(code)
    if code not in (200, 202, 409) or (code == 409 and not failures):
        # A server's own words, but not a web page (a proxy's or a login form's HTML says nothing)
        html = "html" in response.headers.get("content-type", "").lower()
        text = " ".join(response.text[:300].split()) if response.text and not html else ""
        detail = f"{where} answered {http}" + (f": {text}" if text else "")
        return [ObjectResult(p, uid, None, outcome if outcome is not Outcome.SUCCESS else Outcome.PERMANENT, detail)
                for p, uid in files], detail  # fmt: skip
    results = []
    for path, uid in files:
        if uid in failures:
            reason = failures[uid]
            per = classify_status(reason) if reason is not None else Outcome.PERMANENT
            if per is Outcome.SUCCESS:  # a failure without a failure status: refused all the same
                per = Outcome.PERMANENT
            if code == 409 and per is Outcome.RETRIABLE and (reason or 0) & 0xFF00 != 0xA700:
                per = Outcome.PERMANENT  # a conflict, not a passing failure
            detail = f"{uid}: refused by {where} ({http}, FailureReason {status_name(reason)})"
            results.append(ObjectResult(path, uid, reason, per, detail))
        elif code == 409 and uid not in stored:
            results.append(ObjectResult(path, uid, None, Outcome.PERMANENT, f"{uid}: refused by {where} ({http})"))
        else:
            results.append(ObjectResult(path, uid, 0, Outcome.SUCCESS))
    return results, http


def stow_files(
    paths: Sequence[Path],
    peer: WebPeer,
    *,
    timeout: float = 30.0,
    on_progress: Callable[[int], None] | None = None,
) -> SendResult:
    """Send ``paths`` (DICOM Part 10 files) to ``peer`` in one STOW-RS request and classify the
    outcome (see the module docstring). Never raises for a network or HTTP failure: those are in
    the result. ``on_progress(stored)`` is called once the service has answered."""
    started = time.monotonic()
    paths = [Path(p) for p in paths]
    if not paths:
        return SendResult(Outcome.SUCCESS, "", seconds=0.0)
    files = [(p, str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID)) for p in paths]
    where = f"{peer.title} ({peer.stow_url})"
    boundary = f"dicom-node-{uuid.uuid4().hex}"
    headers = {
        "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
        "Accept": "application/dicom+json",
    }
    try:
        with _client(peer, timeout) as client:
            response = client.post(peer.stow_url, content=_multipart(paths, boundary), headers=headers)
    except (httpx.HTTPError, ssl.SSLError, OSError) as exc:
        reason = f"no answer from {where}: {type(exc).__name__}: {exc}"
        log.warning("export to %s", reason.removeprefix("no answer from "))
        results = [ObjectResult(p, uid, None, Outcome.RETRIABLE, "not sent") for p, uid in files]
        return SendResult(Outcome.RETRIABLE, reason, results, 0, time.monotonic() - started)
    results, said = read_answer(files, response, where)
    outcome = worst([r.outcome for r in results])
    sent = sum(1 for r in results if r.outcome is Outcome.SUCCESS)
    if sent and on_progress is not None:
        on_progress(sent)
    reason = ""
    if outcome is not Outcome.SUCCESS:
        failures = [r.detail for r in results if r.outcome is not Outcome.SUCCESS]
        unique = list(dict.fromkeys(failures))
        reason = f"{sent} of {len(results)} objects stored by {where}; " + "; ".join(unique[:5])
        if len(unique) > 5:
            reason += f"; and {len(unique) - 5} more"
        log.warning("export to %s: %s", where, reason)
    else:
        log.debug("export to %s: %s, %d object(s)", where, said, sent)
    return SendResult(outcome, reason, results, 1, time.monotonic() - started)


def web_echo(peer: WebPeer, *, timeout: float = 10.0) -> EchoResult:
    """The connection test of a DICOMweb destination: ``GET <url>/studies?limit=1`` (QIDO-RS)
    with its authentication and TLS settings. 200 and 204 (no study) are an answer."""
    started = time.monotonic()
    url = httpx.URL(peer.url)
    https = peer.url.startswith("https://")

    def answer(ok: bool, outcome: str, status: str, detail: str, round_trip_ms: float | None) -> EchoResult:
        return EchoResult(
            ok=ok,
            outcome=outcome,
            status=status,
            detail=detail,
            round_trip_ms=round_trip_ms,
            total_ms=round((time.monotonic() - started) * 1000, 1),
            calling_ae_title="",
            called_ae_title=peer.title,
            host=url.host,
            port=url.port or (443 if https else 80),
            tls=https,
            url=peer.url,
        )

    try:
        with _client(peer, timeout) as client:
            sent = time.monotonic()
            response = client.get(peer.stow_url, params={"limit": "1"}, headers={"Accept": "application/dicom+json"})
            round_trip = round((time.monotonic() - sent) * 1000, 1)
    except (httpx.HTTPError, ssl.SSLError, OSError) as exc:
        return answer(False, "no answer", "", f"{type(exc).__name__}: {exc}", None)
    ok = response.status_code in (200, 204)
    outcome = "Success" if ok else f"HTTP {response.status_code}"
    return answer(ok, outcome, str(response.status_code), response.reason_phrase or "", round_trip)
