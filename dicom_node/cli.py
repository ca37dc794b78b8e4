"""The ``dicom-node`` command: one entry point, sub-commands registered by each part of the tree.

This is the composition root of the command line: the one module of dicom_node that knows the
other top-level packages (model's and worker's commands). Each part registers its own
sub-commands with ``register(subparsers)`` and imports its heavy dependencies (torch, Celery,
FastAPI) inside its handlers, so ``dicom-node ae list`` stays fast.

A failure a person can fix (a bad setting or database URL, a server that does not answer, a port
in use, missing weights, an input that is not a CT series) ends the command with one line that
says what to do, and exit status 2: the node's errors of a kind (dicom_node.errors) say it
themselves, :func:`explain` words the few foreign ones (SQLAlchemy's, the model's); ``-v`` shows
the traceback instead. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

from sqlalchemy.exc import OperationalError

from dicom_node import __version__
from dicom_node.admin import cli as admin_cli
from dicom_node.commands import aes, backfill, database, run, series_jobs, storage, triage, viewer
from dicom_node.errors import NodeError
from dicom_node.settings import CONFIG_ENV, ENV_PREFIX
from model import cli as model_cli
from model.contract.notice import NOT_FOR_CLINICAL_USE
from model.phantoms import cli as phantom_cli
from worker import cli as worker_cli

Handler = Callable[[argparse.Namespace], int]
LOG_LEVEL_ENV = f"{ENV_PREFIX}LOG_LEVEL"


EXAMPLES = """\
first steps (README.md, "Install" to "Send a study and see the result"):
  dicom-node up                                  run everything here; Ctrl+C stops it
  dicom-node ae add-source STORESCU              accept studies from this calling AE
  dicom-node ae add-destination PACS --host 127.0.0.1 --port 4242
  dicom-node series list                         what arrived
  dicom-node jobs list                           what was analysed and sent

every command has its own help and an example: dicom-node COMMAND --help
"""


def explain(exc: BaseException) -> tuple[str, int] | None:
    """The one line and exit status for a failure a person can fix, or None for a bug (which keeps
    its traceback)."""
    if isinstance(exc, NodeError):
        return None if exc.exit_status is None else (exc.one_line(), exc.exit_status)
    message = _foreign(exc)
    return None if message is None else (message, 2)


def _foreign(exc: BaseException) -> str | None:
    """The one line for an error of a library or of the model (which knows nothing of the node)."""
    if isinstance(exc, OperationalError):
        reason = next((line.strip() for line in str(exc.orig).splitlines() if line.strip()), type(exc.orig).__name__)
        return f"the database stopped answering: {reason}; is it running? (run with -v for the details)"
    # Imported by the commands that need them (torch, pydicom): such an error can come only from a
    # module that is loaded.
    weights = sys.modules.get("model.inference.weights")
    if weights is not None and isinstance(exc, weights.WeightsError):
        return (
            f"model weights: {exc}; name a folder with model.safetensors and metadata.json "
            "(--weights, or worker.weights_dir), or leave it out for the shipped weights"
        )
    reader = sys.modules.get("model.inference.io")
    if reader is not None and isinstance(exc, reader.SeriesReadError):
        return exc.reason
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dicom-node",
        description=f"COVID-CT AI node: DICOM listener, analysis workers, admin. {NOT_FOR_CLINICAL_USE}",
        epilog=EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"dicom-node {__version__}")
    parser.add_argument("--config", help="YAML settings file (also DICOM_NODE_CONFIG)")
    parser.add_argument(
        "-v", "--verbose", "--debug", dest="verbose", action="store_true",
        help="tracebacks of errors, the node's details and other libraries' messages in the log (log_level DEBUG)",
    )  # fmt: skip
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (
        database,
        aes,
        series_jobs,
        backfill,
        storage,
        triage,
        run,
        viewer,
        phantom_cli,
        model_cli,
        worker_cli,
        admin_cli,
    ):
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    # For this process's later loads and every process it starts (listeners, workers).
    if args.config:
        os.environ[CONFIG_ENV] = str(Path(args.config).resolve())
    if args.verbose:
        os.environ[LOG_LEVEL_ENV] = "DEBUG"
    handler: Handler = args.handler
    try:
        return int(handler(args) or 0)
    except KeyboardInterrupt:
        return 130
    except Exception as exc:
        known = explain(exc)
        if known is None or args.verbose:
            raise  # a bug, or asked for: the traceback
        message, status = known
        print(f"dicom-node: {message}", file=sys.stderr)
        return status


if __name__ == "__main__":
    sys.exit(main())
