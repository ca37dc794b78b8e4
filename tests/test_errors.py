"""The node's one error base (dicom_node.errors) and what the command line makes of its kinds.

Covers: every exception class defined in dicom_node/ and worker/ derives from NodeError; each kind's
exit status and HTTP status; the command line's one line for a kind, for SettingsError (every bad
field on one line) and for a Refused; an error of no kind (a bug if it reaches the command line)
keeps its traceback. Not covered here: the commands' own failures as a person meets them
(tests/commands/test_errors.py, test_jobs_cli.py) and the REST API's statuses (tests/admin/test_api.py).
"""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

from dicom_node.cli import explain
from dicom_node.errors import Conflict, Invalid, NodeError, NotFound, Refused, Unavailable
from dicom_node.jobs.analyses import JobActive, LostOwnership
from dicom_node.settings import SettingsError

REPO = Path(__file__).resolve().parents[1]


def _exception_classes(package: str) -> list[tuple[str, str]]:
    """(module, class) of every class in ``package`` whose name says it is an error, or that
    derives from a name that does."""
    found = []
    for path in sorted((REPO / package).rglob("*.py")):
        if "migrations" in path.parts:
            continue
        module = ".".join(path.relative_to(REPO).with_suffix("").parts)
        for node in ast.parse(path.read_text()).body:
            if not isinstance(node, ast.ClassDef):
                continue
            bases = [ast.unparse(b) for b in node.bases]
            if any(b.split(".")[-1].endswith(("Error", "Exception", "Timeout", "Taken")) for b in bases) or any(
                b.split(".")[-1] in {"NodeError", "Invalid", "Refused", "NotFound", "Conflict", "Unavailable"}
                for b in bases
            ):
                found.append((module, node.name))
    return found


@pytest.mark.parametrize("package", ["dicom_node", "worker"])
def test_every_exception_of_the_node_derives_from_node_error(package: str) -> None:
    classes = _exception_classes(package)
    assert len(classes) >= (15 if package == "dicom_node" else 1)
    outside = [
        f"{module}.{name}"
        for module, name in classes
        if not issubclass(getattr(importlib.import_module(module), name), NodeError)
    ]
    assert outside == []


def test_each_kind_has_its_exit_and_http_status() -> None:
    assert [(k.exit_status, k.http_status) for k in (Invalid, Refused, NotFound, Conflict, Unavailable)] == [
        (2, 422),
        (2, 422),
        (2, 404),
        (2, 409),
        (2, 503),
    ]
    assert (NodeError.exit_status, NodeError.http_status) == (None, 500)
    # The kinds stay what callers and pydantic catch: a bad value is a ValueError, a missing thing a LookupError.
    assert issubclass(Invalid, ValueError) and issubclass(NotFound, LookupError)


def test_the_command_line_says_a_kind_in_one_line_and_exits_2() -> None:
    assert explain(NotFound("job 9 does not exist")) == ("job 9 does not exist", 2)
    assert explain(Refused("port", "70000 is out of range 1-65535")) == (
        "refused: port: 70000 is out of range 1-65535",
        2,
    )
    assert explain(JobActive(3, "running")) == ("job 3 is running; only a finished job can be retried", 2)
    assert explain(Unavailable("cannot reach the broker\nredis://x")) == ("cannot reach the broker redis://x", 2)
    settings = SettingsError("setting admin_port: 0 is out of range\nsetting worker.device: 'tpu' is not allowed")
    assert explain(settings) == (
        "invalid settings: setting admin_port: 0 is out of range; setting worker.device: 'tpu' is not allowed",
        2,
    )


def test_an_error_of_no_kind_keeps_its_traceback() -> None:
    assert explain(LostOwnership("job 1: attempt 2 no longer owns the job")) is None
    assert explain(RuntimeError("a bug")) is None
