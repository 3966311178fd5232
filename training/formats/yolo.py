"""YOLO segmentation (Ultralytics): `data.yaml` with the class names and `labels/<stem>.txt`
per image, one instance a line: the class index and its outline as x, y pairs normalised by the
image's width and height. A mask in several parts is one outline, its parts joined by
zero-width bridges (as Ultralytics' own converter does)."""

import numpy as np

from training.formats.labels import LabelSet
from training.formats.polygons import mask_polygons


def joined_outline(mask: np.ndarray) -> np.ndarray:
    """float[N, 2] x, y: the outlines of the mask's parts, each reached from the previous one and
    left again through the same point (a bridge of no area). Empty for an empty mask."""
    parts = mask_polygons(mask)
    if not parts:
        return np.zeros((0, 2))
    joined = parts[0]
    for part in parts[1:]:
        distances = np.linalg.norm(joined[:, None] - part[None], axis=2)
        i, j = np.unravel_index(int(distances.argmin()), distances.shape)
        ring = np.roll(part, -j, axis=0)
        joined = np.concatenate([joined[: i + 1], ring, ring[:1], joined[i:]])
    return joined


def export_files(labels: LabelSet) -> dict[str, bytes]:
    """`data.yaml` and `labels/<stem>.txt` for every image (boxes without masks are left out)."""
    names = "\n".join(f"  {i}: {name!r}" for i, name in enumerate(labels.classes))
    files = {"data.yaml": f"path: .\ntrain: images\nval: images\nnames:\n{names}\n".encode()}
    for image in labels.images:
        lines = []
        for instance in image.instances:
            mask = instance.mask()
            outline = joined_outline(mask) if mask is not None else np.zeros((0, 2))
            if len(outline) < 3:
                continue
            normalised = outline / [image.width, image.height]
            coordinates = " ".join(f"{v:.6f}" for v in normalised.clip(0, 1).ravel())
            lines.append(f"{labels.class_id(instance.label) - 1} {coordinates}")
        files[f"labels/{image.stem}.txt"] = ("\n".join(lines) + "\n" if lines else "").encode()
    return files
