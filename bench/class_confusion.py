"""Where the prediction network puts its class probability on the objects of a COCO file.

For each ground-truth instance of the first `--limit` images, the segment proposal with the
highest mask IoU with it and the prediction network's class distribution there (as evaluation
scores it): prints one JSON object with the means of the instance's own class, of background
and of the other classes, and the mean best IoU. A network trained from tags that puts much on
other classes has learnt the confusions of its pseudo labels between tagged classes. Proposals
are read from (and written to) a proposal cache.
"""

import json
import statistics

import torch
from training_images import open_inputs, parse_args

from models.delta import mask_iou
from models.images import as_image_tensor
from models.regions import describe_regions


def main() -> None:
    args = parse_args(__doc__, limit=200)
    bundle, dataset, cache = open_inputs(args, "masks")
    own, background, other, best_iou = [], [], [], []
    for index in range(min(args.limit, len(dataset))):
        sample = dataset[index]
        image = as_image_tensor(sample.image)
        proposals = cache.get(sample.image)
        probs = bundle.prediction.class_log_probs(image, describe_regions(image, proposals)).exp()
        gt = dataset.ground_truth(index)
        iou = mask_iou(proposals, torch.from_numpy(gt.masks))  # (P, G)
        for g, label in enumerate(gt.labels.tolist()):
            best = int(iou[:, g].argmax())
            own.append(float(probs[best, label]))
            background.append(float(probs[best, 0]))
            other.append(1.0 - own[-1] - background[-1])
            best_iou.append(float(iou[best, g]))
    means = {
        "own_class": statistics.mean(own),
        "background": statistics.mean(background),
        "other_classes": statistics.mean(other),
        "best_proposal_iou": statistics.mean(best_iou),
    }
    print(json.dumps({"instances": len(own)} | {k: round(v, 3) for k, v in means.items()}))


if __name__ == "__main__":
    with torch.no_grad():
        main()
