"""Time our mAP_r/ABO evaluation against pycocotools' COCOeval (segm) on the same predictions.

200 images of 256x256, 5 classes, 10 ground-truth and 30 predicted instances per image (random
ellipses and rectangles; two thirds of the predictions are jittered copies of ground truth),
seeded. Masks are RLE-encoded before timing; both sides then start from the same RLEs. Prints
one JSON object.

    .venv/bin/python bench/evaluate.py
"""

import contextlib
import io
import json
import time

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from models.rle import encode_masks, rle_area, rle_box
from training.evaluate import InstanceSegEvaluator, ScoredInstance

SIZE = 256
NUM_IMAGES, NUM_CLASSES, GT_PER_IMAGE, PREDICTIONS_PER_IMAGE = 200, 5, 10, 30
REPEATS = 3


def random_shape(rng: np.random.Generator, center: np.ndarray, radius: np.ndarray) -> np.ndarray:
    """A bool (SIZE, SIZE) ellipse or axis-aligned rectangle."""
    ys, xs = np.ogrid[:SIZE, :SIZE]
    dy, dx = (ys - center[0]) / radius[0], (xs - center[1]) / radius[1]
    if rng.random() < 0.5:
        return dy**2 + dx**2 <= 1.0
    return (np.abs(dy) <= 1.0) & (np.abs(dx) <= 1.0)


def make_images(seed: int = 0) -> list[tuple[list[tuple[int, dict]], list[ScoredInstance]]]:
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(NUM_IMAGES):
        centers = rng.uniform(20, SIZE - 20, size=(GT_PER_IMAGE, 2))
        radii = rng.uniform(8, 40, size=(GT_PER_IMAGE, 2))
        gt_labels = rng.integers(NUM_CLASSES, size=GT_PER_IMAGE)
        masks = [random_shape(rng, c, r) for c, r in zip(centers, radii, strict=True)]
        labels = gt_labels.tolist()
        for p in range(PREDICTIONS_PER_IMAGE):
            if p < 2 * PREDICTIONS_PER_IMAGE // 3:
                source = p % GT_PER_IMAGE
                center = centers[source] + rng.normal(0, 4, size=2)
                radius = radii[source] * rng.uniform(0.8, 1.25, size=2)
                labels.append(int(gt_labels[source]))
            else:
                center = rng.uniform(20, SIZE - 20, size=2)
                radius = rng.uniform(8, 40, size=2)
                labels.append(int(rng.integers(NUM_CLASSES)))
            masks.append(random_shape(rng, center, radius))
        rles = encode_masks(np.stack(masks))
        gt = list(zip(labels[:GT_PER_IMAGE], rles[:GT_PER_IMAGE], strict=True))
        scores = rng.random(PREDICTIONS_PER_IMAGE)
        predictions = [
            ScoredInstance(label, float(score), rle)
            for label, score, rle in zip(
                labels[GT_PER_IMAGE:], scores, rles[GT_PER_IMAGE:], strict=True
            )
        ]
        images.append((gt, predictions))
    return images


def coco_inputs(images) -> tuple[COCO, list[dict]]:
    dataset = {
        "images": [{"id": i, "height": SIZE, "width": SIZE} for i in range(len(images))],
        "categories": [{"id": c, "name": f"class{c}"} for c in range(NUM_CLASSES)],
        "annotations": [],
    }
    results = []
    for image_id, (gt, predictions) in enumerate(images):
        for label, rle in gt:
            dataset["annotations"].append(
                {
                    "id": len(dataset["annotations"]) + 1,
                    "image_id": image_id,
                    "category_id": label,
                    "segmentation": rle,
                    "area": rle_area(rle),
                    "bbox": rle_box(rle),
                    "iscrowd": 0,
                }
            )
        for p in predictions:
            results.append(
                {
                    "image_id": image_id,
                    "category_id": p.label,
                    "score": p.score,
                    "segmentation": p.mask,
                }
            )
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = dataset
        coco_gt.createIndex()
    return coco_gt, results


def run_ours(images) -> dict:
    evaluator = InstanceSegEvaluator([f"class{c}" for c in range(NUM_CLASSES)])
    for image_id, (gt, predictions) in enumerate(images):
        evaluator.process(image_id, gt, predictions)
    return evaluator.evaluate()


def run_cocoeval(coco_gt: COCO, results: list[dict]) -> np.ndarray:
    with contextlib.redirect_stdout(io.StringIO()):
        coco_dt = coco_gt.loadRes([dict(r) for r in results])
        coco_eval = COCOeval(coco_gt, coco_dt, iouType="segm")
        coco_eval.evaluate()
        coco_eval.accumulate()
        coco_eval.summarize()
    return coco_eval.stats


def best_time(fn, *args) -> tuple[float, object]:
    times, value = [], None
    for _ in range(REPEATS):
        start = time.perf_counter()
        value = fn(*args)
        times.append(time.perf_counter() - start)
    return min(times), value


def main() -> None:
    images = make_images()
    coco_gt, results = coco_inputs(images)
    ours_s, metrics = best_time(run_ours, images)
    coco_s, stats = best_time(run_cocoeval, coco_gt, results)
    report = {
        "images": NUM_IMAGES,
        "classes": NUM_CLASSES,
        "gt_per_image": GT_PER_IMAGE,
        "predictions_per_image": PREDICTIONS_PER_IMAGE,
        "image_size": SIZE,
        "repeats_best_of": REPEATS,
        "ours_s": round(ours_s, 4),
        "cocoeval_s": round(coco_s, 4),
        "cocoeval_over_ours": round(coco_s / ours_s, 2),
        "mAP_r@0.5": round(metrics["mAP_r@0.5"], 4),
        "ABO": round(metrics["ABO"], 4),
        "coco_mask_AP50": round(float(stats[1]), 4),
    }
    print(json.dumps(report))


if __name__ == "__main__":
    main()
