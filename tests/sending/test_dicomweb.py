"""dicom_node.sending.dicomweb (the STOW-RS client) against Orthanc with its DICOMweb plugin, the
PACS read back over Orthanc's REST API.

Covers: a batch stored in one request, each object once also when the batch is sent again (a
retry); no service listening (retriable, then the retry stores); a wrong path (404) and refused
credentials (401, basic and bearer) refused for good; Orthanc's own 409 answer (another study
than the URL's) read per instance from its FailedSOPSequence; a 202 naming failed instances by
FailureReason (built here: Orthanc 1.10's plugin answers 200 or 409 only); https through a TLS
terminator (socat) with a private CA file, without it (certificate not trusted: retriable), and
unverified; the QIDO-RS connection test; the command line (add, echo, update) as a subprocess.
Does not cover a bearer token accepted by a server (Orthanc has no bearer authentication): only
that a refusal of it is permanent.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Iterator

import httpx
import pydicom
import pytest

from dicom_node.sending.dicomweb import WebPeer, classify_http, read_answer, stow_files, web_echo
from dicom_node.sending.scu import Outcome
from tests.harness.peers import Orthanc, TlsProxy, cli, free_port, node_env, self_signed_certificate
from tests.sending.dicom_files import write_outputs

pytestmark = pytest.mark.integration

USERS = {"node": "s3cret-pw"}


@pytest.fixture
def files(tmp_path: Path) -> list[Path]:
    return write_outputs(tmp_path / "out")


@pytest.fixture
def web_pacs(tmp_path: Path) -> Iterator[Orthanc]:
    server = Orthanc(tmp_path / "orthanc", dicomweb=True).start()
    yield server
    server.stop()


def uids(paths: list[Path]) -> list[str]:
    return sorted(str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths)


def stored_uids(pacs: Orthanc) -> list[str]:
    """The SOP Instance UIDs Orthanc holds, one entry per stored instance."""
    return sorted(pacs.instance_tags(i)["SOPInstanceUID"] for i in pacs.instances())


def test_http_statuses() -> None:
    assert classify_http(200) is classify_http(202) is Outcome.SUCCESS
    for retriable in (408, 429, 500, 502, 503, 504):
        assert classify_http(retriable) is Outcome.RETRIABLE
    for permanent in (400, 401, 403, 404, 405, 409, 413, 415):
        assert classify_http(permanent) is Outcome.PERMANENT


def test_a_batch_is_stored_once_also_when_sent_again(web_pacs: Orthanc, files: list[Path]) -> None:
    peer = WebPeer("WEB", web_pacs.dicomweb_url)
    progress: list[int] = []
    result = stow_files(files, peer, on_progress=progress.append)
    assert result.outcome is Outcome.SUCCESS and result.reason == "", result.reason
    assert result.sent == len(files) == 6 and progress == [6] and result.associations == 1
    assert stored_uids(web_pacs) == uids(files)
    # A retry (the answer was lost, the worker died...) sends the same instances again.
    again = stow_files(files, peer)
    assert again.outcome is Outcome.SUCCESS, again.reason
    assert stored_uids(web_pacs) == uids(files), "each object once"
    original = pydicom.dcmread(files[0])
    stored = [i for i in web_pacs.instances() if web_pacs.instance_tags(i)["SOPInstanceUID"] == original.SOPInstanceUID]
    assert pydicom.dcmread(io.BytesIO(web_pacs.instance_file(stored[0]))).SOPClassUID == original.SOPClassUID


def test_no_service_is_retried_and_the_retry_stores(tmp_path: Path, files: list[Path]) -> None:
    pacs = Orthanc(tmp_path / "orthanc", dicomweb=True)  # its port is chosen, nothing listens yet
    peer = WebPeer("WEB", pacs.dicomweb_url)
    down = stow_files(files, peer, timeout=5.0)
    assert down.outcome is Outcome.RETRIABLE and down.sent == 0 and down.associations == 0
    assert "no answer from WEB" in down.reason and "ConnectError" in down.reason, down.reason
    assert all(o.detail == "not sent" for o in down.objects)
    pacs.start()
    try:
        retry = stow_files(files, peer)
        assert retry.outcome is Outcome.SUCCESS and retry.sent == 6, retry.reason
        assert stored_uids(pacs) == uids(files)
    finally:
        pacs.stop()


def test_a_wrong_path_is_refused_for_good(web_pacs: Orthanc, files: list[Path]) -> None:
    result = stow_files(files, WebPeer("WEB", web_pacs.url + "/no-such-service"))
    assert result.outcome is Outcome.PERMANENT and result.sent == 0
    assert "answered HTTP 404 Not Found" in result.reason, result.reason
    assert web_pacs.instances() == []


def test_orthancs_conflict_is_read_per_instance(web_pacs: Orthanc, files: list[Path]) -> None:
    """Orthanc's own answer to instances of another study than the URL's: 409, each instance in
    FailedSOPSequence with FailureReason 0x0110, a conflict that a retry would meet again."""
    boundary = "b0undary"
    body = b"".join(
        b"--" + boundary.encode() + b"\r\nContent-Type: application/dicom\r\n\r\n" + p.read_bytes() + b"\r\n"
        for p in files[:2]
    )
    response = httpx.post(
        web_pacs.dicomweb_url + "/studies/1.2.3.4.5",
        content=body + b"--" + boundary.encode() + b"--\r\n",
        headers={
            "Content-Type": f'multipart/related; type="application/dicom"; boundary={boundary}',
            "Accept": "application/dicom+json",
        },
    )
    assert response.status_code == 409, response.text
    pairs = [(p, str(pydicom.dcmread(p).SOPInstanceUID)) for p in files[:2]]
    results, said = read_answer(pairs, response, "WEB")
    assert said == "HTTP 409 Conflict"
    assert [(r.outcome, r.status) for r in results] == [(Outcome.PERMANENT, 0x0110)] * 2
    assert "FailureReason PROCESSING_FAILURE (0x0110)" in results[0].detail
    assert web_pacs.instances() == []


def test_a_202_names_each_failed_instance_by_its_reason(files: list[Path]) -> None:
    pairs = [(p, str(pydicom.dcmread(p).SOPInstanceUID)) for p in files[:3]]

    def failed(uid: str, reason: int) -> dict[str, object]:
        return {"00081155": {"vr": "UI", "Value": [uid]}, "00081197": {"vr": "US", "Value": [reason]}}

    answer = {
        "00081198": {"vr": "SQ", "Value": [failed(pairs[1][1], 0xA700), failed(pairs[2][1], 0xC000)]},
        "00081199": {"vr": "SQ", "Value": [{"00081155": {"vr": "UI", "Value": [pairs[0][1]]}}]},
    }
    response = httpx.Response(202, json=answer, request=httpx.Request("POST", "http://pacs/dicom-web/studies"))
    results, said = read_answer(pairs, response, "WEB")
    assert said == "HTTP 202 Accepted"
    assert [r.outcome for r in results] == [Outcome.SUCCESS, Outcome.RETRIABLE, Outcome.PERMANENT]
    assert [r.status for r in results] == [0, 0xA700, 0xC000]


def test_a_refusal_keeps_the_servers_words_but_not_a_web_page(files: list[Path]) -> None:
    pairs = [(p, str(pydicom.dcmread(p).SOPInstanceUID)) for p in files[:1]]
    request = httpx.Request("POST", "http://pacs/dicom-web/studies")
    page = "<!doctype html><html><head><title>Sign in</title></head><body>" + "x" * 400 + "</body></html>"
    html = httpx.Response(403, text=page, headers={"content-type": "text/html; charset=utf-8"}, request=request)
    results, said = read_answer(pairs, html, "WEB")
    assert said == "WEB answered HTTP 403 Forbidden" and results[0].outcome is Outcome.PERMANENT
    plain = httpx.Response(403, text="token not allowed for this AE", request=request)
    assert read_answer(pairs, plain, "WEB")[1] == "WEB answered HTTP 403 Forbidden: token not allowed for this AE"


def test_credentials(tmp_path: Path, files: list[Path]) -> None:
    pacs = Orthanc(tmp_path / "orthanc", dicomweb=True, users=USERS).start()
    try:
        wrong = stow_files(files, WebPeer("WEB", pacs.dicomweb_url, auth="basic", username="node", password="nope"))
        assert wrong.outcome is Outcome.PERMANENT and "HTTP 401" in wrong.reason, wrong.reason
        bearer = stow_files(files, WebPeer("WEB", pacs.dicomweb_url, auth="bearer", token="t0ken"))
        assert bearer.outcome is Outcome.PERMANENT and "HTTP 401" in bearer.reason, bearer.reason
        anonymous = stow_files(files, WebPeer("WEB", pacs.dicomweb_url))
        assert anonymous.outcome is Outcome.PERMANENT
        assert pacs.instances() == []
        good = WebPeer("WEB", pacs.dicomweb_url, auth="basic", username="node", password=USERS["node"])
        assert (ok := stow_files(files, good)).outcome is Outcome.SUCCESS, ok.reason
        assert stored_uids(pacs) == uids(files)
        echo = web_echo(good)
        assert echo.ok and echo.status == "200" and echo.url == pacs.dicomweb_url and echo.round_trip_ms is not None
        refused = web_echo(WebPeer("WEB", pacs.dicomweb_url, auth="basic", username="node", password="nope"))
        assert not refused.ok and refused.outcome == "HTTP 401"
    finally:
        pacs.stop()


def test_https_with_a_private_ca(tmp_path: Path, web_pacs: Orthanc, files: list[Path]) -> None:
    server_pem, ca = self_signed_certificate(tmp_path / "tls")
    proxy = TlsProxy(server_pem, web_pacs.http_port).start()
    try:
        url = f"https://127.0.0.1:{proxy.port}/dicom-web"
        untrusted = stow_files(files, WebPeer("WEB", url), timeout=10.0)
        assert untrusted.outcome is Outcome.RETRIABLE and "CERTIFICATE_VERIFY_FAILED" in untrusted.reason, (
            untrusted.reason
        )
        assert web_pacs.instances() == []
        trusted = stow_files(files, WebPeer("WEB", url, ca_file=str(ca)), timeout=10.0)
        assert trusted.outcome is Outcome.SUCCESS, trusted.reason
        unverified = stow_files(files, WebPeer("WEB", url, verify_tls=False), timeout=10.0)
        assert unverified.outcome is Outcome.SUCCESS, unverified.reason
        assert stored_uids(web_pacs) == uids(files)
        echo = web_echo(WebPeer("WEB", url, ca_file=str(ca)))
        assert echo.ok and echo.tls, echo
        assert not web_echo(WebPeer("WEB", url)).ok
    finally:
        proxy.stop()


def test_nothing_to_send(web_pacs: Orthanc) -> None:
    assert stow_files([], WebPeer("WEB", web_pacs.dicomweb_url)).outcome is Outcome.SUCCESS
    assert not web_echo(WebPeer("WEB", f"http://127.0.0.1:{free_port()}/dicom-web")).ok


def test_the_command_line_adds_and_tests_a_dicomweb_destination(tmp_path: Path) -> None:
    """`ae add-destination --kind dicomweb ... --secret-stdin`, `ae echo` (a QIDO-RS search) and
    `ae update-destination`, as a subprocess against Orthanc with basic authentication."""
    pacs = Orthanc(tmp_path / "orthanc", dicomweb=True, users=USERS).start()
    try:
        env = node_env(tmp_path / "data")
        add = ["ae", "add-destination", "WEB", "--kind", "dicomweb", "--url", pacs.dicomweb_url, "--auth", "basic"]
        made = cli(env, *add, "--user", "node", "--secret-stdin", input=USERS["node"] + "\n")
        assert USERS["node"] not in made.stdout
        assert "answered a QIDO-RS search (HTTP 200)" in cli(env, "ae", "echo", "WEB").stdout
        cli(env, "ae", "update-destination", "WEB", "--password", "not-the-password")
        refused = cli(env, "ae", "echo", "WEB", check=False)
        assert refused.returncode == 2 and "did not answer a QIDO-RS search: HTTP 401" in refused.stderr
        assert "not-the-password" not in cli(env, "ae", "list", "--json").stdout
    finally:
        pacs.stop()
