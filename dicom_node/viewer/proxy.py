"""The viewer's one origin: OHIF's built files, its ``app-config.js``, and ``/dicom-web/...``
passed on to Orthanc's DICOMweb API, so the browser talks to one server (no cross-origin requests,
no CORS set-up in Orthanc). Any other path that is not a file is the viewer's own route
(``/viewer?StudyInstanceUIDs=...``): it gets ``index.html``.

The responses carry the cross-origin isolation headers OHIF asks for (SharedArrayBuffer for its
volume viewports). Only GET and HEAD are served: the viewer reads, it never stores.
"""

from __future__ import annotations

import http.client
import logging
import mimetypes
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from dicom_node.viewer.ohif import DICOMWEB_PATH, app_config

log = logging.getLogger(__name__)

CONTENT_TYPES = {
    ".js": "application/javascript", ".mjs": "application/javascript", ".wasm": "application/wasm",
    ".json": "application/json", ".css": "text/css", ".svg": "image/svg+xml", ".woff2": "font/woff2",
}  # fmt: skip
ISOLATION_HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
}
# Request headers passed on to Orthanc (the rest are the browser's business).
FORWARDED_REQUEST_HEADERS = ("Accept", "Range", "If-None-Match")
# Response headers not passed back (hop-by-hop, or recomputed here).
DROPPED_RESPONSE_HEADERS = {"connection", "keep-alive", "transfer-encoding", "content-length", "server"}


class ViewerServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], dist: Path, orthanc_url: str, config_js: str) -> None:
        self.dist = dist.resolve()
        parsed = urllib.parse.urlsplit(orthanc_url)
        if parsed.scheme != "http" or not parsed.hostname:
            raise ValueError(f"orthanc_url {orthanc_url!r} is not an http://host:port URL")
        self.orthanc_host = parsed.hostname
        self.orthanc_port = parsed.port or 80
        self.orthanc_prefix = parsed.path.rstrip("/")
        self.config_js = config_js.encode()
        super().__init__(address, ViewerHandler)

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"


class ViewerHandler(BaseHTTPRequestHandler):
    server: ViewerServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        log.debug("%s " + format, self.address_string(), *args)

    def do_HEAD(self) -> None:
        self.do_GET(head=True)

    def do_GET(self, head: bool = False) -> None:
        path = urllib.parse.urlsplit(self.path).path
        if path == DICOMWEB_PATH or path.startswith(DICOMWEB_PATH + "/"):
            self._proxy(head)
        elif path == "/app-config.js":
            self._send(200, self.server.config_js, "application/javascript", head, cache=False)
        else:
            self._static(path, head)

    def _static(self, path: str, head: bool) -> None:
        relative = urllib.parse.unquote(path).lstrip("/")
        target = (self.server.dist / relative).resolve() if relative else self.server.dist / "index.html"
        if not target.is_relative_to(self.server.dist) or not target.is_file():
            # The viewer's own routes (/viewer, /segmentation, ...) are pages of the one-page app.
            target = self.server.dist / "index.html"
        content_type = (
            CONTENT_TYPES.get(target.suffix) or mimetypes.guess_type(target.name)[0] or "application/octet-stream"
        )
        self._send(200, target.read_bytes(), content_type, head, cache=target.name != "index.html")

    def _proxy(self, head: bool) -> None:
        server = self.server
        headers = {name: value for name in FORWARDED_REQUEST_HEADERS if (value := self.headers.get(name))}
        connection = http.client.HTTPConnection(server.orthanc_host, server.orthanc_port, timeout=120)
        try:
            connection.request("HEAD" if head else "GET", server.orthanc_prefix + self.path, headers=headers)
            response = connection.getresponse()
            body = response.read()
        except OSError as exc:
            log.warning(
                "Orthanc at %s:%s did not answer %s: %s", server.orthanc_host, server.orthanc_port, self.path, exc
            )
            self._send(502, f"Orthanc did not answer: {exc}".encode(), "text/plain", head)
            return
        finally:
            connection.close()
        self.send_response(response.status)
        for name, value in response.getheaders():
            if name.lower() not in DROPPED_RESPONSE_HEADERS:
                self.send_header(name, value)
        self._common_headers(len(body), cache=False)
        if not head:
            self.wfile.write(body)

    def _send(self, status: int, body: bytes, content_type: str, head: bool, *, cache: bool = False) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self._common_headers(len(body), cache=cache)
        if not head:
            self.wfile.write(body)

    def _common_headers(self, length: int, *, cache: bool) -> None:
        for name, value in ISOLATION_HEADERS.items():
            self.send_header(name, value)
        self.send_header("Cache-Control", "max-age=3600" if cache else "no-store")
        self.send_header("Content-Length", str(length))
        self.end_headers()


def start_viewer_server(
    dist: Path, orthanc_url: str, *, host: str = "127.0.0.1", port: int = 0, config_js: str | None = None
) -> ViewerServer:
    """Serve OHIF from ``dist`` with Orthanc's DICOMweb API behind ``/dicom-web`` (``orthanc_url``:
    Orthanc's HTTP root; its DICOMweb plugin answers at ``/dicom-web/``, its default), in a background
    thread; ``port`` 0 picks a free one. Stop it with ``server.shutdown(); server.server_close()``."""
    if not (dist / "index.html").is_file():
        raise ValueError(f"{dist} is not OHIF's built app (no index.html)")
    server = ViewerServer((host, port), dist, orthanc_url, config_js or app_config())
    threading.Thread(target=server.serve_forever, name="viewer-http", daemon=True).start()
    return server
