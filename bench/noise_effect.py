"""How much the conditional network's noise moves its choices given tags (training images).

For each tagged class of each image, K samples of the class margins s[i, c] - s[i, bg]: the
number of distinct best proposals among the K samples, the spread the noise causes (standard
deviation over the samples, averaged over proposals) and the gap between the two best
proposals of the mean margins. A sampler whose noise spread is far below the gaps returns K
equal samples. Then what the samples are worth against the ground truth: top-1 IoU and
best-of-K IoU of the K consistent samples (training.evaluate.assist_quality).

`--noise-amplitude A...` measures the same network with its noise drawn in [-A, A] instead of
the bundle's range. Prints one JSON object per amplitude.
"""

import dataclasses
import json

import numpy as np
import torch
from training_images import argument_parser, open_inputs

from models.annotations import TagAnnotation
from models.conditional import describe_proposals
from models.images import as_image_tensor
from training.evaluate import assist_quality


def measure(network, items: list, k: int) -> dict:
    spreads, gaps, distinct, top1, best_of_k = [], [], [], [], []
    for index, (sample, gt, proposals) in enumerate(items):
        image = as_image_tensor(sample.image.copy())
        context = describe_proposals(image, proposals, network.config)
        with torch.no_grad():
            scores = network(image, context, k, torch.Generator().manual_seed(index))
        for label in sample.tags:
            margins = scores[:, :, label] - scores[:, :, 0]  # (K, P)
            best_two = margins.mean(dim=0).topk(min(2, margins.shape[1])).values
            spreads.append(float(margins.std(dim=0).mean()))
            gaps.append(float(best_two[0] - best_two[-1]))
            distinct.append(len(set(margins.argmax(dim=1).tolist())))
        tags = TagAnnotation(tuple(sorted(sample.tags)))
        generator = torch.Generator().manual_seed(index)
        samples = network.sample(sample.image, proposals, tags, k, generator)
        instances = [zip(s.labels.tolist(), s.masks.numpy(), strict=True) for s in samples]
        quality = assist_quality(
            [list(i) for i in instances], list(zip(gt.labels.tolist(), gt.masks, strict=True))
        )
        top1.append(quality.top1_iou)
        best_of_k.append(quality.best_of_k_iou)
    return {
        "tags": len(distinct),
        "median_noise_spread": round(float(np.median(spreads)), 4),
        "median_best_two_gap": round(float(np.median(gaps)), 4),
        "share_with_distinct_picks": round(float(np.mean(np.array(distinct) > 1)), 4),
        "top1_iou": round(float(np.mean(top1)), 4),
        "best_of_k_iou": round(float(np.mean(best_of_k)), 4),
    }


def main() -> None:
    parser = argument_parser(__doc__, limit=50, k=10)
    parser.add_argument("--noise-amplitude", type=float, nargs="+", metavar="A")
    args = parser.parse_args()
    bundle, dataset, cache = open_inputs(args, "tags")
    network = bundle.conditional.eval()
    items = [
        (dataset[i], dataset.ground_truth(i), cache.get(dataset[i].image))
        for i in range(min(args.limit, len(dataset)))
    ]
    for amplitude in args.noise_amplitude or [network.config.noise_amplitude]:
        network.config = dataclasses.replace(network.config, noise_amplitude=amplitude)
        row = {"model": str(args.model), "noise_amplitude": amplitude, "k": args.k}
        print(json.dumps(row | measure(network, items, args.k)), flush=True)


if __name__ == "__main__":
    main()
