"""Synthetic demo and test data: textured objects on textured backgrounds, with occlusion.

A scene family says what the classes look like and how objects and backgrounds are painted;
the scene layout is common to all families. The class of an object is its shape. Colours and
textures of objects and backgrounds are drawn independently of the class, so colour alone does
not identify a class; objects overlap (later objects occlude earlier ones) and vary in scale
from about 1/10 to 1/2 of the image side. Everything is a deterministic function of the
`numpy.random.Generator`.

- `shapes` (the default, `discoseg make-data`'s): six geometric shapes painted with
  procedural textures between two random colours;
- `photos` (`training.data.photo_scenes`): other shapes, an animal silhouette among them,
  filled with photographic textures on photographs, a family kept for measuring how results
  carry over to images nobody tuned on;
- `glyphs` (`training.data.glyph_scenes`): arrows, Ls, Ts, diamonds and half-discs, painted
  either way, classes whose parts look alike.
"""

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from PIL import Image
from tqdm import tqdm

from training.data.coco import coco_mask_fields

CLASSES: list[str] = ["disc", "square", "triangle", "star", "ring", "cross"]

_MIN_VISIBLE_FRACTION = 0.4  # an occluded object keeps at least this share of its shape
_PLACEMENT_TRIES = 20
MIN_COLOUR_CONTRAST = 60.0  # L2 distance in RGB between object and background mean colours
_TEXTURES = ("noise", "stripes", "gradient", "blobs", "checker")


@dataclass(frozen=True)
class SceneFamily:
    """What a family's scenes are made of.

    shape_mask(rng, class_name, size, cx, cy, r): bool[size, size], an object of the class of
    radius r (centre to farthest point) at (cx, cy); paint(rng, size, avoid): float32[size,
    size, 3] RGB in [0, 255], a background (avoid None) or an object's fill whose mean colour
    stays clear of `avoid`, the background's mean colour.
    """

    classes: list[str]
    shape_mask: Callable[[np.random.Generator, str, int, float, float, float], np.ndarray]
    paint: Callable[[np.random.Generator, int, np.ndarray | None], np.ndarray]


@dataclass(frozen=True, eq=False)
class Scene:
    """One synthetic image with its instances.

    image: uint8[H, W, 3] RGB.
    masks: bool[N, H, W], the visible part of each instance (after occlusion), each non-empty.
    full_masks: bool[N, H, W], the whole shape of each instance before occlusion.
    labels: N class ids, 1-based indices into `CLASSES`.
    """

    image: np.ndarray
    masks: np.ndarray
    full_masks: np.ndarray
    labels: list[int]


def polygon_mask(size: int, points: np.ndarray) -> np.ndarray:
    canvas = np.zeros((size, size), np.uint8)
    cv2.fillPoly(canvas, [np.round(points).astype(np.int32)], 1)
    return canvas.astype(bool)


def regular_points(
    cx: float, cy: float, radii: np.ndarray, theta: float
) -> np.ndarray:  # (V, 2) x, y
    angles = theta + 2 * math.pi * np.arange(len(radii)) / len(radii)
    return np.stack([cx + radii * np.cos(angles), cy + radii * np.sin(angles)], axis=1)


def rotation_matrix(theta: float) -> np.ndarray:
    """float[2, 2]: the rotation by theta radians, for (x, y) row vectors as `points @ R.T`."""
    return np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])


def _shape_mask(
    rng: np.random.Generator, class_name: str, size: int, cx: float, cy: float, r: float
) -> np.ndarray:
    """bool[size, size] mask of a shape of radius r (centre to farthest point) at (cx, cy)."""
    theta = rng.uniform(0, 2 * math.pi)
    ys, xs = np.mgrid[0:size, 0:size]
    dist2 = (xs - cx) ** 2 + (ys - cy) ** 2
    if class_name == "disc":
        return dist2 <= r**2
    if class_name == "ring":
        inner = r * rng.uniform(0.45, 0.6)
        return (dist2 <= r**2) & (dist2 >= inner**2)
    if class_name == "square":
        return polygon_mask(size, regular_points(cx, cy, np.full(4, r), theta))
    if class_name == "triangle":
        return polygon_mask(size, regular_points(cx, cy, np.full(3, r), theta))
    if class_name == "star":
        radii = np.tile([r, r * rng.uniform(0.38, 0.48)], 5)
        return polygon_mask(size, regular_points(cx, cy, radii, theta))
    if class_name == "cross":
        arm = r * rng.uniform(0.25, 0.35)  # half width of each arm
        unit = np.array(
            [(arm, r), (arm, arm), (r, arm), (r, -arm), (arm, -arm), (arm, -r),
             (-arm, -r), (-arm, -arm), (-r, -arm), (-r, arm), (-arm, arm), (-arm, r)]
        )
        scale = r / math.hypot(r, arm)  # so the farthest corner lies at radius r
        rotation = rotation_matrix(theta)
        return polygon_mask(size, unit * scale @ rotation.T + np.array([cx, cy]))
    raise ValueError(f"unknown shape class {class_name!r}")


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    coarse = rng.random((cells, cells)).astype(np.float32)
    field = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC)
    low, high = float(field.min()), float(field.max())
    return (field - low) / max(high - low, 1e-6)


