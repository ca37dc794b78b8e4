"""Real peers for the integration and end-to-end tests and the benchmarks: the node as a
subprocess, DCMTK's storescu as the scanner, Orthanc as the PACS, PostgreSQL and Redis on this
machine.

A missing peer makes the caller fail with a message that names it; nothing here skips.
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from contextlib import closing
from pathlib import Path
from typing import Any, Iterable, Sequence

import redis
from sqlalchemy import create_engine, make_url, text

from dicom_node.viewer.orthanc import OrthancProcess, orthanc_config

BIN = Path(sys.executable).parent
DICOM_NODE = str(BIN / "dicom-node")

POSTGRES_ADMIN_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/test")
REDIS_URL = os.environ.get("TEST_REDIS_URL", "redis://127.0.0.1:6379")


def free_port() -> int:
    with closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def require_tool(name: str, package: str) -> str:
    path = shutil.which(name) or (f"/usr/sbin/{name}" if Path(f"/usr/sbin/{name}").exists() else None)
    if path is None:
        raise AssertionError(
            f"{name} is not installed: this test needs the Debian package {package} (.ci/run installs it)"
        )
    return path


def wait_until(predicate: Any, timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)


def port_open(port: int, host: str = "127.0.0.1") -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


# --- databases -----------------------------------------------------------------------------


def create_postgres_database(server: str = POSTGRES_ADMIN_URL, prefix: str = "dicom_node_test") -> tuple[str, str]:
    """Create a fresh PostgreSQL database on ``server`` (a URL of one of its databases); return
    (url, name), the URL with its password. Fails if PostgreSQL is down."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    except Exception as exc:  # make the missing peer obvious
        raise AssertionError(f"PostgreSQL at {make_url(server).render_as_string()} is not usable: {exc}") from exc
    finally:
        admin.dispose()
    return make_url(server).set(database=name).render_as_string(hide_password=False), name


def drop_postgres_database(name: str, server: str = POSTGRES_ADMIN_URL) -> None:
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    finally:
        admin.dispose()


def redis_db_url() -> str:
    """A Redis database URL for one test, emptied first. Fails if Redis is down."""
    client = redis.Redis.from_url(f"{REDIS_URL}/0")
    try:
        client.ping()
    except redis.RedisError as exc:
        raise AssertionError(f"Redis at {REDIS_URL} is not reachable: {exc}") from exc
    # One database per test process avoids two test runs sharing queues.
    index = 1 + (os.getpid() % 14)
    url = f"{REDIS_URL}/{index}"
    redis.Redis.from_url(url).flushdb()
    return url


# --- the node ------------------------------------------------------------------------------


