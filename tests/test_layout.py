"""The arrows between the top-level packages (README, "Architecture"), read from the source.

Covers: model/ imports nothing of dicom_node/ or worker/; dicom_node/ imports worker/ only in its
command-line composition root (dicom_node/cli.py); the installed packages (dicom_node/, worker/,
model/) import nothing of tests/, and benchmarks/ only its harness (tests/harness/). Every absolute
import counts, at the top of a module or inside a function. Not covered: relative imports (the
packages use none), imports by name at run time (importlib), cycles within a package.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def imported_modules(path: Path) -> set[str]:
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
    return out


def top_levels(package: str) -> dict[str, set[str]]:
    return {
        str(p.relative_to(REPO)): {m.split(".")[0] for m in imported_modules(p)} for p in (REPO / package).rglob("*.py")
    }


def test_model_knows_nothing_of_the_node() -> None:
    offenders = {
        f: sorted(m & {"dicom_node", "worker", "tests"})
        for f, m in top_levels("model").items()
        if m & {"dicom_node", "worker", "tests"}
    }
    assert offenders == {}


def test_the_node_knows_worker_only_in_its_composition_root() -> None:
    offenders = sorted(f for f, m in top_levels("dicom_node").items() if "worker" in m)
    assert offenders == ["dicom_node/cli.py"]


@pytest.mark.parametrize("package", ["dicom_node", "worker", "model"])
def test_no_installed_package_imports_the_tests(package: str) -> None:
    assert sorted(f for f, m in top_levels(package).items() if "tests" in m) == []


def test_the_benchmarks_import_only_the_harness_of_the_tests() -> None:
    offenders = {
        str(p.relative_to(REPO)): sorted(m for m in imported_modules(p) if m.split(".")[0] == "tests")
        for p in (REPO / "benchmarks").rglob("*.py")
    }
    bad = {
        f: [m for m in ms if not (m == "tests.harness" or m.startswith("tests.harness."))]
        for f, ms in offenders.items()
    }
    assert {f: ms for f, ms in bad.items() if ms} == {}
