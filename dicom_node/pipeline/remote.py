"""Workers that share nothing with the node but the network: how such a worker gets the series it
must analyse and leaves its results where the node and every other worker find them.

Design: the node serves the files it already has over its admin app's HTTP port, under
/internal/v1/ (dicom_node.admin.internal), authenticated by a shared secret (``remote.token``).
The worker already shares the database with the node (job state lives there), so it knows every
instance's relative path and size from the index; it only lacks the bytes. Plain HTTP GETs of
those paths, several at once, are the least a worker needs: no second DICOM association policy
to configure in the hospital's network (C-GET/C-MOVE would need the node as a Q/R SCP and the
workers as AEs known to it), no multipart parsing (WADO-RS), and the same port, TLS proxy and
health check as the admin app. Files are checked against the index's size and written atomically.

- :meth:`NodeFiles.series`: the series' files, read in place when they are on this worker's disk
  (a shared volume), otherwise fetched into the worker's own storage dir (a cache, removed after
  the job: :meth:`NodeFiles.forget`).
- :meth:`NodeFiles.upload_results`: after a job's objects are written, before it is marked done,
  its result files go to the node (durable there before DONE is recorded), so the admin pages show
  them and any worker can send them.
- :meth:`NodeFiles.results`: an export on a worker that lacks a job's files fetches them.
- :meth:`NodeFiles.prune_results`: a remote worker keeps ``remote.cached_results`` result folders.
- :meth:`NodeFiles.clear_cache`: at its start a remote worker removes the series an earlier run of
  it left behind (killed mid-job).

A worker whose data dir is the node's (the ids of dicom_node.storage.identity match) is "shared":
every method then does nothing. Without ``remote.node_url`` there is no NodeFiles at all.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
import ssl
import urllib.error
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import quote

from dicom_node.errors import NodeError
from dicom_node.settings import Settings
from dicom_node.storage.files import fsync_dir
from dicom_node.storage.identity import data_dir_id
from dicom_node.storage.results import JobArtefacts

log = logging.getLogger(__name__)


class RemoteError(NodeError):
    """The node could not be reached or refused a request; the message says which and why."""


@dataclass(frozen=True)
class StoredRef:
    """One indexed instance: its path relative to the storage root and its size."""

    path: str
    size: int


class NodeFiles:
    """The node's files as a worker on another host reaches them."""

    def __init__(self, settings: Settings) -> None:
        remote = settings.remote
        assert remote.node_url and remote.token is not None, "RemoteSettings requires both"
        self.settings = settings
        self.base = remote.node_url + "/internal/v1"
        self._auth = f"Bearer {remote.token}"
        self.timeout = remote.timeout_seconds
        self.threads = remote.fetch_threads
        self._ssl = ssl.create_default_context(cafile=str(remote.ca_file)) if remote.ca_file else None

    # -- HTTP ------------------------------------------------------------------------------------

    def _request(self, method: str, path: str, data: bytes | None = None) -> Any:
        req = urllib.request.Request(self.base + path, data=data, method=method, headers={"Authorization": self._auth})
        try:
            return urllib.request.urlopen(req, timeout=self.timeout, context=self._ssl)
        except urllib.error.HTTPError as exc:
            body = exc.read(500).decode(errors="replace")
            raise RemoteError(f"{method} {self.base}{path}: HTTP {exc.code} {body}") from None
        except (urllib.error.URLError, OSError) as exc:
            raise RemoteError(f"{method} {self.base}{path}: {getattr(exc, 'reason', exc)}") from None

    def _download(self, path: str, target: Path, size: int | None = None) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.part")
        try:
            with self._request("GET", path) as rsp, open(tmp, "wb") as out:
                shutil.copyfileobj(rsp, out, 1024 * 1024)
            got = tmp.stat().st_size
            if size is not None and got != size:
                raise RemoteError(f"GET {self.base}{path}: {got} bytes, the index says {size}")
            os.replace(tmp, target)
        finally:
            tmp.unlink(missing_ok=True)

    # -- shared volume or not ----------------------------------------------------------------------

    @functools.cached_property
    def shared(self) -> bool:
        """Whether this worker's data dir is the node's (then nothing is fetched or sent)."""
        with self._request("GET", "/identity") as rsp:  # first: the node makes its id if it has none
            theirs = json.load(rsp).get("data_dir_id")
        mine = data_dir_id(self.settings.data_dir)
        shared = mine is not None and mine == theirs
        log.info(
            "node %s: %s",
            self.base,
            "same data dir (shared volume): files are read in place"
            if shared
            else "no shared disk: series are fetched",
        )
        return shared

    # -- series ---------------------------------------------------------------------------------

    def series(self, refs: Sequence[StoredRef]) -> tuple[list[Path], list[Path]]:
        """(the series' local files, those of them fetched now). A file already here, of the
        indexed size, is not fetched again."""
        root = self.settings.storage_dir
        paths = [root / r.path for r in refs]
        wanted = [(r, p) for r, p in zip(refs, paths) if not (p.is_file() and p.stat().st_size == r.size)]
        if not wanted or self.shared:
            return paths, []
        with ThreadPoolExecutor(self.threads) as pool:
            list(pool.map(lambda rp: self._download("/storage/" + quote(rp[0].path), rp[1], rp[0].size), wanted))
        for folder in {p.parent for _, p in wanted}:
            fsync_dir(folder)
        log.info(
            "fetched %d of %d instance(s) (%.1f MB) from the node",
            len(wanted),
            len(refs),
            sum(r.size for r, _ in wanted) / 1e6,
        )
        return paths, [p for _, p in wanted]

    def forget(self, fetched: Sequence[Path]) -> None:
        """Remove fetched files (and folders they leave empty): the worker keeps no series."""
        for path in fetched:
            path.unlink(missing_ok=True)
        root = self.settings.storage_dir
        for folder in sorted({p.parent for p in fetched}, key=lambda p: len(p.parts), reverse=True):
            for d in (folder, folder.parent):
                if d != root and d.is_dir() and not any(d.iterdir()):
                    d.rmdir()

    def clear_cache(self, keep: set[str]) -> int:
        """Remove the series left in this worker's storage dir by earlier runs (a worker killed
        mid-job leaves the series it fetched), except those named in ``keep`` (series UIDs of jobs
        that a live worker process of this host runs now). Returns how many series folders went.
        Nothing is removed on a shared volume: the files there are the node's."""
        root = self.settings.storage_dir
        if self.shared or not root.is_dir():
            return 0
        removed = 0
        for study in [d for d in root.iterdir() if d.is_dir()]:
            for series in [d for d in study.iterdir() if d.is_dir()]:
                if series.name not in keep:
                    shutil.rmtree(series, ignore_errors=True)
                    removed += 1
            if not any(study.iterdir()):
                study.rmdir()
        if removed:
            log.info("removed %d series left in this worker's cache (%s) by an earlier run", removed, root)
        return removed

    # -- results ----------------------------------------------------------------------------------

    def upload_results(self, artefacts: JobArtefacts) -> int:
        """Send every result file of the job to the node; returns how many."""
        if self.shared:
            return 0
        files = sorted(
            p
            for p in artefacts.root.rglob("*")
            if p.is_file() and (p.parts[len(artefacts.root.parts)] in ("dicom", "result.json", "maps.npz"))
        )

        def put(path: Path) -> None:
            name = path.relative_to(artefacts.root).as_posix()
            with self._request("PUT", f"/results/{artefacts.job_id}/{quote(name)}", path.read_bytes()):
                pass

        with ThreadPoolExecutor(self.threads) as pool:
            list(pool.map(put, files))
        return len(files)

    def results(self, artefacts: JobArtefacts, relative: Sequence[Path]) -> int:
        """Fetch the result files (paths relative to the results dir, as Job.outputs holds them)
        this worker lacks; returns how many were fetched."""
        missing = [r for r in relative if not artefacts.absolute(r).is_file()]
        if not missing or self.shared:
            return 0

        def get(rel: Path) -> None:
            job, _, name = Path(rel).as_posix().partition("/")
            self._download(f"/results/{int(job)}/{quote(name)}", artefacts.absolute(rel))

        with ThreadPoolExecutor(self.threads) as pool:
            list(pool.map(get, missing))
        return len(missing)

    def prune_results(self) -> None:
        """Keep the newest ``remote.cached_results`` job folders of this worker's results dir."""
        if self.shared:
            return
        root = self.settings.results_dir
        if not root.is_dir():
            return
        folders = sorted(
            (d for d in root.iterdir() if d.is_dir() and d.name.isdigit()),
            key=lambda d: d.stat().st_mtime,
            reverse=True,
        )
        for old in folders[self.settings.remote.cached_results :]:
            shutil.rmtree(old, ignore_errors=True)
