"""Benchmark the segment proposal generator against OpenCV's selective search (fast mode).

OpenCV's selective search is in its contrib build (`pip install opencv-contrib-python-headless`);
without it only our generator is measured. Both run on one thread over synthetic scenes
(`training.data.synthetic.render_scene`); prints one JSON object: seconds per image (wall clock,
and CPU time of the process, which a busy machine disturbs less), mask recall (ours) and box
recall (both) of the ground-truth instances at IoU 0.5 and 0.7, and the number of proposals.
OpenCV's box recall is given for all its boxes and for its first as many boxes as we return.
With `--grayscale` the scenes are converted to gray (kept as three equal channels) first;
`--family photos` or `--family glyphs` renders the scenes of that `discoseg make-data` family.

    .venv/bin/python bench/proposals.py --n 20 --size 512 --seed 0
"""

import argparse
import json
import time

import cv2
import numpy as np
import torch
from torchvision.ops import box_iou, masks_to_boxes

from models.proposals import ProposalSettings, propose
from training.data.synthetic import render_scene
from training.make_data_command import FAMILIES

THRESHOLDS = (0.5, 0.7)
HAS_SELECTIVE_SEARCH = hasattr(cv2, "ximgproc")


def mask_ious(proposals: torch.Tensor, truth: np.ndarray) -> torch.Tensor:
    """float[G, P] mask IoU of each ground-truth mask with each proposal."""
    flat = proposals.reshape(len(proposals), -1).float()  # (P, HW)
    gt = torch.from_numpy(truth).reshape(len(truth), -1).float()  # (G, HW)
    inter = gt @ flat.T
    return inter / (gt.sum(1, keepdim=True) + flat.sum(1) - inter)


def gray_copy(image: np.ndarray) -> np.ndarray:
    """uint8[H, W, 3] with the three channels set to the image's luminance."""
    return np.repeat(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2)


def recalls(best: torch.Tensor, prefix: str) -> dict[str, float]:
    """Per-instance best IoUs -> {prefix@t: number of instances recalled}."""
    return {f"{prefix}@{t}": int((best >= t).sum()) for t in THRESHOLDS}


def opencv_counts(image: np.ndarray, gt_boxes: torch.Tensor, count: int) -> dict[str, float]:
    """OpenCV's selective search (fast) on the image: box recalls, seconds, proposals."""
    search = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    search.setBaseImage(np.ascontiguousarray(image[..., ::-1]))
    search.switchToSelectiveSearchFast()
    start, start_cpu = time.perf_counter(), time.process_time()
    rects = search.process()  # (Q, 4) x, y, w, h, best first
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
    boxes = torch.from_numpy(rects.astype(np.float32)).reshape(-1, 4)
    boxes[:, 2:] += boxes[:, :2]
    return {
        **recalls(box_iou(gt_boxes, boxes).max(1).values, "opencv_box_recall"),
        **recalls(box_iou(gt_boxes, boxes[:count]).max(1).values, "opencv_box_recall_same_count"),
        "opencv_seconds": seconds,
        "opencv_cpu_seconds": cpu_seconds,
        "opencv_proposals": len(boxes),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20, help="number of images")
    parser.add_argument("--size", type=int, default=512, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0, help="scene i uses the rng (seed, i)")
    parser.add_argument("--settings", type=str, default="{}", help="ProposalSettings as JSON")
    parser.add_argument("--grayscale", action="store_true", help="gray copies of the scenes")
    parser.add_argument("--family", choices=tuple(FAMILIES), default="shapes")
    args = parser.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    settings = ProposalSettings.from_dict(json.loads(args.settings))
    family = FAMILIES[args.family]

    warm = render_scene(np.random.default_rng([args.seed, args.n]), args.size, family)
    propose(warm.image, settings=settings)  # first calls initialise OpenCV's colour tables

    totals: dict[str, float] = {}
    instances = 0
    for i in range(args.n):
        scene = render_scene(np.random.default_rng([args.seed, i]), args.size, family)
        image = gray_copy(scene.image) if args.grayscale else scene.image
        instances += len(scene.masks)
        gt_boxes = masks_to_boxes(torch.from_numpy(scene.masks))
        gt_boxes[:, 2:] += 1  # pixel ranges, as the proposals' boxes below

        start, start_cpu = time.perf_counter(), time.process_time()
        proposals = propose(image, settings=settings)
        ours_seconds = time.perf_counter() - start
        ours_cpu_seconds = time.process_time() - start_cpu

        ours_boxes = masks_to_boxes(proposals)
        ours_boxes[:, 2:] += 1
        counts = {
            **recalls(mask_ious(proposals, scene.masks).max(1).values, "ours_mask_recall"),
            **recalls(box_iou(gt_boxes, ours_boxes).max(1).values, "ours_box_recall"),
            "ours_seconds": ours_seconds,
            "ours_cpu_seconds": ours_cpu_seconds,
            "ours_proposals": len(proposals),
        }
        if HAS_SELECTIVE_SEARCH:
            counts.update(opencv_counts(image, gt_boxes, len(proposals)))
        for key, value in counts.items():
            totals[key] = totals.get(key, 0.0) + value

    result: dict[str, float | int] = {
        "images": args.n,
        "size": args.size,
        "seed": args.seed,
        "grayscale": args.grayscale,
        "family": args.family,
    }
    result["instances"] = instances
    for key, value in totals.items():
        per = instances if "recall" in key else args.n
        result[key if "recall" in key else f"{key}_per_image"] = round(value / per, 4)
    if HAS_SELECTIVE_SEARCH:
        result["speed_ratio"] = round(totals["opencv_seconds"] / totals["ours_seconds"], 2)
        result["cpu_speed_ratio"] = round(
            totals["opencv_cpu_seconds"] / totals["ours_cpu_seconds"], 2
        )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
