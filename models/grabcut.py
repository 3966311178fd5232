"""GrabCut seeded by a box (OpenCV), on a downscaled crop around it."""

import cv2
import numpy as np


def grabcut_foreground(
    image: np.ndarray,
    box: np.ndarray,
    *,
    shrink: float,
    iterations: int,
    work_size: int,
    margin: float,
    seed: int,
) -> np.ndarray | None:
    """bool[H, W]: GrabCut's foreground inside the integer pixel box x0, y0, x1, y1, seeded by
    the box shrunk by `shrink` of its size on each side; None when the box is too small for
    GrabCut's colour models. image: uint8[H, W, 3] RGB."""
    height, width = image.shape[:2]
    x0, y0, x1, y1 = (int(v) for v in box)
    margin_x = round(margin * (x1 - x0))
    margin_y = round(margin * (y1 - y0))
    cx0, cy0 = max(0, x0 - margin_x), max(0, y0 - margin_y)
    cx1, cy1 = min(width, x1 + margin_x), min(height, y1 + margin_y)
    scale = min(1.0, work_size / max(cx1 - cx0, cy1 - cy0))
    crop_w, crop_h = max(1, round((cx1 - cx0) * scale)), max(1, round((cy1 - cy0) * scale))
    crop = cv2.resize(image[cy0:cy1, cx0:cx1], (crop_w, crop_h), interpolation=cv2.INTER_AREA)
    rx0 = (x0 - cx0 + shrink * (x1 - x0)) * scale
    ry0 = (y0 - cy0 + shrink * (y1 - y0)) * scale
    rx1 = (x1 - cx0 - shrink * (x1 - x0)) * scale
    ry1 = (y1 - cy0 - shrink * (y1 - y0)) * scale
    rect = (round(rx0), round(ry0), round(rx1) - round(rx0), round(ry1) - round(ry0))
    # GrabCut fits 5-component colour models to the pixels inside and outside the rect.
    inside = rect[2] * rect[3]
    if rect[2] < 3 or rect[3] < 3 or inside < 20 or crop_w * crop_h - inside < 20:
        return None
    state = np.zeros((crop_h, crop_w), dtype=np.uint8)
    cv2.setRNGSeed(seed)
    cv2.grabCut(
        crop,
        state,
        rect,
        np.zeros((1, 65)),
        np.zeros((1, 65)),
        iterations,
        cv2.GC_INIT_WITH_RECT,
    )
    foreground = ((state == cv2.GC_FGD) | (state == cv2.GC_PR_FGD)).astype(np.uint8)
    full = cv2.resize(foreground, (cx1 - cx0, cy1 - cy0), interpolation=cv2.INTER_NEAREST)
    mask = np.zeros((height, width), dtype=bool)
    mask[y0:y1, x0:x1] = full[y0 - cy0 : y1 - cy0, x0 - cx0 : x1 - cx0].astype(bool)
    return mask
