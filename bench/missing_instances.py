"""The instances a pseudo label misses, and how many the prediction network finds (training
images, given tags).

A conditional sample keeps one instance per tagged class, so a second instance of a class is
background to the P-step. For each score threshold, the prediction network's detections of
tagged classes that overlap no instance of the sample (mask IoU < --max-iou-percent / 100)
join it. Prints one JSON object: per threshold, the pseudo
labels' recall (ground-truth instances with a same-class pseudo instance of IoU >= 0.5),
precision (pseudo instances with a same-class ground truth of IoU >= 0.5) and the number of
instances added and of those right.

Measured after round 1 of a tags run (bench/results.md): the detections it would add are
nearly all wrong, so pseudo labels are not completed this way in training.
"""

import json

import torch
from training_images import open_inputs, parse_args, tag_picks

from models.conditional import as_image_tensor
from models.delta import mask_iou
from models.structures import InstanceSet
from training.steps import predict_instances

THRESHOLDS = (0.15, 0.2, 0.3, 0.5)


def with_unmatched(sample: InstanceSet, extra: InstanceSet, max_iou: float) -> InstanceSet:
    """The sample's instances, then those of `extra` whose mask IoU with every instance of the
    sample is below max_iou."""
    if len(extra) == 0:
        return sample
    if len(sample):
        extra = extra.subset(mask_iou(extra.masks, sample.masks).amax(dim=1) < max_iou)
    return InstanceSet(
        masks=torch.cat([sample.masks, extra.masks]),
        labels=torch.cat([sample.labels, extra.labels]),
        scores=torch.cat([sample.scores, extra.scores]),
        proposal_ids=torch.cat([sample.proposal_ids, extra.proposal_ids]),
    )


def hits(instances: InstanceSet, masks: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """BoolTensor[N, G]: instance n has IoU >= 0.5 with ground truth g of its class."""
    same_class = instances.labels[:, None] == labels[None, :]
    return (mask_iou(instances.masks, masks) >= 0.5) & same_class


def main() -> None:
    args = parse_args(__doc__, limit=80, max_iou_percent=30)
    bundle, dataset, cache = open_inputs(args, "masks")
    bundle.prediction.eval()
    counts = {
        t: dict.fromkeys(("truth", "recalled", "pseudo", "right", "added", "added_right"), 0)
        for t in (None, *THRESHOLDS)
    }
    for sample, truth, tags, _, pick in tag_picks(bundle, dataset, cache, args.limit):
        image = as_image_tensor(sample.image.copy())
        detections = predict_instances(bundle.prediction, image, min(THRESHOLDS))
        detections = detections.subset(torch.isin(detections.labels, torch.tensor(tags.labels)))
        masks, labels = torch.from_numpy(truth.masks), torch.from_numpy(truth.labels)
        for threshold, count in counts.items():
            extra = detections.subset(detections.scores >= (threshold or 2.0))
            pseudo = with_unmatched(pick, extra, args.max_iou_percent / 100)
            matched = hits(pseudo, masks, labels)
            count["truth"] += len(labels)
            count["recalled"] += int(matched.any(0).sum())
            count["pseudo"] += len(pseudo)
            count["right"] += int(matched.any(1).sum())
            count["added"] += len(pseudo) - len(pick)
            count["added_right"] += int(matched[len(pick) :].any(1).sum())
    result = {}
    for threshold, count in counts.items():
        result["sample only" if threshold is None else f"score >= {threshold}"] = {
            "recall": round(count["recalled"] / max(count["truth"], 1), 3),
            "precision": round(count["right"] / max(count["pseudo"], 1), 3),
            "added": count["added"],
            "added_right": count["added_right"],
        }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
