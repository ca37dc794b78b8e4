"""Ingest benchmark: how fast the node takes a CT series, against DCMTK's storescp in the same run.

A 300-slice 512x512 CT phantom is sent by DCMTK's storescu, alternately, to storescp (writing
files, no fsync, no index) and to `dicom-node serve` (durable write + index), several times;
medians and the ratio node / storescp are printed. Then: 4 senders at once against the same 4 in
sequence (the listener processes share the port), and the listener's memory over 3,000 instances.

    .venv/bin/python -m benchmarks.ingest [--runs 5] [--slices 300] [--memory-instances 3000]

Needs dcmtk. Each run sends a fresh copy of the series (new UIDs), so the node really stores it.
Not a test: these machines are shared and noisy; read the ratio, not the seconds.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pydicom
from pydicom.uid import UID

from dicom_node.storage.files import Storage
from model.contract.uids import derived_uid
from model.phantoms.writer import write_phantom_series
from tests.harness.peers import NodeProcess, cli, free_port, node_env, port_open, require_tool, wait_until


def copies(template: Path, out: Path, n: int, tag: str) -> list[Path]:
    """n copies of a series, each with its own study/series/instance UIDs."""
    files = sorted(template.glob("*.dcm"))
    dirs = []
    for k in range(n):
        d = out / f"{tag}{k}"
        d.mkdir(parents=True)
        study, series = (
            UID(derived_uid("bench", tag, str(k), "study")),
            UID(derived_uid("bench", tag, str(k), "series")),
        )
        for i, f in enumerate(files):
            ds = pydicom.dcmread(f)
            ds.StudyInstanceUID, ds.SeriesInstanceUID = study, series
            ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = UID(derived_uid("bench", tag, str(k), str(i)))
            ds.save_as(d / f.name)
        dirs.append(d)
    return dirs


def send(folder: Path, port: int, called: str) -> float:
    storescu = require_tool("storescu", "dcmtk")
    start = time.perf_counter()
    command = [storescu, "+sd", "-aet", "STORESCU", "-aec", called, "127.0.0.1", str(port), str(folder)]
    result = subprocess.run(command, env={"TCP_NODELAY": "1", "PATH": "/usr/bin:/bin"}, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"storescu to {called} failed: {result.stderr}")
    return elapsed


def fsync_floor(folder: Path, work: Path) -> float:
    """What durability alone costs on this disk: the series' files written as the node writes
    them (temporary file, fdatasync, rename, directory fsync), without DICOM or an index."""
    storage = Storage(work / "floor")
    blobs = [f.read_bytes() for f in sorted(folder.glob("*.dcm"))]
    start = time.perf_counter()
    for i, blob in enumerate(blobs):
        storage.write(
            f"1.2/1.2.3/1.2.3.{i}.dcm",
            blob,
            sop_class_uid="1.2",
            sop_instance_uid=f"1.2.3.{i}",
            transfer_syntax_uid="1.2.840.10008.1.2.1",
        )
    elapsed = time.perf_counter() - start
    shutil.rmtree(work / "floor")
    return elapsed


def listener_rss(node: NodeProcess) -> int:
    assert node.proc is not None
    children = psutil.Process(node.proc.pid).children(recursive=True)
    return sum(c.memory_info().rss for c in children if "multiprocessing" in " ".join(c.cmdline()))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--concurrent", type=int, default=4)
    parser.add_argument("--memory-instances", type=int, default=3000)
    parser.add_argument("--processes", type=int, default=2, help="listener processes of the node")
    args = parser.parse_args(argv)

    storescp = require_tool("storescp", "dcmtk")
    work = Path(tempfile.mkdtemp(prefix="ingest-bench-"))
    try:
        print(f"phantom: {args.slices} slices {args.rows}x{args.rows} ...", flush=True)
        template = write_phantom_series(
            "covid", work / "template", seed=1, slices=args.slices, rows=args.rows, columns=args.rows, write_masks=False
        )
        series = copies(template, work / "send", args.runs, "run")

        scp_port, node_port = free_port(), free_port()
        scp_out = work / "storescp-out"
        scp_out.mkdir()
        scp = subprocess.Popen(
            [storescp, "-od", str(scp_out), str(scp_port)],
            env={"TCP_NODELAY": "1"},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        env = node_env(work / "node", admin_port=free_port(), listener__processes=args.processes)
        (work / "node").mkdir()
        cli(env, "db", "upgrade")
        cli(env, "ae", "add-local", "COVIDNODE", "--port", str(node_port), "--quiet-seconds", "2")
        cli(env, "ae", "add-source", "STORESCU")
        node = NodeProcess(env, ["serve", "--no-admin"]).start()
        try:
            node.wait_for_port(node_port)
            wait_until(lambda: port_open(scp_port), 10, "storescp")
            # Warm-up of both (page cache, imports, connections).
            send(template, scp_port, "ANY")
            send(template, node_port, "COVIDNODE")
            t_scp, t_node, t_floor = [], [], []
            for k, folder in enumerate(series):
                t_scp.append(send(folder, scp_port, "ANY"))
                t_node.append(send(folder, node_port, "COVIDNODE"))
                t_floor.append(fsync_floor(folder, work))
                print(
                    f"run {k + 1}: storescp {t_scp[-1]:.2f} s   node {t_node[-1]:.2f} s   "
                    f"fsync floor {t_floor[-1]:.2f} s",
                    flush=True,
                )
            m_scp, m_node, m_floor = statistics.median(t_scp), statistics.median(t_node), statistics.median(t_floor)

            # Several senders at once versus the same in sequence.
            shutil.rmtree(work / "send")
            group = copies(template, work / "conc", 2 * args.concurrent, "conc")
            seq_dirs, par_dirs = group[: args.concurrent], group[args.concurrent :]
            start = time.perf_counter()
            for d in seq_dirs:
                send(d, node_port, "COVIDNODE")
            t_seq = time.perf_counter() - start
            start = time.perf_counter()
            with ThreadPoolExecutor(args.concurrent) as pool:
                list(pool.map(lambda d: send(d, node_port, "COVIDNODE"), par_dirs))
            t_par = time.perf_counter() - start
            shutil.rmtree(work / "conc")

            # Memory over many instances.
            batches = max(1, args.memory_instances // args.slices)
            mem = copies(template, work / "mem", 1, "mem")[0]
            rss_start = listener_rss(node)
            for b in range(batches):
                for f in mem.glob("*.dcm"):
                    ds = pydicom.dcmread(f)
                    ds.SeriesInstanceUID = UID(derived_uid("bench-mem", str(b)))
                    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = UID(
                        derived_uid("bench-mem", str(b), f.name)
                    )
                    ds.save_as(f)
                send(mem, node_port, "COVIDNODE")
            rss_end = listener_rss(node)
        finally:
            node.stop()
            scp.terminate()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print()
    print(f"series: {args.slices} x {args.rows}x{args.rows}, {args.runs} runs, medians")
    print(f"  storescp (DCMTK, files only)      {m_scp:6.2f} s")
    print(f"  dicom-node (fsync + index)        {m_node:6.2f} s")
    print(f"  ratio node / storescp             {m_node / m_scp:6.2f}   (target <= 2.5)")
    print(
        f"  of which durable writes alone     {m_floor:6.2f} s   "
        "(fdatasync + rename + directory fsync per file, same disk)"
    )
    print(
        f"  node beyond durable writes        {m_node - m_floor:6.2f} s   "
        f"ratio to storescp {(m_node - m_floor) / m_scp:.2f}"
    )
    print(
        f"{args.concurrent} senders: in sequence {t_seq:.2f} s, at once {t_par:.2f} s, "
        f"speed-up {t_seq / t_par:.2f}x   (target >= 1.5)"
    )
    print(
        f"listener memory over {batches * args.slices} instances: {rss_start / 2**20:.0f} MB -> "
        f"{rss_end / 2**20:.0f} MB ({(rss_end - rss_start) / 2**20:+.0f} MB, target within 50 MB)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
