"""A private Orthanc (Debian package ``orthanc``) with its DICOMweb plugin (``orthanc-dicomweb``):
the PACS the viewer reads. Its configuration, storage and log live in one folder."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

# Where Debian's orthanc-dicomweb puts the plugin.
DICOMWEB_PLUGIN_PATHS = (
    Path("/usr/share/orthanc/plugins/libOrthancDicomWeb.so"),
    Path("/usr/lib/orthanc/plugins/libOrthancDicomWeb.so"),
)


def orthanc_executable() -> str:
    found = shutil.which("Orthanc") or next(
        (p for p in ("/usr/sbin/Orthanc", "/usr/bin/Orthanc") if Path(p).exists()), None
    )
    if found is None:
        raise RuntimeError("Orthanc is not installed (Debian package orthanc)")
    return found


def dicomweb_plugin() -> Path:
    for path in DICOMWEB_PLUGIN_PATHS:
        if path.is_file():
            return path
    raise RuntimeError("Orthanc's DICOMweb plugin is not installed (Debian package orthanc-dicomweb)")


def orthanc_config(
    folder: Path, *, aet: str, dicom_port: int, http_port: int, dicomweb: bool = True, **extra: Any
) -> dict[str, Any]:
    """Orthanc's configuration: storage under ``folder``, loopback HTTP without authentication
    (a private instance), any calling AE may store and echo; ``dicomweb`` loads the plugin."""
    config: dict[str, Any] = {
        "Name": "dicom-node viewer",
        "StorageDirectory": str(folder / "storage"),
        "IndexDirectory": str(folder / "storage"),
        "DicomAet": aet,
        "DicomPort": dicom_port,
        "HttpPort": http_port,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomCheckCalledAet": True,
        "DicomAlwaysAllowEcho": True,
        "DicomAlwaysAllowStore": True,
        "UnknownSopClassAccepted": True,
        "OverwriteInstances": True,
        "StableAge": 2,
        "Plugins": [str(dicomweb_plugin())] if dicomweb else [],
    }
    if dicomweb:
        # Metadata from the stored files, complete (the viewer needs every attribute of SR and SEG).
        config["DicomWeb"] = {
            "Enable": True,
            "Root": "/dicom-web/",
            "EnableWado": True,
            "StudiesMetadata": "Full",
            "SeriesMetadata": "Full",
        }
    config.update(extra)
    return config


class OrthancProcess:
    """``Orthanc CONFIG`` as a subprocess in its own process group, its log in ``folder``."""

    def __init__(self, folder: Path, config: dict[str, Any]) -> None:
        self.folder = folder
        self.config = config
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.config['HttpPort']}"

    @property
    def log_path(self) -> Path:
        return self.folder / "orthanc.log"

    def start(self, timeout: float = 60) -> OrthancProcess:
        self.folder.mkdir(parents=True, exist_ok=True)
        path = self.folder / "orthanc.json"
        path.write_text(json.dumps(self.config, indent=2))
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [orthanc_executable(), str(path)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while not self.alive():
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"Orthanc exited {self.proc.returncode}: {self.log_path.read_text(errors='replace')[-3000:]}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"Orthanc did not answer on {self.url} within {timeout:g} s")
            time.sleep(0.2)
        return self

    def alive(self) -> bool:
        try:
            with urllib.request.urlopen(self.url + "/system", timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
