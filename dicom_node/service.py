"""``dicom-node serve``: listener processes, series completion, the scheduling of lost jobs and
due exports, the outbox relay, the sender of notifications and the admin app.

The parent process supervises listener children (restarting any that die), runs completion, the
scheduling and the relay in a thread, and the admin app (when present) in another. The scheduling
(:class:`Housekeeping`) is the node's own, whatever the dispatcher: lost jobs are requeued and due
exports dispatched through the outbox (dicom_node.jobs), then the dispatcher does its broker's
upkeep; every ``retention.check_seconds`` the retention policy is applied
(dicom_node.storage.retention).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import threading
import time
from multiprocessing.process import BaseProcess
from typing import Any, Callable, Protocol

from dicom_node import logs
from dicom_node.admin.server import AdminServerThread
from dicom_node.commands.common import redact
from dicom_node.db import Database, upgrade
from dicom_node.jobs import analyses, exports
from dicom_node.jobs.completion import Completion
from dicom_node.jobs.outbox import Dispatcher, OutboxRelay, load_dispatcher
from dicom_node.listener.servers import run_listener_process
from dicom_node.notify.sender import Notifier
from dicom_node.pipeline.backfill import run_next as run_next_backfill
from dicom_node.settings import Settings
from dicom_node.stopping import StopRequest
from dicom_node.storage.files import Storage
from dicom_node.storage.identity import data_dir_id
from dicom_node.storage.recovery import clean_stop, recover_index, unclean_start
from dicom_node.storage.retention import Retention

log = logging.getLogger(__name__)

# Completion waits at most this long for the listener processes to report their ports bound.
_READY_WAIT_SECONDS = 120.0


class Loop(Protocol):
    """A thread of ``serve`` besides the listeners: started, then stopped at shutdown."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


class BackgroundLoop(threading.Thread):
    """Runs ``step`` every ``interval`` seconds until stopped; a failing step is logged and
    tried again (a database restart must not end completion for good)."""

    def __init__(self, name: str, step: Callable[[], object], interval: float) -> None:
        super().__init__(name=name, daemon=True)
        self.step = step
        self.interval = interval
        self.stopped = threading.Event()

    def run(self) -> None:
        failing = False
        while not self.stopped.is_set():
            try:
                self.step()
                if failing:
                    log.info("%s works again", self.name)
                failing = False
            except Exception as exc:
                if not failing:
                    log.exception("%s failed; trying again every %g s", self.name, self.interval)
                else:
                    log.debug("%s still failing: %s", self.name, exc)
                failing = True
            self.stopped.wait(self.interval)

    def stop(self) -> None:
        self.stopped.set()


class Housekeeping:
    """What ``serve`` schedules besides completion, at most once every ``interval`` seconds:
    running jobs whose heartbeat stopped are requeued (dicom_node.jobs.analyses.recover_lost),
    due and stale exports dispatched again (dicom_node.jobs.exports.dispatch_due), both through
    the outbox; then the dispatcher's own upkeep and the log file's rotation; every
    ``retention.check_seconds``, retention."""

    def __init__(self, db: Database, settings: Settings, dispatcher: Dispatcher, *, interval: float = 1.0) -> None:
        self.db = db
        self.settings = settings
        self.dispatcher = dispatcher
        self.interval = interval
        self.retention = Retention(db, settings)
        self._next = 0.0
        self._next_retention = 0.0

    def run_once(self) -> None:
        now = time.monotonic()
        if now < self._next:
            return
        self._next = now + self.interval
        analyses.recover_lost(self.db, lost_after=self.settings.worker.lost_after_seconds)
        exports.dispatch_due(self.db, stale_after=self.settings.export.stale_after_seconds)
        self.dispatcher.housekeeping()
        logs.rotate(
            self.settings.log_dir, max_bytes=self.settings.log_max_mb * 2**20, keep=self.settings.log_keep_files
        )
        if now >= self._next_retention:
            self._next_retention = now + self.settings.retention.check_seconds
            self.retention.run_once()


def where(settings: Settings) -> str:
    """Where the node keeps its data and its state, as ``serve`` and ``up`` say at start: the data
    dir, the database and the broker, their passwords masked."""
    return (
        f"data in {settings.data_dir}; database {redact(settings.effective_database_url)}; "
        f"broker {redact(settings.effective_broker_url)}"
    )


