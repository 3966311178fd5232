"""How much the conditional network's noise moves its choices given tags (training images).

For each tagged class of each image, K samples of the class margins s[i, c] - s[i, bg]: the
number of distinct best proposals among the K samples, the spread the noise causes (standard
deviation over the samples, averaged over proposals) and the gap between the two best
proposals of the mean margins. A sampler whose noise spread is far below the gaps returns K
equal samples. Prints one JSON object with the medians and the share of tags with more than
one distinct pick.
"""

import json

import numpy as np
import torch
from training_images import open_inputs, parse_args

from models.conditional import as_image_tensor, describe_proposals


def main() -> None:
    args = parse_args(__doc__, limit=50, k=10)
    bundle, dataset, cache = open_inputs(args, "tags")
    network = bundle.conditional.eval()
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
