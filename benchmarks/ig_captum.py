"""Integrated Gradients: ours (model.inference.localise.integrated_gradients) against Captum's
IntegratedGradients, the field's reference, on the shipped network and input size.

    .venv/bin/python benchmarks/ig_captum.py [--slices 8] [--steps 25] [--repeat 3]

Ours runs one forward pass per batch of interpolation steps and one backward per scale (each
scale's logit depends on the same forward graph); Captum's attribute() takes one target output,
so the three scales need three runs. Prints seconds of both, their ratio and the largest
difference between the attributions. Speed only; random input, not for clinical use.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from captum.attr import IntegratedGradients

from model.inference import localise
from model.inference.weights import load_weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=8)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    model = load_weights(None)
    net, spec = model.network.eval(), model.input_spec
    torch.manual_seed(0)
    x = torch.rand(args.slices, 1, spec.height, spec.width) * 2 - 1
    targets = torch.zeros(args.slices, dtype=torch.long)

    def ours() -> torch.Tensor:
        return localise.integrated_gradients(net, x, targets, steps=args.steps, baseline=-1.0, batch=args.steps)

    def captum() -> torch.Tensor:
        out = []
        for s in range(len(net.heads)):
            ig = IntegratedGradients(lambda inp, s=s: net(inp).logits[s])
            out.append(
                ig.attribute(
                    x,
                    baselines=-1.0,
                    target=targets,
                    n_steps=args.steps,
                    method="riemann_middle",
                    internal_batch_size=args.steps,
                )
            )
        return torch.stack(out, dim=1)

    times: dict[str, float] = {}
    results: dict[str, torch.Tensor] = {}
    for name, fn in (("ours", ours), ("captum", captum)):
        fn()  # warm-up
        best = float("inf")
        for _ in range(args.repeat):
            t = time.perf_counter()
            results[name] = fn()
            best = min(best, time.perf_counter() - t)
        times[name] = best
    print(json.dumps({
        "slices": args.slices, "steps": args.steps, "input": [spec.height, spec.width],
        "threads": torch.get_num_threads(),
        "ours_s": round(times["ours"], 3), "captum_s": round(times["captum"], 3),
        "captum_over_ours": round(times["captum"] / times["ours"], 2),
        "max_abs_difference": float((results["ours"] - results["captum"]).abs().max()),
    }, indent=2))  # fmt: skip


if __name__ == "__main__":
    main()
