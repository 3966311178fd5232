"""The labels every format reads and writes: images, their instances (class name, mask as COCO
RLE, box, score) and image-level tags, in memory as one `LabelSet`.

Masks stay COCO RLE until a writer needs pixels, so a result of many images costs little
memory. `read_coco` reads a COCO annotation file (a job's result, an import), or the results
list that `discoseg predict` writes together with the COCO file its ids refer to; `to_coco`
writes one back, with RLE or polygon masks.
"""

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from models.rle import encode_mask, rle_box
from training.data.coco import coco_mask_fields, decode_segmentation
from training.formats.polygons import coco_polygons


@dataclass(frozen=True)
class Instance:
    """One object of an image.

    label: class name. rle: COCO RLE {"size": [H, W], "counts": str}, or None (a box only).
    bbox: [x0, y0, x1, y1] pixels, or None (then the mask's tight box).
    score: confidence in [0, 1], or None for a human annotation.
    """

    label: str
    rle: dict | None = None
    bbox: tuple[float, float, float, float] | None = None
    score: float | None = None

    @classmethod
    def from_mask(cls, label: str, mask: np.ndarray, score: float | None = None) -> "Instance":
        """An instance of a bool[H, W] mask; its box is the mask's tight box."""
        return cls(label=label, rle=encode_mask(mask), score=score)

    def mask(self) -> np.ndarray | None:
        """bool[H, W], or None for a box without a mask."""
        if self.rle is None:
            return None
        height, width = self.rle["size"]
        return decode_segmentation(self.rle, height, width)

    def box(self) -> tuple[float, float, float, float] | None:
        """[x0, y0, x1, y1]: the given box, else the mask's tight box (x1, y1 exclusive)."""
        if self.bbox is not None:
            return self.bbox
        if self.rle is None:
            return None
        x, y, w, h = rle_box(self.rle)
        return (x, y, x + w, y + h)


@dataclass(frozen=True)
class ImageLabels:
    """One image: its id, file name (relative to the images' folder), size and labels."""

    image_id: int
    file_name: str
    width: int
    height: int
    instances: tuple[Instance, ...] = ()
    tags: tuple[str, ...] = ()

    @property
    def stem(self) -> str:
        """The file name without folders and suffix (names per-image files of other formats)."""
        return Path(self.file_name).stem


@dataclass(frozen=True)
class LabelSet:
    """Labelled images and the class names (category id of class i is i + 1 in COCO)."""

    classes: tuple[str, ...]
    images: tuple[ImageLabels, ...] = field(default_factory=tuple)

    def class_id(self, name: str) -> int:
        """1-based id of a class name; ValueError for a name not among the classes."""
        try:
            return self.classes.index(name) + 1
        except ValueError:
            raise ValueError(
                f"unknown class {name!r}; known classes: {', '.join(self.classes)}"
            ) from None


def read_coco(path: Path, reference: Path | None = None) -> LabelSet:
    """The labels of a COCO annotation file, or of a COCO results list (what `discoseg predict`
    writes: image and category ids only) with `reference`, the COCO file those ids refer to.

    Raises FileNotFoundError, or ValueError naming what is wrong with the file.
    """
    data = _read_json(path)
    if isinstance(data, list):
        if reference is None:
            raise ValueError(
                f"{path} is a results list (image and category ids only): give the COCO file "
                "its ids refer to (--data)"
            )
        index = _read_json(reference)
        if not isinstance(index, dict):
            raise ValueError(f"{reference} is not a COCO annotation file")
        return labels_from_coco({**index, "annotations": data}, str(path))
    if not isinstance(data, dict):
        raise ValueError(f"{path} is neither a COCO annotation file nor a results list")
    return labels_from_coco(data, str(path))


