"""mAP_r and ABO of one bundle under other detection limits of its Mask R-CNN.

The tiny preset keeps at most 30 detections per image scoring at least 0.05 (torchvision's
score threshold; its default cap is 100). This evaluates the same bundle with other limits, to
see what they cut: prints one JSON object per (score threshold, detections per image).

    python bench/detection_limits.py --model M.pt --data DATA/val.json --images DATA
"""

import argparse
import json
import tempfile
from pathlib import Path

from models.bundle import ModelBundle, load_bundle
from training.evaluate import evaluate_coco_files
from training.predict import CocoIndex, coco_results

LIMITS = [(0.05, 30), (0.01, 30), (0.05, 100), (0.01, 100), (0.001, 100)]


def evaluate_with_limits(
    bundle: ModelBundle, index: CocoIndex, data: Path, images: Path, limits: tuple[float, int]
) -> dict:
    """The metrics of `bundle` on the images of `index` with `limits`: (score threshold,
    detections per image) of its Mask R-CNN, which keeps them."""
    score_threshold, per_image = limits
    bundle.prediction.roi_heads.score_thresh = score_threshold
    bundle.prediction.roi_heads.detections_per_img = per_image
    predictions = coco_results(
        bundle,
        [(image_id, images / name) for image_id, name in index.images],
        category_ids=index.category_ids(bundle.classes),
        score_threshold=score_threshold,
    )
    with tempfile.TemporaryDirectory() as folder:
        results = Path(folder) / "results.json"
        results.write_text(json.dumps(predictions))
        metrics = evaluate_coco_files(data, results)
    row = {"score_threshold": score_threshold, "per_image": per_image}
    row |= {"detections": len(predictions)}
    return row | {k: round(metrics[k], 4) for k in ("mAP_r@0.25", "mAP_r@0.5", "mAP_r@0.75", "ABO")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--images", type=Path, required=True)
    args = parser.parse_args()
    bundle, index = load_bundle(args.model), CocoIndex.read(args.data)
    for limits in LIMITS:
        row = evaluate_with_limits(bundle, index, args.data, args.images, limits)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
