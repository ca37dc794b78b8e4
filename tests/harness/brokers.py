"""Private broker servers for tests that stop and restart their broker: a Redis and a RabbitMQ
(Debian's packages) of their own, on their own ports and folders, started and stopped by the test,
so the shared services on 6379 and 5672 are never touched.

Both keep their messages on disk across a restart, as a production broker is set up to: Redis with
its append-only file synced at every write; RabbitMQ with its durable (quorum) queues in its own
Mnesia folder.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import uuid
from pathlib import Path

from tests.harness.peers import free_port, port_open, require_tool, wait_until

RABBITMQ_BIN = Path("/usr/lib/rabbitmq/bin")


class PrivateRedis:
    """redis-server on a free loopback port, append-only file in ``workdir``."""

    def __init__(self, workdir: Path) -> None:
        self.exe = require_tool("redis-server", "redis-server")
        self.workdir = Path(workdir)
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "PrivateRedis":
        self.workdir.mkdir(parents=True, exist_ok=True)
        args = [
            self.exe,
            "--bind",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--dir",
            str(self.workdir),
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--save",
            "",
            "--logfile",
            str(self.workdir / "redis.log"),
        ]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
        wait_until(lambda: self._alive(), 30, f"Redis on port {self.port}", interval=0.1)
        return self

    def _alive(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(
                f"redis-server exited {self.proc.returncode}: "
                f"{(self.workdir / 'redis.log').read_text(errors='replace')[-2000:]}"
            )
        return port_open(self.port)

    def stop(self) -> None:
        """SIGTERM: Redis flushes its append-only file and exits."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)

    def restart(self) -> None:
        self.stop()
        self.start()


class PrivateRabbitMQ:
    """rabbitmq-server as a node of its own (name, AMQP and distribution ports, Mnesia and log
    folders, Erlang cookie under ``workdir``); guest/guest may connect over loopback."""

    def __init__(self, workdir: Path) -> None:
        require_tool("rabbitmq-server", "rabbitmq-server")
        self.workdir = Path(workdir)
        self.port = free_port()
        self.dist_port = free_port()
        self.node = f"dicomnode-test-{uuid.uuid4().hex[:8]}@localhost"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}//"

    def _env(self) -> dict[str, str]:
        w = self.workdir
        return dict(
            os.environ,
            HOME=str(w),
            RABBITMQ_NODENAME=self.node,
            RABBITMQ_NODE_IP_ADDRESS="127.0.0.1",
            RABBITMQ_NODE_PORT=str(self.port),
            RABBITMQ_DIST_PORT=str(self.dist_port),
            RABBITMQ_MNESIA_BASE=str(w / "mnesia"),
            RABBITMQ_LOG_BASE=str(w / "log"),
            RABBITMQ_PID_FILE=str(w / "rabbitmq.pid"),
            RABBITMQ_CONFIG_FILE=str(w / "rabbitmq"),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(w / "advanced.config"),
            RABBITMQ_CONF_ENV_FILE=str(w / "rabbitmq-env.conf"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(w / "enabled_plugins"),
        )

    def start(self) -> "PrivateRabbitMQ":
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "enabled_plugins").write_text("[].\n")
        (self.workdir / "rabbitmq.conf").write_text("loopback_users = none\n")
        (self.workdir / "rabbitmq-env.conf").touch()
        log = open(self.workdir / "server.out", "ab")
        self.proc = subprocess.Popen(
            [str(RABBITMQ_BIN / "rabbitmq-server")],
            env=self._env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        wait_until(self._alive, 120, f"RabbitMQ {self.node} on port {self.port}", interval=0.3)
        return self

    def _alive(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(
                f"rabbitmq-server exited {self.proc.returncode}: "
                f"{(self.workdir / 'server.out').read_text(errors='replace')[-3000:]}"
            )
        return port_open(self.port)

    def stop(self) -> None:
        """A clean shutdown (rabbitmqctl), then whatever is left of the node's processes."""
        if self.proc is None or self.proc.poll() is not None:
            return
        subprocess.run(
            [str(RABBITMQ_BIN / "rabbitmqctl"), "-n", self.node, "shutdown"],
            env=self._env(),
            capture_output=True,
            timeout=120,
        )
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def restart(self) -> None:
        self.stop()
        self.start()

    def queues(self) -> dict[str, tuple[str, bool]]:
        """{queue name: (type, durable)} as the node lists them."""
        out = subprocess.run(
            [
                str(RABBITMQ_BIN / "rabbitmqctl"),
                "-n",
                self.node,
                "list_queues",
                "name",
                "type",
                "durable",
                "--quiet",
                "--no-table-headers",
            ],
            env=self._env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        rows = (line.split("\t") for line in out.splitlines() if line.strip())
        return {r[0]: (r[1], r[2] == "true") for r in rows if len(r) >= 3}

    def messages(self, queue: str) -> int:
        """Messages in ``queue``, ready and unacknowledged."""
        out = subprocess.run(
            [
                str(RABBITMQ_BIN / "rabbitmqctl"),
                "-n",
                self.node,
                "list_queues",
                "name",
                "messages",
                "--quiet",
                "--no-table-headers",
            ],
            env=self._env(),
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        ).stdout
        counts = dict(line.split("\t")[:2] for line in out.splitlines() if "\t" in line)
        return int(counts.get(queue, 0))

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.workdir, ignore_errors=True)
