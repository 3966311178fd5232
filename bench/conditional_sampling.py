"""Cost of K conditional samples against one, for one image (goal: K=10 at most 1.3x K=1).

Prints one JSON object: median seconds of the network's scoring pass (trunk + noise head +
pooling + scoring + pairwise refinement) and of the whole `sample` call (with proposal
description and consistent inference) for K=1 and K=K, and their ratios.
"""

import argparse
import json
import statistics
import time

import numpy as np
import torch

from models.annotations import TagAnnotation
from models.conditional import ConditionalNet, describe_proposals
from models.images import as_image_tensor
from models.proposals import propose
from training.data.synthetic import CLASSES, render_scene


def median_seconds(run, repeats: int) -> float:
    run()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    scene = render_scene(np.random.default_rng(args.seed), args.size)
    proposals = propose(scene.image)
    net = ConditionalNet(len(CLASSES)).eval()
    image = as_image_tensor(scene.image)
    context = describe_proposals(image, proposals, net.config)
    tags = TagAnnotation(tuple(sorted(set(scene.labels))))

    results: dict[str, float | int] = {
        "image_size": args.size,
        "proposals": int(proposals.shape[0]),
        "k": args.k,
        "threads": args.threads,
    }
    with torch.no_grad():
        for k in (1, args.k):
            results[f"scores_k{k}_s"] = median_seconds(
                lambda k=k: net(image, context, k), args.repeats
            )
            results[f"sample_k{k}_s"] = median_seconds(
                lambda k=k: net.sample(scene.image, proposals, tags, k), args.repeats
            )
    results["scores_ratio"] = results[f"scores_k{args.k}_s"] / results["scores_k1_s"]
    results["sample_ratio"] = results[f"sample_k{args.k}_s"] / results["sample_k1_s"]
    print(
        json.dumps({key: round(v, 4) if isinstance(v, float) else v for key, v in results.items()})
    )


if __name__ == "__main__":
    main()
