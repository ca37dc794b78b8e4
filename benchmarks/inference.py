"""Inference speed and memory of the model: the full predict path against the bare network.

On one phantom series (model.phantoms, covid, by default 300 slices of 512 x 512, written as a DICOM
folder first), in one process:

- full path, CAM-only: ``Predictor.predict(folder)`` (read DICOM, lungs, pre-processing, network,
  CAM joint map in the series geometry, regions), its stage timings;
- bare network: the same pre-processed lung slices through the network alone, same batch size,
  same device and precision (torch.inference_mode; AMP + channels_last on CUDA);
- overhead = full-path seconds / bare-network seconds (target <= 2), and slices per
  second of both, counted over the lung slices the network sees and over all series slices;
- CAM + Integrated Gradients: the same series with ``--ig-slices`` slices of IG; its extra cost in
  total and per IG slice;
- peak memory of the full path for the series, measured in a fresh child process (peak RSS; on
  CUDA also the peak CUDA memory allocated), target <= 3 GB.

Usage (repository root)::

    .venv/bin/python benchmarks/inference.py                      # CPU, shipped weights
    .venv/bin/python benchmarks/inference.py --device cuda --json /tmp/inference.json

The phantom is synthetic: speed numbers only. Not for clinical use.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from model.inference.io import load_series
from model.inference.lung import find_lungs
from model.inference.multiscale_cam import Predictor, settings_for
from model.inference.network import mixed_precision
from model.inference.options import InferenceOptions
from model.inference.preprocess import prepare_lung_slices
from model.inference.weights import load_weights
from model.phantoms.phantom import make_phantom
from model.phantoms.writer import write_phantom_series


def _predictor(weights: str | None, device: str, mode: str, ig_slices: int, batch: int) -> Any:
    settings = settings_for(
        weights, InferenceOptions(device=device, batch_size=batch, localisation=mode, ig_slices=ig_slices)
    )
    return Predictor(load_weights(weights, device), settings)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _bare_forward(predictor: Any, inputs: Any, device: str) -> float:
    """Seconds of the network alone over ``inputs`` (already pre-processed), as the predictor runs it."""
    net = predictor.network
    _sync(device)
    t = time.perf_counter()
    with torch.inference_mode():
        for start in range(0, inputs.shape[0], predictor.settings.batch_size):
            x = predictor._batch_to_device(inputs[start : start + predictor.settings.batch_size])
            with mixed_precision(predictor.device):
                out = net(x)
            out.mean_logits.float().cpu()
    _sync(device)
    return time.perf_counter() - t


def child_peak_memory(
    folder: str, weights: str | None, device: str, mode: str, ig_slices: int, batch: int
) -> dict[str, Any]:
    """Run one full predict in this (fresh) process and report its peak memory."""
    predictor = _predictor(weights, device, mode, ig_slices, batch)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    result = predictor.predict(Path(folder))
    out: dict[str, Any] = {
        "seconds": time.perf_counter() - t,
        "decision": result.decision,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
    }
    if device.startswith("cuda"):
        out["peak_cuda_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def run(args: argparse.Namespace) -> dict[str, Any]:
    report: dict[str, Any] = {
        "device": args.device,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "notice": "Synthetic phantom; speed only. Not for clinical use.",
    }
    if args.device.startswith("cuda"):
        report["gpu"] = torch.cuda.get_device_name(0)
    with tempfile.TemporaryDirectory(prefix="inference-bench-") as tmp:
        t = time.perf_counter()
        phantom = make_phantom("covid", seed=args.seed, slices=args.slices, rows=args.rows, columns=args.rows)
        folder = write_phantom_series(phantom, Path(tmp) / "series", write_masks=False)
        report["series"] = {
            "slices": phantom.shape[0],
            "rows": phantom.shape[1],
            "columns": phantom.shape[2],
            "spacing_mm": list(phantom.spacing),
            "made_in_s": round(time.perf_counter() - t, 1),
        }
        del phantom

        cam = _predictor(args.weights, args.device, "cam", 0, args.batch)
        spec = cam.input_spec
        report["model"] = cam.model.info.to_json() | {"input": spec.to_json()}
        # Warm-up (allocator, kernels, caches) on a few slices.
        warm = torch.randn(min(args.batch, 8), 1, spec.height, spec.width)
        _bare_forward(cam, warm, args.device)

        runs = []
        for _ in range(args.repeat):
            _sync(args.device)
            t = time.perf_counter()
            result = cam.predict(folder)
            _sync(args.device)
            runs.append((time.perf_counter() - t, result))
        full_s, result = min(runs, key=lambda r: r[0])
        lung_idx = np.flatnonzero(result.lung_slices)
        n_lung, n_all = int(lung_idx.size), len(result.lung_slices)

        volume = load_series(folder)
        lungs = find_lungs(volume.hu, volume.spacing, superior_last=volume.superior_last, segmenter=cam.model.lungs)
        pixels = (volume.spacing[1], volume.spacing[2])
        inputs = torch.from_numpy(
            prepare_lung_slices(volume.hu, lungs, spec, pixels, lung_idx, volume.spacing[0]).inputs
        )
        del volume, lungs
        bare_s = min(_bare_forward(cam, inputs, args.device) for _ in range(args.repeat))
        report["cam_only"] = {
            "full_path_s": round(full_s, 3),
            "stages_s": {k: round(v, 3) for k, v in result.timings.items()},
            "bare_network_s": round(bare_s, 3),
            "overhead": round(full_s / bare_s, 3),
            "lung_slices": n_lung,
            "series_slices": n_all,
            "full_path_lung_slices_per_s": round(n_lung / full_s, 2),
            "bare_network_lung_slices_per_s": round(n_lung / bare_s, 2),
            "full_path_series_slices_per_s": round(n_all / full_s, 2),
            "decision": result.decision,
        }
        del result, runs

        if args.ig_slices > 0:
            ig = _predictor(args.weights, args.device, "cam+ig", args.ig_slices, args.batch)
            _sync(args.device)
            t = time.perf_counter()
            res_ig = ig.predict(folder)
            _sync(args.device)
            ig_s = time.perf_counter() - t
            ig_stage = res_ig.timings.get("ig", 0.0)
            report["cam_plus_ig"] = {
                "ig_slices": args.ig_slices,
                "ig_steps": ig.settings.localisation.ig_steps,
                "full_path_s": round(ig_s, 3),
                "ig_stage_s": round(ig_stage, 3),
                "ig_per_slice_s": round(ig_stage / max(1, min(args.ig_slices, n_lung)), 3),
                "cost_vs_cam_only": round(ig_s / full_s, 3),
            }
            del res_ig

        if not args.skip_memory:
            cmd = [
                sys.executable,
                __file__,
                "--child",
                str(folder),
                "--device",
                args.device,
                "--batch",
                str(args.batch),
                "--mode",
                args.memory_mode,
                "--ig-slices",
                str(args.ig_slices),
            ]
            if args.weights:
                cmd += ["--weights", args.weights]
            done = subprocess.run(cmd, capture_output=True, text=True, check=True)
            child = json.loads(done.stdout.strip().splitlines()[-1])
            report["peak_memory"] = {
                "mode": args.memory_mode,
                **{k: round(v, 1) if isinstance(v, float) else v for k, v in child.items()},
                "target_mb": 3072,
            }
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", default=None, help="weights folder (default: shipped)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--rows", type=int, default=512)
    parser.add_argument("--seed", type=int, default=4242)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--ig-slices", type=int, default=8)
    parser.add_argument("--repeat", type=int, default=1, help="best of N for the full path and the bare network")
    parser.add_argument(
        "--memory-mode",
        choices=("auto", "cam", "cam+ig"),
        default="cam",
        help="localisation mode of the peak-memory run",
    )
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="cam", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(
            json.dumps(child_peak_memory(args.child, args.weights, args.device, args.mode, args.ig_slices, args.batch))
        )
        return 0
    report = run(args)
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        args.json.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