def node_env(data_dir: Path, **settings: Any) -> dict[str, str]:
    """Environment for a node subprocess: DICOM_NODE_<KEY>=value for each setting."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DICOM_NODE_")}
    env["DICOM_NODE_DATA_DIR"] = str(data_dir)
    env["TCP_NODELAY"] = "1"
    env["PYTHONUNBUFFERED"] = "1"
    for key, value in settings.items():
        if value is not None:
            env[f"DICOM_NODE_{key.upper()}"] = str(value)
    return env


def cli(
    env: dict[str, str], *args: str, check: bool = True, timeout: float = 120, input: str | None = None
) -> subprocess.CompletedProcess[str]:
    """``dicom-node ARGS``; ``input`` goes to its standard input (e.g. --password-stdin)."""
    proc = subprocess.run([DICOM_NODE, *args], env=env, capture_output=True, text=True, timeout=timeout, input=input)
    if check and proc.returncode != 0:
        raise AssertionError(f"dicom-node {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
    return proc


def cli_json(env: dict[str, str], *args: str) -> Any:
    return json.loads(cli(env, *args).stdout)


class NodeProcess:
    """``dicom-node <command>`` (serve, worker, up) as a subprocess, its output kept in a log file."""

    def __init__(self, env: dict[str, str], command: Sequence[str] = ("serve",), log_path: Path | None = None) -> None:
        self.env = env
        self.command = list(command)
        self.log_path = log_path or Path(env["DICOM_NODE_DATA_DIR"]) / f"{self.command[0]}-{uuid.uuid4().hex[:6]}.out"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> "NodeProcess":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [DICOM_NODE, *self.command],
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        return self

    def wait_for_port(self, port: int, timeout: float = 60) -> None:
        def up() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"dicom-node {' '.join(self.command)} exited {self.proc.returncode}:\n{self.output()}"
                )
            return port_open(port)

        wait_until(up, timeout, f"dicom-node {' '.join(self.command)} to listen on {port}")

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        os.killpg(self.proc.pid, sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait(10)
        finally:
            self._log.close()

    def kill(self) -> None:
        self.stop(signal.SIGKILL)


# --- DCMTK as the modality -----------------------------------------------------------------


def storescu(
    files: Iterable[Path] | Path,
    port: int,
    *,
    calling: str = "STORESCU",
    called: str = "COVIDNODE",
    host: str = "127.0.0.1",
    extra: Sequence[str] = (),
    timeout: float = 300,
) -> subprocess.CompletedProcess[str]:
    """Send with DCMTK's storescu (TCP_NODELAY=1: DCMTK stalls ~40 ms a message without it)."""
    exe = require_tool("storescu", "dcmtk")
    paths = [str(files)] if isinstance(files, Path) else [str(p) for p in files]
    args = [exe, "-aet", calling, "-aec", called, *extra]
    if len(paths) == 1 and Path(paths[0]).is_dir():
        args += ["+sd", "+r"]
    env = dict(os.environ, TCP_NODELAY="1")
    return subprocess.run([*args, host, str(port), *paths], capture_output=True, text=True, timeout=timeout, env=env)


# --- Orthanc as the PACS -------------------------------------------------------------------

# Where Debian's orthanc-webviewer puts the Orthanc Web Viewer plugin.
WEBVIEWER_PLUGIN_PATHS = (
    Path("/usr/share/orthanc/plugins/libOrthancWebViewer.so"),
    Path("/usr/lib/orthanc/plugins/libOrthancWebViewer.so"),
)


def webviewer_plugin() -> Path:
    for path in WEBVIEWER_PLUGIN_PATHS:
        if path.is_file():
            return path
    raise AssertionError(
        "Orthanc's Web Viewer plugin is not installed: this test needs the Debian package orthanc-webviewer"
        " (tests/run installs it)"
    )


class _GuardedOrthancProcess(OrthancProcess):
    """Orthanc whose REST API needs a user: asked as such whether it is up."""

    def __init__(self, folder: Path, config: dict[str, Any], orthanc: "Orthanc") -> None:
        super().__init__(folder, config)
        self.orthanc = orthanc

    def alive(self) -> bool:
        try:
            self.orthanc.get("/system")
            return True
        except (urllib.error.URLError, OSError):
            return False


