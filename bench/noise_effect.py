"""How much the conditional network's noise moves its choices given tags (training images).

For each tagged class of each image, K samples of the class margins s[i, c] - s[i, bg]: the
number of distinct best proposals among the K samples, the spread the noise causes (standard
deviation over the samples, averaged over proposals) and the gap between the two best
proposals of the mean margins. A sampler whose noise spread is far below the gaps returns K
equal samples. Prints one JSON object with the medians and the share of tags with more than
one distinct pick.
"""

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from models.bundle import load_bundle
from models.conditional import as_image_tensor, describe_proposals
from training.data.coco import CocoDataset
from training.proposal_cache import ProposalCache


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--cache-dir", type=Path, required=True)
    parser.add_argument("--limit", type=int, default=50)
    parser.add_argument("--k", type=int, default=10)
    args = parser.parse_args()

    bundle = load_bundle(args.model)
    network = bundle.conditional.eval()
    dataset = CocoDataset(args.data, args.images, "tags")
    cache = ProposalCache(args.cache_dir, bundle.proposal_settings)
    spreads, gaps, distinct = [], [], []
    for index in range(min(args.limit, len(dataset))):
        sample = dataset[index]
        image = as_image_tensor(sample.image.copy())
        context = describe_proposals(image, cache.get(sample.image), network.config)
        with torch.no_grad():
            scores = network(image, context, args.k, torch.Generator().manual_seed(index))
        for label in sample.tags:
            margins = scores[:, :, label] - scores[:, :, 0]  # (K, P)
            best_two = margins.mean(dim=0).topk(min(2, margins.shape[1])).values
            spreads.append(float(margins.std(dim=0).mean()))
            gaps.append(float(best_two[0] - best_two[-1]))
            distinct.append(len(set(margins.argmax(dim=1).tolist())))
    print(
        json.dumps(
            {
                "model": str(args.model),
                "tags": len(distinct),
                "median_noise_spread": round(float(np.median(spreads)), 4),
                "median_best_two_gap": round(float(np.median(gaps)), 4),
                "share_with_distinct_picks": round(float(np.mean(np.array(distinct) > 1)), 4),
            }
        )
    )


if __name__ == "__main__":
    main()
