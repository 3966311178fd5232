"""Simple weak-supervision baselines for boxes: pseudo masks made from the box alone.

- `box-mask`: the filled box;
- `grabcut`: GrabCut seeded by the box (OpenCV), the filled box where GrabCut finds nothing.

The prediction network is then trained on these masks as if they were ground truth.
"""

import numpy as np
import torch
from torch import Tensor

from models.annotations import BoxAnnotation
from models.candidates import box_pixel_window, box_rectangles
from models.grabcut import grabcut_foreground
from models.structures import mask_boxes

BASELINES = ("box-mask", "grabcut")
GRABCUT_ITERATIONS = 5


def grabcut_in_box(image: np.ndarray, box: Tensor) -> Tensor:
    """BoolTensor[H, W]: GrabCut's foreground inside the box's pixel window (the window itself
    when GrabCut finds nothing). image: uint8[H, W, 3] RGB."""
    height, width = image.shape[:2]
    window = np.array(box_pixel_window(box, (height, width)))
    x0, y0, x1, y1 = window
    found = grabcut_foreground(
        image,
        window,
        shrink=0.0,
        iterations=GRABCUT_ITERATIONS,
        work_size=max(height, width),
        margin=0.25,
        seed=0,
    )
    if found is None or not found.any():
        found = np.zeros((height, width), dtype=bool)
        found[y0:y1, x0:x1] = True
    return torch.from_numpy(found)


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
