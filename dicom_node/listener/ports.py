"""SO_REUSEPORT among this node's own processes only.

The listener processes of one node share each port through SO_REUSEPORT (the kernel spreads
associations over them). The kernel lets any process of the same user join such a port: a second
node (another data dir) would silently take half of the first one's associations. So before
binding, a listener takes a lock on ``<lock dir>/port-<port>.lock`` (flock), which says which node
holds the port: the processes of the node named there share it, any other node finds it taken and
reports the port in use. The kernel drops a process's locks when it dies, so a crashed node leaves
nothing stale. A program that is not a node and holds the port is found by bind() itself
(EADDRINUSE, as it does not set SO_REUSEPORT).
"""

from __future__ import annotations

import errno
import fcntl
import os
import tempfile
from pathlib import Path

from dicom_node.errors import NodeError


class PortTaken(NodeError, OSError):
    """The port is held by another node (or another program)."""

    def __init__(self, port: int, reason: str) -> None:
        super().__init__(errno.EADDRINUSE, reason)
        self.port = port
        self.reason = reason

    def __str__(self) -> str:
        return self.reason


def lock_dir() -> Path:
    """One directory per user for the machine (SO_REUSEPORT shares only within one user)."""
    path = Path(tempfile.gettempdir()) / f"dicom-node-ports-{os.getuid()}"
    path.mkdir(mode=0o700, exist_ok=True)
    return path


class PortLock:
    """This node's hold on a port, for as long as the lock is open (see the module docstring)."""

    def __init__(self, port: int, node_id: str, node_name: str, directory: Path | None = None) -> None:
        self.port = port
        self.node_id = node_id
        self.node_name = node_name
        self.directory = directory or lock_dir()
        self._fd: int | None = None

    def acquire(self) -> None:
        """Share the port with this node's other processes, or raise PortTaken."""
        guard = os.open(self.directory / f"port-{self.port}.guard", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(guard, fcntl.LOCK_EX)  # one process at a time decides, the decision is short
            fd = os.open(self.directory / f"port-{self.port}.lock", os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                # Held (shared) by the processes of the node written in the file.
                owner = os.pread(fd, 4096, 0).decode(errors="replace")
                owner_id, _, owner_name = owner.partition("\n")
                if owner_id != self.node_id:
                    os.close(fd)
                    raise PortTaken(
                        self.port,
                        f"port {self.port} is in use by another dicom-node "
                        f"({owner_name.strip() or 'unknown data dir'})",
                    ) from None
                fcntl.flock(fd, fcntl.LOCK_SH)
            else:
                # Nobody holds it: it is this node's now.
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"{self.node_id}\n{self.node_name}\n".encode(), 0)
                fcntl.flock(fd, fcntl.LOCK_SH)  # under the guard, nobody can slip in between
            self._fd = fd
        finally:
            os.close(guard)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