class Node:
    def __init__(self, settings: Settings, *, admin: bool = True) -> None:
        self.settings = settings
        self.admin = admin
        self._stop = StopRequest()  # set by the signal handlers
        self._children: list[BaseProcess] = []
        self._ctx = multiprocessing.get_context("spawn")

    def _spawn_listener(self) -> tuple[BaseProcess, Any]:
        """A listener child and the event it sets once it has bound its ports (or tried to)."""
        ready = self._ctx.Event()
        proc = self._ctx.Process(
            target=run_listener_process,
            args=(self.settings.model_dump_json(), ready, os.getpid()),
            name="listener",
            daemon=True,
        )
        proc.start()
        return proc, ready

    def run(self) -> int:
        settings = self.settings
        upgrade(settings.effective_database_url)
        storage = Storage(settings.storage_dir)
        removed = storage.remove_stale_incoming()  # before any listener writes
        if removed:
            log.info("removed %d unacknowledged temporary file(s) left by a crash", removed)
        data_dir_id(settings.data_dir, create=True)  # workers tell a shared volume by it (storage.identity)
        db = Database(settings.effective_database_url)
        if unclean_start(settings.data_dir):
            log.warning("the previous run did not stop cleanly: checking the index against the stored files")
            log.warning("index recovery added %d instance(s)", recover_index(storage, db))
        completion = Completion(db, settings.completion, storage_dir=settings.storage_dir)
        # Nothing completes before the listeners are up; then every open series gets a whole
        # quiet period again (a series arriving when the node stopped is not completed by the
        # downtime: its sender comes back to the listeners first).
        completion.hold()
        dispatcher = load_dispatcher(settings.dispatcher, settings=settings)
        log.info("%s", where(settings))
        housekeeping = Housekeeping(db, settings, dispatcher)
        relay = OutboxRelay(db, dispatcher)

        def tick() -> None:
            completion.run_once()
            housekeeping.run_once()
            relay.relay_once()

        notifier = Notifier(db, settings)
        loops: list[Loop] = [
            BackgroundLoop("completion", tick, settings.completion.poll_seconds),
            # Notifications apart from completion: a slow endpoint must not hold up the queue.
            BackgroundLoop("notifications", notifier.run_once, settings.notify.poll_seconds),
            # Backfills started in the admin pages (one at a time, each to its end; resumed after a restart).
            BackgroundLoop("backfills", lambda: run_next_backfill(db, settings), 5.0),
        ]
        admin_server = self._admin_server(db) if self.admin else None
        if admin_server is not None:
            loops.append(admin_server)
        for loop in loops:
            loop.start()
        spawned = [self._spawn_listener() for _ in range(settings.listener.processes)]
        self._children = [proc for proc, _ in spawned]
        readiness = [ready for _, ready in spawned]
        admin = (
            f", admin app on http://{settings.admin.host}:{settings.admin_port}/" if admin_server is not None else ""
        )
        log.info("node running: %d listener process(es)%s; Ctrl+C stops it", len(self._children), admin)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: self._stop.set())
        held_since = time.monotonic()
        while not self._stop.wait(0.2 if completion.held else 1.0):
            if completion.held and (
                all(r.is_set() for r in readiness) or time.monotonic() - held_since > _READY_WAIT_SECONDS
            ):
                completion.resume()
                log.debug("listeners up: series completion resumes (open series wait a whole quiet period)")
            for i, child in enumerate(self._children):
                if not child.is_alive():
                    log.error("listener process %s exited with %s; starting another", child.pid, child.exitcode)
                    self._children[i], readiness[i] = self._spawn_listener()
                    completion.resume()  # its connections were cut: their senders get a quiet period to come back
        log.info("stopping")
        for child in self._children:
            child.terminate()
        for child in self._children:
            child.join(10)
            if child.is_alive():
                child.kill()
        for loop in loops:
            loop.stop()
        notifier.close()
        db.dispose()
        clean_stop(settings.data_dir)
        return 0

    def _admin_server(self, db: Database) -> Loop:
        return AdminServerThread(self.settings, db)