def _texture_field(rng: np.random.Generator, size: int) -> np.ndarray:
    """float32[size, size] in [0, 1]: one of a few texture families with random parameters."""
    kind = _TEXTURES[rng.integers(len(_TEXTURES))]
    ys, xs = np.mgrid[0:size, 0:size].astype(np.float32) / size
    phi = rng.uniform(0, math.pi)
    along = xs * math.cos(phi) + ys * math.sin(phi)
    if kind == "noise":
        field = 0.8 * _smooth_noise(rng, size, int(rng.integers(3, 12)))
        field += 0.2 * rng.random((size, size), dtype=np.float32)
    elif kind == "stripes":
        frequency = rng.uniform(3, 14)
        field = 0.5 + 0.5 * np.sin(2 * math.pi * frequency * along + rng.uniform(0, 2 * math.pi))
    elif kind == "gradient":
        field = (along - along.min()) / max(float(along.max() - along.min()), 1e-6)
    elif kind == "blobs":
        noise = _smooth_noise(rng, size, int(rng.integers(4, 10)))
        field = 1 / (1 + np.exp(-12 * (noise - rng.uniform(0.4, 0.6))))
    else:
        cells = rng.uniform(4, 12)
        across = -xs * math.sin(phi) + ys * math.cos(phi)
        field = ((np.floor(along * cells) + np.floor(across * cells)) % 2).astype(np.float32)
        field = 0.2 + 0.6 * field
    return np.clip(field, 0, 1).astype(np.float32)


def paint_texture(rng: np.random.Generator, size: int, avoid: np.ndarray | None) -> np.ndarray:
    """float32[size, size, 3]: a texture between two random colours.

    The mean colour is kept at least `MIN_COLOUR_CONTRAST` away from `avoid` (the background's
    mean colour) so that an object is not invisible; the colours are otherwise class-blind.
    """
    for _ in range(10):
        colours = rng.uniform(0, 255, size=(2, 3)).astype(np.float32)
        mean = colours.mean(axis=0)
        if avoid is None or np.linalg.norm(mean - avoid) >= MIN_COLOUR_CONTRAST:
            break
    field = _texture_field(rng, size)[..., None]
    return colours[0] * (1 - field) + colours[1] * field


SHAPES = SceneFamily(classes=CLASSES, shape_mask=_shape_mask, paint=paint_texture)


def render_scene(rng: np.random.Generator, size: int, family: SceneFamily = SHAPES) -> Scene:
    """Render one synthetic scene of `size` x `size` pixels with 2-5 occluding objects."""
    if size < 16:
        raise ValueError(f"size must be at least 16 pixels, got {size}")
    background = family.paint(rng, size, None)
    background_mean = background.reshape(-1, 3).mean(axis=0)
    image = background.copy()
    full_masks: list[np.ndarray] = []
    visible: list[np.ndarray] = []
    labels: list[int] = []
    for _ in range(int(rng.integers(2, 6))):
        label = int(rng.integers(1, len(family.classes) + 1))
        for _ in range(_PLACEMENT_TRIES):
            radius = 0.5 * size * math.exp(rng.uniform(math.log(0.1), math.log(0.5)))
            cx = rng.uniform(radius, size - radius)
            cy = rng.uniform(radius, size - radius)
            shape = family.shape_mask(rng, family.classes[label - 1], size, cx, cy, radius)
            if not shape.any():
                continue
            occluded = [seen & ~shape for seen in visible]
            if all(
                o.sum() >= _MIN_VISIBLE_FRACTION * f.sum()
                for o, f in zip(occluded, full_masks, strict=True)
            ):
                break
        else:
            continue  # no placement keeps the earlier objects visible enough: drop this one
        texture = family.paint(rng, size, background_mean)
        image[shape] = texture[shape]
        visible = [*occluded, shape]
        full_masks.append(shape)
        labels.append(label)
    image += rng.normal(0, rng.uniform(2, 8), size=image.shape).astype(np.float32)
    return Scene(
        image=np.clip(np.round(image), 0, 255).astype(np.uint8),
        masks=np.stack(visible),
        full_masks=np.stack(full_masks),
        labels=labels,
    )


def generate_dataset(
    out: Path,
    *,
    n: int,
    size: int,
    seed: int,
    val_fraction: float = 0.2,
    family: SceneFamily = SHAPES,
) -> tuple[Path, Path]:
    """Write `n` synthetic scenes as PNGs plus COCO annotation files.

    Writes out/images/000001.png ..., out/train.json and out/val.json (the last
    round(n * val_fraction) images, at least one image stays in train). Image i is rendered from
    the generator seeded with (seed, i), so a scene does not depend on `n`.
    Returns (train.json path, val.json path).
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    out = Path(out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    n_val = min(round(n * val_fraction), n - 1)
    categories = [{"id": i, "name": name} for i, name in enumerate(family.classes, start=1)]
    splits: dict[str, dict[str, list]] = {
        name: {"images": [], "annotations": [], "categories": categories}
        for name in ("train", "val")
    }
    annotation_id = 0
    for index in tqdm(range(n), desc="rendering scenes", unit="image"):
        image_id = index + 1
        scene = render_scene(np.random.default_rng([seed, index]), size, family)
        file_name = f"images/{image_id:06d}.png"
        Image.fromarray(scene.image).save(out / file_name)
        split = splits["train" if index < n - n_val else "val"]
        split["images"].append(
            {"id": image_id, "file_name": file_name, "width": size, "height": size}
        )
        for mask, label in zip(scene.masks, scene.labels, strict=True):
            annotation_id += 1
            split["annotations"].append(
                {"id": annotation_id, "image_id": image_id, "category_id": label,
                 "iscrowd": 0, **coco_mask_fields(mask)}
            )
    paths = (out / "train.json", out / "val.json")
    for path, name in zip(paths, ("train", "val"), strict=True):
        path.write_text(json.dumps(splits[name]))
    return paths
