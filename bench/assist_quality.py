"""Annotation-assist quality of a model's pseudo labels (docs/design.md, Evaluation).

For every image of a COCO ground-truth file, the model samples K segmentations given the
image's tags (or boxes) from the ground truth, as `/v1/pseudo-labels` does
(`ModelBundle.pseudo_labels`); prints one JSON object with the mean
top-1 IoU and best-of-K IoU (training.evaluate.assist_quality) and, for reference, the best IoU
any proposal reaches (the ceiling of a proposal-based sampler).
"""

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from models.annotations import BoxAnnotation, TagAnnotation
from models.bundle import load_bundle
from models.delta import mask_iou
from models.proposals import propose
from training.data.coco import CocoDataset
from training.evaluate import assist_quality


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--images", type=Path, required=True)
    parser.add_argument("--hints", choices=("tags", "boxes"), default="tags")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument(
        "--draws", type=int, help="draw this many and keep the k most frequent distinct ones"
    )
    parser.add_argument(
        "--conditional-only",
        action="store_true",
        help="sample from the conditional network alone, without the prediction network's "
        "class evidence (what a bundle whose prediction network is untrained serves)",
    )
    parser.add_argument(
        "--instances-per-tag",
        type=int,
        help="given tags, the most instances of one tagged class in a sample (default: every "
        "instance of positive margin, as served)",
    )
    parser.add_argument("--limit", type=int, default=50)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    bundle = load_bundle(args.model)
    if args.conditional_only:
        bundle.metadata["prediction_trained"] = False
    dataset = CocoDataset(args.data, args.images, "masks")
    top1, best_of_k, ceiling = [], [], []
    for index in tqdm(range(min(args.limit, len(dataset))), desc="images"):
        sample = dataset[index]
        gt = dataset.ground_truth(index)
        if args.hints == "tags":
            hints = TagAnnotation(tuple(sorted(sample.tags)))
            proposals = propose(sample.image, settings=bundle.proposal_settings)
        else:
            hints = BoxAnnotation(torch.from_numpy(gt.boxes), torch.from_numpy(gt.labels))
            proposals = propose(sample.image, gt.boxes, settings=bundle.proposal_settings)
        generator = torch.Generator().manual_seed(args.seed)
        samples = bundle.pseudo_labels(
            sample.image,
            proposals,
            hints,
            args.k,
            generator,
            draws=args.draws,
            instances_per_tag=args.instances_per_tag,
        )
        quality = assist_quality(
            [
                [(int(c), m.numpy()) for c, m in zip(s.labels, s.masks, strict=True)]
                for s in samples
            ],
            list(zip(gt.labels.tolist(), gt.masks, strict=True)),
        )
        top1.append(quality.top1_iou)
        best_of_k.append(quality.best_of_k_iou)
        ious = mask_iou(proposals, torch.from_numpy(gt.masks))
        ceiling.append(float(ious.max(dim=0).values.mean()))
    print(
        json.dumps(
            {
                "model": str(args.model),
                "hints": args.hints,
                "k": args.k,
                "images": len(top1),
                "top1_iou": round(float(np.mean(top1)), 4),
                "best_of_k_iou": round(float(np.mean(best_of_k)), 4),
                "best_proposal_iou": round(float(np.mean(ceiling)), 4),
            }
        )
    )


if __name__ == "__main__":
    main()
