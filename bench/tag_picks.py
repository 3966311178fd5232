"""What a model picks given tags (`ModelBundle.pseudo_labels`), against the ground truth.

For each image of a COCO ground-truth file, one sample given the image's tags; every picked
instance is sorted into one kind: right (IoU >= 0.5 with a ground-truth instance of its class),
other-class object (IoU >= 0.5 with an instance of another class), background (under 30% of it
on any object), same-class part or merged/larger, or mixed. Prints one JSON object with the
counts and the recall of the ground-truth instances at IoU 0.5. `--instances-per-tag` sets the
most instances of one tagged class in a sample (default 0: every instance of positive margin,
as served; 1: as the P-step draws its samples by default). Proposals are read
from (and written to) a training proposal cache, so on training images that training did not
downscale nothing is recomputed.
"""

import json
from collections import Counter

import torch
from training_images import open_inputs, parse_args, tag_picks

from models.delta import mask_iou


def pick_kind(mask: torch.Tensor, label: int, gt_masks: torch.Tensor, gt_labels: torch.Tensor):
    """The kind of one picked instance and the ground-truth index it finds (or None)."""
    iou = mask_iou(mask[None], gt_masks)[0]
    same = gt_labels == label
    best = int(torch.where(same, iou, torch.full_like(iou, -1.0)).argmax())
    if iou[best] >= 0.5:
        return "right", best
    if (iou[~same] >= 0.5).any():
        return "other-class object", None
    inside = (mask[None] & gt_masks).flatten(1).sum(1).float()
    area = mask.sum().float()
    if inside.sum() / area < 0.3:
        return "background", None
    if inside[best] / gt_masks[best].sum() > 0.8:
        return "same-class merged/larger", None
    if inside[best] / area > 0.8:
        return "same-class part", None
    return "mixed", None


def main() -> None:
    args = parse_args(__doc__, limit=200, instances_per_tag=0)
    bundle, dataset, cache = open_inputs(args, "masks")
    kinds: Counter[str] = Counter()
    found = total = 0
    for _, gt, _, _, pick in tag_picks(
        bundle, dataset, cache, args.limit, args.instances_per_tag or None
    ):
        gt_masks, gt_labels = torch.from_numpy(gt.masks), torch.from_numpy(gt.labels)
        hits = set()
        for mask, label in zip(pick.masks, pick.labels, strict=True):
            kind, hit = pick_kind(mask, int(label), gt_masks, gt_labels)
            kinds[kind] += 1
            if hit is not None:
                hits.add(hit)
        found += len(hits)
        total += len(gt_labels)
    print(json.dumps({"picks": dict(kinds), "gt": total, "recall": round(found / total, 4)}))


if __name__ == "__main__":
    main()
