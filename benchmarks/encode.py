"""ROI encoding benchmark: ROIs per second of ``ai.hashing.infer.encode``.

Run from the repository root::

    python -m benchmarks.encode           # batches 1, 3, 64, 256 on CPU (+ CUDA when present)
    python -m benchmarks.encode --quick
    python -m benchmarks.encode --n-bits 32 --roi-size 64 --channels 3

Encoding is timed apart from search (``benchmarks.search``): the Siamese
paper's 383 ms per query was mostly encoding. Batch 1 is a single-view query,
batch 3 a nodule queried with three views; large batches are what the worker
uses per series. Untrained weights (speed does not depend on their values).
Targets: >= 200 ROIs/s on 2 CPU cores, >= 5,000 ROIs/s on an H100.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from ai.hashing.infer import encode
from ai.hashing.model import HashNet, HashNetConfig


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print a markdown table."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.encode", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--batch-sizes", default="1,3,64,256")
    parser.add_argument(
        "--rois", type=int, default=1024, help="ROIs encoded per large-batch measurement"
    )
    parser.add_argument("--n-bits", type=int, default=64)
    parser.add_argument("--roi-size", type=int, default=64)
    parser.add_argument("--channels", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="fewer ROIs and repeats")
    parser.add_argument(
        "--device", action="append", help="device(s); default cpu and cuda when present"
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.rois, args.repeats = 256, 2
    devices = args.device or (["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    cfg = HashNetConfig(in_channels=args.channels, roi_size=args.roi_size, n_bits=args.n_bits)
    torch.manual_seed(0)
    model = HashNet(cfg)
    mb = model.n_parameters() * 4 / 2**20
    rng = np.random.default_rng(0)
    print(
        f"model: {model.n_parameters():,} parameters ({mb:.2f} MiB float32), "
        f"input (n, {args.channels}, {args.roi_size}, {args.roi_size}), {args.n_bits} bits x 3; "
        f"torch threads {torch.get_num_threads()}"
    )
    print("\n| device | batch | ROIs/s | ms per batch (median) | note |")
    print("| --- | ---: | ---: | ---: | --- |")
    for device in devices:
        note = (
            torch.cuda.get_device_name()
            if device.startswith("cuda")
            else f"{torch.get_num_threads()} threads"
        )
        if device.startswith("cuda") and not torch.cuda.is_available():
            print(f"| {device} | – | – | – | no CUDA |")
            continue
        for bs in (int(b) for b in args.batch_sizes.split(",")):
            n = max(bs, args.rois if bs >= 32 else bs * 8)
            rois = rng.random((n, args.channels, args.roi_size, args.roi_size), dtype=np.float32)
            encode(model, rois[: min(n, 2 * bs)], device=device, batch_size=bs)  # warm-up
            times = []
            for _ in range(args.repeats):
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                t0 = time.perf_counter()
                encode(model, rois, device=device, batch_size=bs)
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                times.append(time.perf_counter() - t0)
            best = min(times)
            per_batch_ms = float(np.median(times)) / (n / bs) * 1e3
            print(
                f"| {device} | {bs} | {n / best:,.0f} | {per_batch_ms:.2f} | {note} |", flush=True
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
