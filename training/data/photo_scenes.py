"""The `photos` scene family: shapes filled with photographic textures on photographs.

Backgrounds are random crops of the colour photographs scikit-image ships (an astronaut, a
cat, coffee, a rocket, the Hubble deep field, a retina, a tissue stain), mirrored at random and
rescaled. Objects are filled with a crop of another photograph, or with one of its grey
textures (brick, grass, gravel, the moon, coins, a camera man) between two random colours. The
classes are other shapes than the `shapes` family's: a horse (scikit-image's silhouette), an
ellipse, a hexagon, a heart and a crescent. Nothing here was tuned on: the family measures how
results carry over to images unlike the ones the methods were developed on.
"""

import math
from functools import cache

import cv2
import numpy as np
from skimage import data as photographs

from training.data.synthetic import (
    MIN_COLOUR_CONTRAST,
    SceneFamily,
    polygon_mask,
    regular_points,
    rotation_matrix,
)

PHOTO_CLASSES: list[str] = ["horse", "ellipse", "hexagon", "heart", "crescent"]

_COLOUR_PHOTOS = (
    "astronaut",
    "chelsea",
    "coffee",
    "rocket",
    "hubble_deep_field",
    "retina",
    "immunohistochemistry",
)
_GREY_TEXTURES = ("brick", "grass", "gravel", "moon", "coins", "camera")
_TRIES = 10


@cache
def _photo(name: str) -> np.ndarray:
    """uint8[H, W, 3] or uint8[H, W]: one of scikit-image's sample images (read once)."""
    return getattr(photographs, name)()


@cache
def _horse() -> np.ndarray:
    """uint8[h, w]: scikit-image's horse silhouette (1 inside), cropped to the animal."""
    inside = ~photographs.horse()
    rows, cols = np.flatnonzero(inside.any(1)), np.flatnonzero(inside.any(0))
    return inside[rows[0] : rows[-1] + 1, cols[0] : cols[-1] + 1].astype(np.uint8)


def _crop(rng: np.random.Generator, image: np.ndarray, size: int) -> np.ndarray:
    """float32[size, size, ...]: a random square crop of 40-100% of the shorter side, resized
    and mirrored at random."""
    height, width = image.shape[:2]
    side = int(min(height, width) * rng.uniform(0.4, 1.0))
    y0, x0 = int(rng.integers(0, height - side + 1)), int(rng.integers(0, width - side + 1))
    crop = cv2.resize(image[y0 : y0 + side, x0 : x0 + side], (size, size))
    return (crop[:, ::-1] if rng.random() < 0.5 else crop).astype(np.float32)


def paint_photo(rng: np.random.Generator, size: int, avoid: np.ndarray | None) -> np.ndarray:
    """float32[size, size, 3]: a photograph (background, or half of the objects) or a grey
    texture between two random colours; an object's mean colour is kept clear of `avoid`."""
    for _ in range(_TRIES):
        if avoid is None or rng.random() < 0.5:
            name = _COLOUR_PHOTOS[rng.integers(len(_COLOUR_PHOTOS))]
            fill = _crop(rng, _photo(name), size) * rng.uniform(0.7, 1.3)
        else:
            texture = _crop(rng, _photo(_GREY_TEXTURES[rng.integers(len(_GREY_TEXTURES))]), size)
            field = (texture / 255.0)[..., None]
            colours = rng.uniform(0, 255, size=(2, 3)).astype(np.float32)
            fill = colours[0] * (1 - field) + colours[1] * field
        fill = np.clip(fill, 0, 255)
        mean = fill.reshape(-1, 3).mean(axis=0)
        if avoid is None or np.linalg.norm(mean - avoid) >= MIN_COLOUR_CONTRAST:
            break
    return fill


def photo_shape_mask(
    rng: np.random.Generator, class_name: str, size: int, cx: float, cy: float, r: float
) -> np.ndarray:
    """bool[size, size]: an object of the class of radius r (centre to farthest point)."""
    theta = rng.uniform(0, 2 * math.pi)
    if class_name == "horse":
        return _horse_mask(rng, size, cx, cy, r)
    if class_name == "ellipse":
        canvas = np.zeros((size, size), np.uint8)
        axes = (max(1, round(r)), max(1, round(r * rng.uniform(0.4, 0.7))))
        cv2.ellipse(canvas, (round(cx), round(cy)), axes, math.degrees(theta), 0, 360, 1, -1)
        return canvas.astype(bool)
    if class_name == "hexagon":
        return polygon_mask(size, regular_points(cx, cy, np.full(6, r), theta))
    if class_name == "heart":
        t = np.linspace(0, 2 * math.pi, 120, endpoint=False)
        x = 16 * np.sin(t) ** 3
        y = -(13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t))
        points = np.stack([x, y], axis=1) * (r / 17.0)
        tilt = rng.uniform(-0.5, 0.5)
        return polygon_mask(size, points @ rotation_matrix(tilt).T + np.array([cx, cy]))
    if class_name == "crescent":
        ys, xs = np.mgrid[0:size, 0:size]
        outer = (xs - cx) ** 2 + (ys - cy) ** 2 <= r**2
        offset = r * rng.uniform(0.35, 0.55)
        bx, by = cx + offset * math.cos(theta), cy + offset * math.sin(theta)
        bite = (xs - bx) ** 2 + (ys - by) ** 2 <= (r * rng.uniform(0.7, 0.9)) ** 2
        return outer & ~bite
    raise ValueError(f"unknown photo class {class_name!r}")


def _horse_mask(rng: np.random.Generator, size: int, cx: float, cy: float, r: float) -> np.ndarray:
    """The silhouette mirrored at random, tilted by up to 20 degrees, its half diagonal r."""
    horse = _horse()
    if rng.random() < 0.5:
        horse = horse[:, ::-1]
    height, width = horse.shape
    scale = r / (0.5 * math.hypot(height, width))
    tilt = rng.uniform(-20, 20)
    matrix = cv2.getRotationMatrix2D((width / 2, height / 2), tilt, scale)
    matrix[:, 2] += (cx - width / 2, cy - height / 2)
    horse = np.ascontiguousarray(horse)
    return cv2.warpAffine(horse, matrix, (size, size), flags=cv2.INTER_NEAREST).astype(bool)


PHOTOS = SceneFamily(classes=PHOTO_CLASSES, shape_mask=photo_shape_mask, paint=paint_photo)
