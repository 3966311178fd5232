"""RoIAlign forward + backward: torchvision's kernel against `models.roi_align` (CPU).

Prints one JSON object: median milliseconds of a forward and backward pass of each, timed
interleaved on the same features and RoIs, the ratio, and the largest difference of their
outputs. The default sizes are a `tiny` P-step's box branch: two images' ~290 proposals each
on the stride-4 map of a 160 px input with 64 channels.

    python bench/roi_align.py --rois 580 --channels 64 --size 40 --repeats 20
"""

import argparse
import json
import statistics
import time
from collections.abc import Callable

import torch
from torch import Tensor
from torchvision.ops import roi_align

from models.roi_align import sparse_roi_align


def timed_pass(
    pool: Callable[..., Tensor], features: Tensor, rois: Tensor, upstream: Tensor
) -> float:
    features.grad = None
    start = time.perf_counter()
    out = pool(features, rois, tuple(upstream.shape[-2:]), 0.25, 2)
    (out * upstream).sum().backward()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rois", type=int, default=580)
    parser.add_argument("--channels", type=int, default=64)
    parser.add_argument("--size", type=int, default=40, help="feature map side (pixels)")
    parser.add_argument("--output", type=int, default=7)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()

    generator = torch.Generator().manual_seed(0)
    features = torch.randn(2, args.channels, args.size, args.size, generator=generator)
    features.requires_grad_(True)
    extent = 4.0 * args.size  # image pixels at stride 4
    corner = torch.rand(args.rois, 2, generator=generator) * extent * 0.8
    size = 4 + torch.rand(args.rois, 2, generator=generator) * extent * 0.4
    index = torch.randint(0, 2, (args.rois, 1), generator=generator).float()
    rois = torch.cat([index, corner, corner + size], dim=1)
    upstream = torch.randn(args.rois, args.channels, args.output, args.output, generator=generator)

    pools = {"torchvision": roi_align, "sparse": sparse_roi_align}
    seconds: dict[str, list[float]] = {name: [] for name in pools}
    for _ in range(args.repeats):
        for name, pool in pools.items():
            seconds[name].append(timed_pass(pool, features, rois, upstream))
    with torch.no_grad():
        difference = (
            sparse_roi_align(features, rois, (args.output,) * 2, 0.25, 2)
            - roi_align(features, rois, (args.output,) * 2, 0.25, 2)
        ).abs().max()
    medians = {name: statistics.median(s) * 1000 for name, s in seconds.items()}
    print(
        json.dumps(
            {
                "rois": args.rois,
                "channels": args.channels,
                "threads": torch.get_num_threads(),
                "ms_torchvision": round(medians["torchvision"], 2),
                "ms_sparse": round(medians["sparse"], 2),
                "speedup": round(medians["torchvision"] / medians["sparse"], 2),
                "max_abs_difference": float(difference),
            }
        )
    )


if __name__ == "__main__":
    main()
