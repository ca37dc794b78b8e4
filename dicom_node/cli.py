"""The ``dicom-node`` command: one entry point, sub-commands registered by each part of the tree.

This is the composition root of the command line: the one module of dicom_node that knows the
other top-level packages (model's and worker's commands). Each part registers its own
sub-commands with ``register(subparsers)`` and imports its heavy dependencies (torch, Celery,
FastAPI) inside its handlers, so ``dicom-node ae list`` stays fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

from dicom_node import __version__
from dicom_node.admin import cli as admin_cli
from dicom_node.commands import activity, aes, database, run
from dicom_node.settings import CONFIG_ENV
from model import cli as model_cli
from model.contract.notice import NOT_FOR_CLINICAL_USE
from model.phantoms import cli as phantom_cli
from worker import cli as worker_cli

Handler = Callable[[argparse.Namespace], int]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dicom-node",
        description=f"COVID-CT AI node: DICOM listener, analysis workers, admin. {NOT_FOR_CLINICAL_USE}",
    )
    parser.add_argument("--version", action="version", version=f"dicom-node {__version__}")
    parser.add_argument("--config", help="YAML settings file (also DICOM_NODE_CONFIG)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (database, aes, activity, run, phantom_cli, model_cli, worker_cli, admin_cli):
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.config:
        # For this process's later loads and every process it starts (listeners, workers).
        os.environ[CONFIG_ENV] = str(Path(args.config).resolve())
    handler: Handler = args.handler
    try:
        return int(handler(args) or 0)
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
