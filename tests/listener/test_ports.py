"""SO_REUSEPORT among one node's own processes only (dicom_node.listener.ports): a second node
finds the port taken, the first node's processes share it, and a dead holder leaves nothing."""

from __future__ import annotations

from pathlib import Path

import pytest

from dicom_node.listener.ports import PortLock, PortTaken


def test_one_node_shares_a_port_and_another_is_refused(tmp_path: Path) -> None:
    first = PortLock(11112, "node-a", "/data/a", tmp_path)
    sibling = PortLock(11112, "node-a", "/data/a", tmp_path)
    first.acquire()
    sibling.acquire()
    other = PortLock(11112, "node-b", "/data/b", tmp_path)
    with pytest.raises(PortTaken, match="in use by another dicom-node \\(/data/a\\)"):
        other.acquire()
    PortLock(11113, "node-b", "/data/b", tmp_path).acquire()  # another port is free
    first.release()
    with pytest.raises(PortTaken):
        other.acquire()  # the sibling still holds it
    sibling.release()
    other.acquire()  # released by all of node a (as when its processes die): node b's now
    with pytest.raises(PortTaken, match="/data/b"):
        PortLock(11112, "node-a", "/data/a", tmp_path).acquire()
    other.release()
