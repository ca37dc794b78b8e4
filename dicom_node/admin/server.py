"""The admin app in a thread of ``dicom-node serve``: uvicorn on settings.admin.host and
settings.admin_port (DICOM_NODE_ADMIN_PORT, 8080 by default)."""

from __future__ import annotations

import logging
import threading

import uvicorn

from dicom_node.admin.app import create_app
from dicom_node.db import Database
from dicom_node.settings import Settings

log = logging.getLogger(__name__)


class AdminServerThread(threading.Thread):
    """``start()`` serves, ``stop()`` ends it (open requests finish first)."""

    def __init__(self, settings: Settings, db: Database) -> None:
        super().__init__(name="admin", daemon=True)
        self.host = settings.admin.host
        self.port = settings.admin_port
        config = uvicorn.Config(
            create_app(settings, db),
            host=self.host,
            port=self.port,
            log_config=None,  # the process's logging (dicom_node.logs) stays as it is
            access_log=False,
            lifespan="off",
            server_header=False,
            timeout_graceful_shutdown=5,
        )
        self.server = uvicorn.Server(config)

    def run(self) -> None:
        log.debug("admin app on http://%s:%d/", self.host, self.port)
        try:
            self.server.run()
        except SystemExit:
            # uvicorn exits when it can not bind; the DICOM side keeps running without the admin.
            log.error("the admin app could not listen on %s:%d; DICOM keeps running without it", self.host, self.port)

    @property
    def started(self) -> bool:
        return bool(self.server.started)

    def stop(self) -> None:
        self.server.should_exit = True
