"""Simple weak-supervision baselines for boxes: pseudo masks made from the box alone.

- `box-mask`: the filled box;
- `grabcut`: GrabCut seeded by the box (OpenCV), the filled box where GrabCut finds nothing.

The prediction network is then trained on these masks as if they were ground truth.
"""

import cv2
import numpy as np
import torch
from torch import Tensor

from models.annotations import BoxAnnotation
from models.candidates import box_pixel_window, box_rectangles
from models.structures import mask_boxes

BASELINES = ("box-mask", "grabcut")
GRABCUT_ITERATIONS = 5


def grabcut_in_box(image: np.ndarray, box: Tensor) -> Tensor:
    """BoolTensor[H, W]: GrabCut's foreground inside the box's pixel window (the window itself
    when GrabCut leaves it empty). image: uint8[H, W, 3] RGB."""
    height, width = image.shape[:2]
    x0, y0, x1, y1 = box_pixel_window(box, (height, width))
    window = torch.zeros((height, width), dtype=torch.bool)
    window[y0:y1, x0:x1] = True
    if x1 - x0 < 3 or y1 - y0 < 3:
        return window
    mask = np.zeros((height, width), np.uint8)
    background, foreground = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    rect = (x0, y0, x1 - x0, y1 - y0)
    cv2.setRNGSeed(0)
    cv2.grabCut(
        cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
        mask,
        rect,
        background,
        foreground,
        GRABCUT_ITERATIONS,
        cv2.GC_INIT_WITH_RECT,
    )
    found = torch.from_numpy((mask == cv2.GC_FGD) | (mask == cv2.GC_PR_FGD)) & window
    return found if found.any() else window


def baseline_target(image: np.ndarray, boxes: BoxAnnotation, kind: str) -> dict[str, Tensor]:
    """A torchvision detection target of pseudo masks from the boxes."""
    if kind not in BASELINES:
        raise ValueError(f"unknown baseline {kind!r}; baselines are {', '.join(BASELINES)}")
    if kind == "box-mask":
        masks = box_rectangles(boxes, image.shape[:2])
    else:
        masks = (
            torch.stack([grabcut_in_box(image, box) for box in boxes.boxes])
            if len(boxes)
            else torch.zeros((0, *image.shape[:2]), dtype=torch.bool)
        )
    return {"boxes": mask_boxes(masks), "labels": boxes.labels, "masks": masks.to(torch.uint8)}
