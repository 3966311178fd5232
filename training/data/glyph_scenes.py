"""The `glyphs` scene family: thin, non-convex signs whose parts look alike.

The classes are an arrow, an L, a T, a diamond and a half-disc: three of them are bars joined
at an angle, so a part of one (an arm, a bar) can pass for another, and a detector has to see
the whole outline to tell them apart. Each surface (the background, every object) is painted
either like the `shapes` family (a procedural texture between two colours) or like the `photos`
family (a photograph, or a grey texture between two colours), at random. Nothing was tuned on
this family either: it measures how results carry over to classes of another kind.
"""

import math

import numpy as np

from training.data.photo_scenes import paint_photo
from training.data.synthetic import SceneFamily, paint_texture, polygon_mask, rotation_matrix

GLYPH_CLASSES: list[str] = ["arrow", "ell", "tee", "diamond", "half-disc"]


def _outline(class_name: str, rng: np.random.Generator) -> np.ndarray:
    """float[V, 2]: the class's outline around the origin, its farthest point at about 1."""
    if class_name == "arrow":
        shaft = rng.uniform(0.18, 0.28)  # half width of the shaft
        head = rng.uniform(0.45, 0.6)  # half width of the head
        return np.array(
            [
                (-1, -shaft),
                (0.2, -shaft),
                (0.2, -head),
                (1, 0),
                (0.2, head),
                (0.2, shaft),
                (-1, shaft),
            ]
        )
    if class_name == "ell":
        arm = 0.7 * rng.uniform(0.5, 0.9)  # width of each arm, the L spanning [-0.7, 0.7]
        return np.array(
            [
                (-0.7, -0.7),
                (-0.7 + arm, -0.7),
                (-0.7 + arm, 0.7 - arm),
                (0.7, 0.7 - arm),
                (0.7, 0.7),
                (-0.7, 0.7),
            ]
        )
    if class_name == "tee":
        bar = rng.uniform(0.18, 0.26)  # half width of the stem, and of the bar
        top = -0.7 + 2 * bar
        return np.array(
            [
                (-0.7, -0.7),
                (0.7, -0.7),
                (0.7, top),
                (bar, top),
                (bar, 0.7),
                (-bar, 0.7),
                (-bar, top),
                (-0.7, top),
            ]
        )
    if class_name == "diamond":
        width = rng.uniform(0.35, 0.55)  # half of the shorter diagonal
        return np.array([(1, 0), (0, width), (-1, 0), (0, -width)])
    if class_name == "half-disc":
        angles = np.linspace(0, math.pi, 60)
        return np.stack([np.cos(angles), np.sin(angles) - 0.4], axis=1)
    raise ValueError(f"unknown glyph class {class_name!r}")


def glyph_mask(
    rng: np.random.Generator, class_name: str, size: int, cx: float, cy: float, r: float
) -> np.ndarray:
    """bool[size, size]: a glyph of the class of radius about r at (cx, cy), turned at random."""
    outline = _outline(class_name, rng) * r
    rotation = rotation_matrix(rng.uniform(0, 2 * math.pi))
    return polygon_mask(size, outline @ rotation.T + np.array([cx, cy]))


def paint_either(rng: np.random.Generator, size: int, avoid: np.ndarray | None) -> np.ndarray:
    """float32[size, size, 3]: a surface painted like `shapes` or like `photos`, at random."""
    paint = paint_photo if rng.random() < 0.5 else paint_texture
    return paint(rng, size, avoid)


GLYPHS = SceneFamily(classes=GLYPH_CLASSES, shape_mask=glyph_mask, paint=paint_either)
