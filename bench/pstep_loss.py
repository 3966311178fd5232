"""Cost of one P-step training step with K pseudo targets against K = 1.

Prints one JSON object: median seconds of a training step (pseudo_target_loss + backward + SGD
step) on synthetic scenes and their proposals, with K distinct targets, with K copies of one
target (the K samples given boxes nearly always agree) and with one target, timed interleaved,
and their ratios to K = 1 (the design asks for <= 2 at K = 10).

    python bench/pstep_loss.py --preset tiny --size 256 --k 10 --repeats 10 [--device cuda]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

from models.images import as_image_tensor
from models.prediction import build_prediction_net
from models.prediction_loss import pseudo_target_loss
from models.proposals import propose
from models.regions import RegionProposals, describe_regions
from training.data.synthetic import render_scene

NUM_CLASSES = 5


def synthetic_batch(
    size: int, k: int, batch: int, copies: bool
) -> tuple[list[Tensor], list[RegionProposals], list[list[dict[str, Tensor]]]]:
    """Synthetic scenes with their segment proposals, and per image `k` pseudo targets of 1-4
    of its proposals with random classes, as the conditional network's samples are (all copies
    of one when `copies`)."""
    rng = np.random.default_rng(0)
    images, proposals, targets = [], [], []
    for index in range(batch):
        scene = render_scene(np.random.default_rng([0, index]), size)
        image = as_image_tensor(scene.image)
        regions = describe_regions(image, propose(scene.image))
        per_image = []
        for _ in range(1 if copies else k):
            rows = torch.from_numpy(rng.choice(len(regions), rng.integers(1, 5), replace=False))
            per_image.append(
                {
                    "boxes": regions.boxes[rows],
                    "labels": torch.from_numpy(rng.integers(1, NUM_CLASSES + 1, len(rows))),
                    "masks": regions.masks[rows].to(torch.uint8),
                }
            )
        images.append(image)
        proposals.append(regions)
        targets.append(per_image * k if copies else per_image)
    return images, proposals, targets


def make_step(
    preset: str, size: int, k: int, batch: int, device: torch.device, copies: bool = False
) -> Callable[[], None]:
    """One training step (loss, backward, SGD step) with `k` pseudo targets per image, all
    copies of one when `copies`."""
    torch.manual_seed(0)
    model = build_prediction_net(preset=preset, num_classes=NUM_CLASSES).to(device)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    images, proposals, targets = synthetic_batch(size, k, batch, copies)
    images = [image.to(device) for image in images]
    proposals = [regions.to(device) for regions in proposals]
    targets = [[{n: v.to(device) for n, v in t.items()} for t in ts] for ts in targets]

    def step() -> None:
        losses = pseudo_target_loss(model, images, proposals, targets)
        loss = sum(v for name, v in losses.items() if name.startswith("loss_"))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    return step


def seconds(step: Callable[[], None], device: torch.device) -> float:
    start = time.perf_counter()
    step()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    shape = (args.preset, args.size, args.k, args.batch, device)
    steps = {
        f"k{args.k}": make_step(*shape),
        f"k{args.k}_copies": make_step(*shape, copies=True),
        "k1": make_step(args.preset, args.size, 1, args.batch, device),
    }
    for _ in range(args.warmup):
        for step in steps.values():
            step()
    # interleaved, so that load from other processes hits all alike
    times: dict[str, list[float]] = {name: [] for name in steps}
    for _ in range(args.repeats):
        for name, step in steps.items():
            times[name].append(seconds(step, device))
    medians = {name: statistics.median(t) for name, t in times.items()}
    result = {**vars(args), **{f"step_s_{name}": round(m, 4) for name, m in medians.items()}}
    for name in (f"k{args.k}", f"k{args.k}_copies"):
        result[f"ratio_{name}"] = round(medians[name] / medians["k1"], 3)
        # the fastest run of each is the one least disturbed by other processes
        result[f"ratio_of_fastest_{name}"] = round(min(times[name]) / min(times["k1"]), 3)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
