"""The ``dicom-node`` command: one entry point, sub-commands registered by each part of the tree.

Heavy imports (torch, celery, fastapi) happen inside the handlers, so ``dicom-node ae list`` stays
fast.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

Handler = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    from dicom_node import __version__, node_cli

    parser = argparse.ArgumentParser(
        prog="dicom-node",
        description="COVID-CT AI node: DICOM listener, analysis workers, admin. Not for clinical use.",
    )
    parser.add_argument("--version", action="version", version=f"dicom-node {__version__}")
    parser.add_argument("--config", help="YAML settings file (also DICOM_NODE_CONFIG)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    node_cli.register(sub)
    for register in _optional_registrars():
        register(sub)
    return parser


def _optional_registrars() -> list[Callable[[argparse._SubParsersAction], None]]:
    """Sub-commands owned by other packages; each module exposes ``register(subparsers)``."""
    import importlib

    out = []
    for module_name in ("model.phantom_cli", "model.cli", "worker.cli", "dicom_node.admin.cli"):
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            # Only tolerate the module itself being absent (a part not built yet), never a
            # missing dependency inside it.
            if exc.name is None or not module_name.startswith(exc.name):
                raise
            continue
        out.append(module.register)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Handler = args.handler
    try:
        return int(handler(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
