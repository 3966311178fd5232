"""Masks as polygons and back, for the formats that store outlines (COCO polygons, Label
Studio and CVAT polygons, YOLO segmentation).

An outline follows the mask's boundary pixel edges, cutting each corner by a quarter pixel
(marching squares at level 0.5 on the mask upsampled twice, so every boundary pixel's centre
stays inside), in the pixel-corner frame of COCO (pixel (r, c) covers [c, c + 1) x [r, r + 1)),
and is simplified within `TOLERANCE` pixels. Holes are filled: these formats union their polygons.
Rasterised again (pycocotools), a mask comes back with IoU >= 0.95 for objects over ~10 pixels
across (tests/training/test_formats.py).
"""

import numpy as np
from pycocotools import mask as mask_utils
from scipy import ndimage
from skimage.measure import approximate_polygon, find_contours

TOLERANCE = 0.25


def mask_polygons(mask: np.ndarray) -> list[np.ndarray]:
    """The outlines of a bool[H, W] mask's parts, each float[N, 2] x, y (N >= 3), largest first."""
    filled = ndimage.binary_fill_holes(np.asarray(mask, dtype=bool))
    upsampled = np.pad(filled.repeat(2, axis=0).repeat(2, axis=1), 1).astype(np.float32)
    outlines = []
    for contour in find_contours(upsampled, 0.5):
        simplified = approximate_polygon(contour, tolerance=2 * TOLERANCE)[:-1]  # open ring
        if len(simplified) >= 3:
            # (row, column) of the padded upsampled array -> x, y of the pixel-corner frame.
            outlines.append((simplified[:, ::-1] - 0.5) / 2)
    return sorted(outlines, key=lambda p: -_area(p))


def _area(polygon: np.ndarray) -> float:
    x, y = polygon[:, 0], polygon[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


def coco_polygons(mask: np.ndarray) -> list[list[float]]:
    """COCO `segmentation` polygons: flat [x0, y0, x1, y1, ...] lists, rounded to 0.01."""
    return [np.round(p, 2).ravel().tolist() for p in mask_polygons(mask)]


def polygons_mask(polygons: list[np.ndarray], height: int, width: int) -> np.ndarray:
    """bool[height, width]: the union of float[N, 2] x, y polygons, rasterised by pycocotools."""
    flat = [np.asarray(p, dtype=np.float64).ravel().tolist() for p in polygons if len(p) >= 3]
    if not flat:
        return np.zeros((height, width), dtype=bool)
    return mask_utils.decode(mask_utils.merge(mask_utils.frPyObjects(flat, height, width))) > 0
