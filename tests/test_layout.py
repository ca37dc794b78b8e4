"""The arrows between the top-level packages (README, "Architecture"), read from the source.

Covers: model/ imports nothing of dicom_node/ or worker/; dicom_node/ imports worker/ only in its
command-line composition root (dicom_node/cli.py); no package imports tests/. Every absolute import
counts, at the top of a module or inside a function. Not covered: relative imports (the packages
use none), imports by name at run time (importlib), cycles within a package.
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


@pytest.mark.parametrize("package", ["dicom_node", "worker", "model", "benchmarks"])
def test_no_package_imports_the_tests(package: str) -> None:
    assert sorted(f for f, m in top_levels(package).items() if "tests" in m) == []
