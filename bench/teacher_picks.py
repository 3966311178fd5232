"""Could the prediction network teach the conditional network? (training images, given tags)

For each tagged class of each image: the mask IoU with the best ground-truth instance of that
class of (a) the conditional network's pick (one sample), (b) the prediction network's
top-scoring detection of that class, and (c) the proposal that best matches that detection.
Prints one JSON object: mean IoU and share >= 0.5 of each, for all tags and for the tags whose
detection scores at least each of a few thresholds.
"""

import json

import torch
from training_images import open_inputs, parse_args, tag_picks

from models.conditional import as_image_tensor
from models.delta import mask_iou

THRESHOLDS = (0.0, 0.2, 0.3, 0.5)


def best_iou(mask: torch.Tensor, instances: torch.Tensor) -> float:
    return float(mask_iou(mask[None], instances).max()) if mask.any() else 0.0


def summary(rows: list[dict]) -> dict:
    out: dict = {"tags": len(rows)}
    for key in ("conditional", "prediction", "matched_proposal") if rows else ():
        values = torch.tensor([row[key] for row in rows])
        out[key] = {
            "mean_iou": round(float(values.mean()), 3),
            "hit@0.5": round(float((values >= 0.5).float().mean()), 3),
        }
    return out


def main() -> None:
    args = parse_args(__doc__, limit=80)
    bundle, dataset, cache = open_inputs(args, "masks")
    bundle.prediction.eval()
    rows = []
    for sample, truth, tags, proposals, pick in tag_picks(bundle, dataset, cache, args.limit):
        with torch.no_grad():
            detections = bundle.prediction([as_image_tensor(sample.image.copy())])[0]
        gt_masks, gt_labels = torch.from_numpy(truth.masks), torch.from_numpy(truth.labels)
        for label in tags.labels:
            same_class = gt_masks[gt_labels == label]
            picked = pick.masks[pick.labels == label]
            row = {
                "conditional": best_iou(picked[0], same_class),
                "score": 0.0,
                "prediction": 0.0,
                "matched_proposal": 0.0,
            }
            of_class = (detections["labels"] == label).nonzero().squeeze(1)
            if len(of_class):
                top = of_class[detections["scores"][of_class].argmax()]
                mask = detections["masks"][top, 0] > 0.5
                row["score"] = float(detections["scores"][top])
                row["prediction"] = best_iou(mask, same_class)
                if mask.any():
                    matched = proposals[int(mask_iou(mask[None], proposals)[0].argmax())]
                    row["matched_proposal"] = best_iou(matched, same_class)
            rows.append(row)
    result = {"model": str(args.model)}
    for threshold in THRESHOLDS:
        result[f"detection_score>={threshold}"] = summary(
            [row for row in rows if row["score"] >= threshold]
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
