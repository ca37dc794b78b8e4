"""The viewer's one origin (dicom_node/viewer/proxy.py) and OHIF's configuration and cache
(dicom_node/viewer/ohif.py), with a folder standing in for OHIF's built app and a small HTTP server
standing in for Orthanc's DICOMweb API (the units beside the proxy).

Covers: the app's files with their content types and the cross-origin isolation headers, the
generated app-config.js (one DICOMweb source on the same origin), index.html for the viewer's
routes and for paths that try to leave the app's folder, /dicom-web passed on with its query and
Accept header and the answer passed back, 502 when Orthanc does not answer; the cache refusing
a missing viewer without npm, naming npm. Not covered: real OHIF and Orthanc (test_ohif.py).
"""

from __future__ import annotations

import threading
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

import pytest

from dicom_node.viewer import ohif
from dicom_node.viewer.proxy import ViewerServer, start_viewer_server
from tests.harness.peers import free_port

INDEX = b"<!doctype html><title>OHIF</title>"


class FakeDicomWeb(BaseHTTPRequestHandler):
    seen: list[tuple[str, str]] = []

    def do_GET(self) -> None:
        FakeDicomWeb.seen.append((self.path, self.headers.get("Accept", "")))
        body = b'[{"0020000D": {"vr": "UI", "Value": ["1.2.3"]}}]'
        self.send_response(200)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def upstream() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeDicomWeb)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def dist(tmp_path: Path) -> Path:
    folder = tmp_path / "dist"
    (folder / "assets").mkdir(parents=True)
    (folder / "index.html").write_bytes(INDEX)
    (folder / "app.bundle.js").write_text("console.log('app')")
    (folder / "x.wasm").write_bytes(b"\0asm")
    (tmp_path / "secret.txt").write_text("outside the app")
    return folder


@pytest.fixture
def viewer(dist: Path, upstream: str) -> Iterator[ViewerServer]:
    server = start_viewer_server(dist, upstream)
    yield server
    server.shutdown()
    server.server_close()


def get(url: str, accept: str | None = None) -> tuple[int, dict[str, str], bytes]:
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def test_files_of_the_app_with_their_types_and_isolation_headers(viewer: ViewerServer) -> None:
    status, headers, body = get(viewer.url + "/app.bundle.js")
    assert status == 200 and body == b"console.log('app')" and headers["Content-Type"] == "application/javascript"
    assert (
        headers["Cross-Origin-Opener-Policy"] == "same-origin"
        and headers["Cross-Origin-Embedder-Policy"] == "require-corp"
    )
    assert get(viewer.url + "/x.wasm")[1]["Content-Type"] == "application/wasm"


def test_the_viewers_routes_and_escapes_get_index_html(viewer: ViewerServer) -> None:
    for path in (
        "/",
        "/viewer?StudyInstanceUIDs=1.2.3",
        "/segmentation",
        "/../secret.txt",
        "/%2e%2e/secret.txt",
        "/assets/",
    ):
        status, headers, body = get(viewer.url + path)
        assert (status, body) == (200, INDEX), path
        assert headers["Cache-Control"] == "no-store"


def test_app_config_points_at_dicomweb_on_the_same_origin(viewer: ViewerServer) -> None:
    status, headers, body = get(viewer.url + "/app-config.js")
    text = body.decode()
    assert status == 200 and headers["Content-Type"] == "application/javascript"
    assert '"qidoRoot": "/dicom-web"' in text and '"wadoRoot": "/dicom-web"' in text and "window.config = " in text
    assert "http" not in text.split("window.config = ", 1)[1], "nothing fetched from another origin"


def test_dicomweb_is_passed_on_to_orthanc(viewer: ViewerServer) -> None:
    FakeDicomWeb.seen.clear()
    status, headers, body = get(viewer.url + "/dicom-web/studies?PatientID=X&limit=5", accept="application/dicom+json")
    assert status == 200 and headers["Content-Type"] == "application/dicom+json" and b"1.2.3" in body
    assert FakeDicomWeb.seen == [("/dicom-web/studies?PatientID=X&limit=5", "application/dicom+json")]


def test_orthanc_not_answering_is_a_502(dist: Path) -> None:
    server = start_viewer_server(dist, f"http://127.0.0.1:{free_port()}")
    try:
        status, _, body = get(server.url + "/dicom-web/studies")
        assert status == 502 and b"Orthanc did not answer" in body
    finally:
        server.shutdown()
        server.server_close()


def test_a_missing_viewer_without_npm_names_npm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(RuntimeError, match="dicom-node viewer --fetch-only"):
        ohif.ohif_dist("0.0.1", cache=tmp_path, fetch=False)
    monkeypatch.setattr(ohif.shutil, "which", lambda name: None)
    with pytest.raises(RuntimeError, match="npm is not installed"):
        ohif.ohif_dist("0.0.1", cache=tmp_path)
    (tmp_path / "0.0.1" / "dist").mkdir(parents=True)
    (tmp_path / "0.0.1" / "dist" / "index.html").write_bytes(INDEX)
    assert ohif.ohif_dist("0.0.1", cache=tmp_path, fetch=False) == tmp_path / "0.0.1" / "dist"