def _read_json(path: Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    try:
        return json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not JSON: {error}") from None


def labels_from_coco(data: dict, source: str = "the COCO file") -> LabelSet:
    """The labels of a parsed COCO annotation dict. An annotation without bbox and segmentation
    is a tag of its image."""
    missing = [key for key in ("images", "categories") if not isinstance(data.get(key), list)]
    if missing:
        raise ValueError(f"{source} is not a COCO annotation file: missing {missing}")
    try:
        categories = sorted(data["categories"], key=lambda c: int(c["id"]))
        names = {int(c["id"]): str(c["name"]) for c in categories}
        images = [(int(e["id"]), str(e["file_name"]), int(e["width"]), int(e["height"]))
                  for e in data["images"]]
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(
            f"{source}: an image lacks id/file_name/width/height or a category id/name "
            f"({error!r})"
        ) from None
    sizes = {image_id: (height, width) for image_id, _, width, height in images}
    instances: dict[int, list[Instance]] = {image_id: [] for image_id in sizes}
    tags: dict[int, list[str]] = {image_id: [] for image_id in sizes}
    for position, annotation in enumerate(data.get("annotations") or []):
        where = f"{source}: annotations[{position}]"
        try:
            image_id, category_id = int(annotation["image_id"]), int(annotation["category_id"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"{where} needs integer image_id and category_id") from None
        if image_id not in sizes:
            raise ValueError(f"{where}: unknown image id {image_id}")
        if category_id not in names:
            raise ValueError(f"{where}: unknown category id {category_id}")
        label = names[category_id]
        segmentation, bbox = annotation.get("segmentation"), annotation.get("bbox")
        if segmentation is None and bbox is None:
            tags[image_id].append(label)
            continue
        rle = None
        if segmentation is not None:
            height, width = sizes[image_id]
            try:
                rle = encode_mask(decode_segmentation(segmentation, height, width))
            except (ValueError, TypeError, KeyError) as error:
                raise ValueError(f"{where}: unreadable segmentation ({error})") from None
        box = None
        if bbox is not None and rle is None:
            x, y, w, h = (float(v) for v in bbox)
            box = (x, y, x + w, y + h)
        score = annotation.get("score")
        instances[image_id].append(
            Instance(label, rle, box, None if score is None else float(score))
        )
    return LabelSet(
        classes=tuple(names[c] for c in sorted(names)),
        images=tuple(
            ImageLabels(image_id, file_name, width, height, tuple(instances[image_id]),
                        tuple(sorted(set(tags[image_id]))))
            for image_id, file_name, width, height in images
        ),
    )


def to_coco(labels: LabelSet, *, polygons: bool = False) -> dict:
    """A COCO annotation dict: masks as RLE, or with `polygons` as polygon lists (holes are
    filled; training.formats.polygons); a tag is an annotation without bbox and segmentation."""
    annotations: list[dict] = []

    def add(annotation: dict) -> None:
        annotations.append({"id": len(annotations) + 1, **annotation})

    for image in labels.images:
        for instance in image.instances:
            entry: dict = {"image_id": image.image_id, "iscrowd": 0,
                           "category_id": labels.class_id(instance.label)}
            mask = instance.mask()
            if mask is not None:
                fields = coco_mask_fields(mask)
                if polygons:
                    fields["segmentation"] = coco_polygons(mask)
                entry.update(fields)
            else:
                x0, y0, x1, y1 = instance.bbox
                entry.update(bbox=[x0, y0, x1 - x0, y1 - y0], area=(x1 - x0) * (y1 - y0))
            if instance.score is not None:
                entry["score"] = instance.score
            add(entry)
        for tag in image.tags:
            add({"image_id": image.image_id, "category_id": labels.class_id(tag), "iscrowd": 0})
    return {
        "images": [{"id": i.image_id, "file_name": i.file_name, "width": i.width,
                    "height": i.height} for i in labels.images],
        "categories": [{"id": i + 1, "name": name} for i, name in enumerate(labels.classes)],
        "annotations": annotations,
    }


def check_image_size(where: str, width: int, height: int, max_pixels: int | None) -> None:
    """ValueError naming `where` unless width and height are positive and, given max_pixels,
    width x height is at most that (checked before any mask of the image is decoded)."""
    if width < 1 or height < 1:
        raise ValueError(f"{where}: the image size {width}x{height} is not positive")
    if max_pixels is not None and width * height > max_pixels:
        raise ValueError(
            f"{where}: the image is {width}x{height} pixels, more than the {max_pixels} accepted"
        )


def ordered_classes(names: Iterable[str]) -> tuple[str, ...]:
    """The distinct names in first-seen order."""
    return tuple(dict.fromkeys(names))
