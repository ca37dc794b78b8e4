"""What dicom_node/listener/reactor.py relies on inside pynetdicom, pinned.

reactor.py copies a few private methods of pynetdicom 3.0.4 and touches private attributes (its
RELIES_ON lists them). These tests fail loudly, naming the piece, when an upgrade changes any of
it: then compare reactor.py with the new pynetdicom source, adapt it, and record the new
fingerprint here. They need no network; tests/integration runs the protocol through reactor.py.
"""

from __future__ import annotations

import hashlib
import importlib
import inspect
import tomllib
from importlib.metadata import version
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from dicom_node.listener.reactor import RELIES_ON

TESTED = "3.0.4"
# sha256 of the source of each pynetdicom method reactor.py copies, extends or calls, as in
# pynetdicom 3.0.4.
SOURCES = {
    "pynetdicom.dul.DULServiceProvider.__init__": "c82dafa9438ddf70685917cb15d2bfbc814aa0ad5233ffb0ae650faedc7570f0",
    "pynetdicom.dul.DULServiceProvider._read_pdu_data": (
        "19f2d4e38c13c83586365d93dd5cd96a0c7c665cb37251054b3e1f246e9f431b"
    ),
    "pynetdicom.dul.DULServiceProvider.run_reactor": "e3a10eb3a0931e4854af33b9496e92d9679522aca26b0e04da8967559b9e2803",
    "pynetdicom.dul.DULServiceProvider.kill_dul": "5ceccf8dd01c2072c377d18bb1be284941a345bd40f03bd1e03a864ab0817842",
    "pynetdicom.dul.DULServiceProvider._decode_pdu": "fc71dd1bf853e1ce79d29b11731a26a4f6ee9eb697026ad611f8fc91f8aa69c9",
    "pynetdicom.dul.DULServiceProvider._process_recv_primitive": (
        "4c0ebbb3e646e35e8e5bbc27ee2f1e6b2c82bbf619232f47639a6cbae092ed39"
    ),
    "pynetdicom.dul.DULServiceProvider._is_transport_event": (
        "8725ed03bb8fbdefef249d5d9888c120e6277d7b6aa2c4f537e23027186e1253"
    ),
    "pynetdicom.association.Association.__init__": "eb07516b8009ad8fa338201dea39578380fbf9f2c59fa5e368e20250eb97c4ea",
    "pynetdicom.association.Association._run_reactor": (
        "f28838c5559e462a563750cfc9f3790027f4bb7e2223baf42c9f5d682c359dee"
    ),
    "pynetdicom.association.Association.run_reactor": (
        "ed8bbbe3b3d6ddaee3e8673ba25b2ab2a4c45f25bc1d8ae7b48ebafd09499e6d"
    ),
    "pynetdicom.association.Association.kill": "8f9713666a7f4cffd840899f023090e9786668945a7c844f99d7a834077c3972",
    "pynetdicom.association.Association._serve_request": (
        "2f24c1759cdf6c8c433094f2a8dd8144f76f5547f03daed7b94e0f78bc12f877"
    ),
    "pynetdicom.transport.AssociationSocket.recv": "6bc20a33b1b7cfe76d4ad4407ca242563bc6206fde4b4e1cf7a2fbb1f11d621d",
    "pynetdicom.transport.RequestHandler._create_association": (
        "05c8d12b79863cdbdb901ce37187b7030a0434c5cd89d219ed0bedbda679a61e"
    ),
    "pynetdicom.transport.RequestHandler.handle": "034823fb4df3a87467bd0d45193f0d457fcf59c87fda8e97b2edfb89426f76dd",
    "pynetdicom.transport.AssociationServer.get_request": (
        "925a4f3a3042f6e4b944505d06dc19c41e10ff7dec5385c794d62d31fd000300"
    ),
    "pynetdicom.transport.AssociationSocket.close": "c726c8db53813d551475b8b4560634708a64c50bfe818fd2d1df1c06bdeec099",
    "pynetdicom.transport.AssociationServer.shutdown": (
        "e8e2c3a41009886d8544d17ce01118a81bac81b612a1d17f30fc200971f41db9"
    ),
}
# Private names reactor.py reads or sets.
NAMES = ("pynetdicom._config.LOG_HANDLER_LEVEL", "pynetdicom._globals.MODE_ACCEPTOR")


def _source_sha256(qualified: str) -> str:
    module, cls, attr = qualified.rsplit(".", 2)
    member = getattr(getattr(importlib.import_module(module), cls), attr)
    return hashlib.sha256(inspect.getsource(member).encode()).hexdigest()


def test_pynetdicom_is_the_tested_minor_version_and_pyproject_pins_it() -> None:
    installed = version("pynetdicom")
    assert installed.split(".")[:2] == TESTED.split(".")[:2], (
        f"pynetdicom {installed} is installed; reactor.py follows {TESTED}"
    )
    project = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())["project"]
    pins = [Requirement(r) for r in project["dependencies"] if Requirement(r).name == "pynetdicom"]
    assert len(pins) == 1 and TESTED in pins[0].specifier and "3.1.0" not in pins[0].specifier, pins


def test_everything_reactor_relies_on_is_pinned_here() -> None:
    assert set(RELIES_ON) == set(SOURCES) | set(NAMES)


@pytest.mark.parametrize("qualified", sorted(SOURCES))
def test_pynetdicom_code_reactor_copies_is_unchanged(qualified: str) -> None:
    assert _source_sha256(qualified) == SOURCES[qualified], (
        f"pynetdicom changed {qualified}: compare dicom_node/listener/reactor.py with the new source, adapt it, "
        "then record the new sha256 here"
    )


@pytest.mark.parametrize("qualified", NAMES)
def test_private_names_reactor_uses_exist(qualified: str) -> None:
    module, attr = qualified.rsplit(".", 1)
    assert hasattr(importlib.import_module(module), attr), (
        f"pynetdicom no longer has {qualified}: adapt dicom_node/listener/reactor.py"
    )
