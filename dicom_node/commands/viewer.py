"""``dicom-node viewer``: a local Orthanc and the OHIF viewer to look at the results, for the
one-machine demo (dicom_node/viewer). Not a PACS for patients: research software, not for
clinical use."""

from __future__ import annotations

import argparse
import signal
from pathlib import Path

from dicom_node.commands.common import check_port_free, command, settings_from
from dicom_node.errors import Invalid, Unavailable
from dicom_node.stopping import StopRequest
from dicom_node.validation import check_ae_title, check_port
from dicom_node.viewer.ohif import OHIF_VERSION, ohif_dist
from dicom_node.viewer.orthanc import OrthancProcess, orthanc_config
from dicom_node.viewer.proxy import start_viewer_server
from model.contract.notice import NOT_FOR_CLINICAL_USE


def register(sub: argparse._SubParsersAction) -> None:
    p = command(
        sub,
        "viewer",
        "a local Orthanc + OHIF viewer to look at the results",
        """
        dicom-node viewer
        dicom-node ae add-destination VIEWER --host 127.0.0.1 --port 4243
        dicom-node viewer --port 3001 --dicom-port 4244 --aet VIEWER2
        """,
        description=f"{NOT_FOR_CLINICAL_USE} Start a private Orthanc (Debian packages orthanc, orthanc-dicomweb) that "
        f"takes DICOM on --dicom-port, and the OHIF viewer {OHIF_VERSION} (npm package @ohif/app, fetched once "
        "with npm) on http://127.0.0.1:PORT reading it. Send the CT there and make it a destination of the node",
    )
    p.add_argument("--port", type=int, default=3000, help="the viewer's HTTP port on 127.0.0.1 (default 3000)")
    # Not Orthanc's own defaults (4242, 8042): a PACS Orthanc may already run there.
    p.add_argument("--dicom-port", type=int, default=4243, help="Orthanc's DICOM port (default 4243)")
    p.add_argument("--aet", default="VIEWER", help="Orthanc's AE title (default VIEWER)")
    p.add_argument(
        "--orthanc-http-port", type=int, default=8043, help="Orthanc's own HTTP port on 127.0.0.1 (default 8043)"
    )
    p.add_argument("--dir", type=Path, default=None, help="Orthanc's storage and log (default: <data dir>/viewer)")
    p.add_argument("--fetch-only", action="store_true", help="fetch the OHIF viewer into its cache and exit")
    p.set_defaults(handler=cmd_viewer)


def cmd_viewer(args: argparse.Namespace) -> int:
    for name, value in (
        ("--port", args.port),
        ("--dicom-port", args.dicom_port),
        ("--orthanc-http-port", args.orthanc_http_port),
    ):
        ok, reason = check_port(value)
        if not ok:
            raise Invalid(f"{name}: {reason}")
    ok, reason = check_ae_title(args.aet)
    if not ok:
        raise Invalid(f"--aet: {reason}")
    try:
        dist = ohif_dist()
    except RuntimeError as exc:  # npm or Orthanc missing or failing: the message says which
        raise Unavailable(str(exc)) from None
    if args.fetch_only:
        print(f"OHIF {OHIF_VERSION} is in {dist}")
        return 0
    for port, what, option in (
        (args.port, "the viewer", "--port"),
        (args.dicom_port, "Orthanc's DICOM", "--dicom-port"),
        (args.orthanc_http_port, "Orthanc's HTTP", "--orthanc-http-port"),
    ):
        check_port_free(
            "127.0.0.1" if option != "--dicom-port" else "0.0.0.0", port, what, f"choose another with {option}"
        )
    folder = args.dir or settings_from(args).data_dir / "viewer"
    config = orthanc_config(folder, aet=args.aet, dicom_port=args.dicom_port, http_port=args.orthanc_http_port)
    try:
        orthanc = OrthancProcess(folder, config).start()
    except RuntimeError as exc:  # npm or Orthanc missing or failing: the message says which
        raise Unavailable(str(exc)) from None
    try:
        server = start_viewer_server(dist, orthanc.url, port=args.port)
    except OSError as exc:
        orthanc.stop()
        raise Unavailable(f"--port {args.port}: {exc.strerror or exc}") from None
    print(
        f"Viewer: {server.url} (OHIF {OHIF_VERSION}), reading Orthanc {args.aet} at 127.0.0.1:{args.dicom_port} "
        f"(storage {folder}). {NOT_FOR_CLINICAL_USE}\n"
        f"Send the CT to {args.aet} as well as to the node, and the results to it:\n"
        f"  dicom-node ae add-destination {args.aet} --host 127.0.0.1 --port {args.dicom_port}\n"
        "Ctrl-C stops both.",
        flush=True,
    )
    stop = StopRequest()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        stop.wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        server.server_close()
        orthanc.stop()
    return 0