def self_signed_certificate(folder: Path, host: str = "127.0.0.1") -> tuple[Path, Path]:
    """(a PEM of key and certificate for a server on ``host``, the certificate alone to trust)
    made with openssl."""
    folder.mkdir(parents=True, exist_ok=True)
    key, cert = folder / "key.pem", folder / "cert.pem"
    subprocess.run(
        [require_tool("openssl", "openssl"), "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-keyout", str(key), "-out", str(cert), "-subj", f"/CN={host}", "-addext", f"subjectAltName=IP:{host}"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    both = folder / "server.pem"
    both.write_bytes(key.read_bytes() + cert.read_bytes())
    return both, cert


class Orthanc:
    """A private Orthanc (Debian package) with its own ports and storage, read over REST;
    ``dicomweb`` loads its DICOMweb plugin (Debian package orthanc-dicomweb), for a viewer or as a
    STOW-RS destination; ``webviewer`` loads the Orthanc Web Viewer plugin (Debian package
    orthanc-webviewer: a second viewer, at ``webviewer_url``, its cache in ``workdir``);
    ``users`` ({name: password}) turns HTTP basic authentication on (the REST reads here log in as
    the first)."""

    def __init__(
        self,
        workdir: Path,
        *,
        aet: str = "ORTHANC",
        modalities: dict[str, Any] | None = None,
        dicomweb: bool = False,
        webviewer: bool = False,
        users: dict[str, str] | None = None,
    ) -> None:
        require_tool("Orthanc", "orthanc")
        self.workdir = Path(workdir)
        self.aet = aet
        self.dicom_port = free_port()
        self.http_port = free_port()
        self.modalities = modalities or {}
        self.dicomweb = dicomweb
        self.webviewer = webviewer
        self.users = users or {}
        self.process: OrthancProcess | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb_url(self) -> str:
        return f"{self.url}/dicom-web"

    def webviewer_url(self, series_id: str) -> str:
        """The Web Viewer's page for a series (Orthanc's series id, not its UID)."""
        return f"{self.url}/web-viewer/app/viewer.html?series={series_id}"

    def start(self) -> "Orthanc":
        extra: dict[str, Any] = {}
        if self.users:
            extra.update(AuthenticationEnabled=True, RegisteredUsers=self.users)
        try:
            config = orthanc_config(
                self.workdir, aet=self.aet, dicom_port=self.dicom_port, http_port=self.http_port,
                dicomweb=self.dicomweb, Name="test-pacs", DicomModalities=self.modalities, HttpServerEnabled=True,
                LogExportedResources=False, KeepAlive=True, **extra,
            )  # fmt: skip
            if self.webviewer:
                config["Plugins"].append(str(webviewer_plugin()))
                config["WebViewer"] = {"CachePath": str(self.workdir / "webviewer-cache")}
            if self.users:
                self.process = _GuardedOrthancProcess(self.workdir, config, self).start()
            else:
                self.process = OrthancProcess(self.workdir, config).start()
        except RuntimeError as exc:  # a missing package or an Orthanc that does not start: the test fails
            raise AssertionError(str(exc)) from exc
        wait_until(lambda: port_open(self.dicom_port), 30, f"Orthanc's DICOM port {self.dicom_port}", interval=0.2)
        return self

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()

    def get(self, path: str) -> Any:
        request = urllib.request.Request(self.url + path)
        if self.users:
            name, password = next(iter(self.users.items()))
            request.add_header("Authorization", "Basic " + base64.b64encode(f"{name}:{password}".encode()).decode())
        with urllib.request.urlopen(request, timeout=10) as resp:
            body = resp.read()
            return json.loads(body) if resp.headers.get_content_type() == "application/json" else body

    def instances(self) -> list[str]:
        return list(self.get("/instances"))

    def instance_tags(self, instance_id: str) -> dict[str, Any]:
        return dict(self.get(f"/instances/{instance_id}/simplified-tags"))

    def instance_file(self, instance_id: str) -> bytes:
        return bytes(self.get(f"/instances/{instance_id}/file"))


class TlsProxy:
    """socat terminating TLS (``certificate``: a PEM of key and certificate) on a port of its own
    and passing each connection on to ``target_port``: https in front of a plain-HTTP server
    (Orthanc 1.10 of Debian 12 crashes on its own https)."""

    def __init__(self, certificate: Path, target_port: int) -> None:
        self.certificate = certificate
        self.target_port = target_port
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> "TlsProxy":
        listen = f"OPENSSL-LISTEN:{self.port},bind=127.0.0.1,reuseaddr,fork,verify=0,cert={self.certificate}"
        self.proc = subprocess.Popen(
            [require_tool("socat", "socat"), listen, f"TCP:127.0.0.1:{self.target_port}"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        wait_until(lambda: port_open(self.port), 10, f"socat's TLS port {self.port}")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(10)
