"""COCO-format datasets: one annotation JSON plus a folder of images.

Training from tags needs only each annotation's image and category: an annotation without
`bbox` (and `segmentation`) is a tag, accepted under tags supervision and skipped ("missing_box")
under the others.

Bad data never crashes a run: images without usable annotations, annotations with unknown
categories or boxes outside the image, and missing or unreadable image files are left out at
construction and listed in `CocoDataset.skipped` (and in one logged warning line). A file
that is not COCO at all (missing keys) raises ValueError.
"""

import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

from models.rle import decode_mask, encode_mask, rle_area, rle_box
from training.data.dataset import (
    InstanceDataset,
    Instances,
    SkipReport,
    Supervision,
    check_supervision,
    verified_size,
)

_REQUIRED_KEYS: dict[str, tuple[str, ...]] = {
    "images": ("id", "file_name", "width", "height"),
    "annotations": ("id", "image_id", "category_id"),
    "categories": ("id", "name"),
}
_BOX_TOLERANCE = 1.0  # pixels a box may stick out of the image (rounding in exported files)
_CHECK_WORKERS = 8


def coco_mask_fields(mask: np.ndarray) -> dict[str, Any]:
    """COCO fields of a bool[H, W] mask: RLE `segmentation` (counts as str), `area`, `bbox`."""
    rle = encode_mask(mask)
    return {"segmentation": rle, "area": rle_area(rle), "bbox": rle_box(rle)}


def decode_segmentation(segmentation: Any, height: int, width: int) -> np.ndarray:
    """bool[height, width] mask of a COCO segmentation: polygons, uncompressed or compressed RLE."""
    if isinstance(segmentation, list):  # polygons: a list of flat [x0, y0, x1, y1, ...] lists
        return mask_utils.decode(
            mask_utils.merge(mask_utils.frPyObjects(segmentation, height, width))
        ).astype(bool)
    if isinstance(segmentation, dict) and "counts" in segmentation:
        return decode_mask(segmentation)
    raise ValueError(f"unsupported COCO segmentation of type {type(segmentation).__name__}")


def _require_keys(data: dict, annotation_file: Path) -> None:
    missing = [key for key in _REQUIRED_KEYS if key not in data]
    if missing:
        raise ValueError(f"{annotation_file} is not a COCO annotation file: missing {missing}")
    for section, keys in _REQUIRED_KEYS.items():
        for position, entry in enumerate(data[section]):
            absent = [key for key in keys if key not in entry]
            if absent:
                raise ValueError(
                    f"{annotation_file}: {section}[{position}] is missing {absent}"
                )


def _segmentation_size_ok(segmentation: Any, height: int, width: int) -> bool:
    if isinstance(segmentation, dict):
        return list(segmentation.get("size", [])) == [height, width]
    return isinstance(segmentation, list) and all(
        isinstance(polygon, list) and len(polygon) >= 6 for polygon in segmentation
    )


def _check_image(path: Path, width: int, height: int) -> str | None:
    """The reason the image cannot be used, or None when it is fine."""
    if not path.is_file():
        return "missing_image"
    try:
        size = verified_size(path)
    except Exception:  # PIL raises many types for a broken file; all mean "unreadable"
        return "unreadable_image"
    return None if size == (width, height) else "image_size_mismatch"


@dataclass(frozen=True)
class _ImageRecord:
    image_id: int
    file_name: str
    width: int
    height: int
    annotations: tuple[dict, ...]


class CocoDataset(InstanceDataset):
    """Images and annotations of a COCO JSON file, seen through one supervision mode.

    `classes` are the category names in category-id order; `category_to_label` maps a COCO
    category id to its contiguous label 1..C (label l is `classes[l - 1]`).
    Item i is a `Sample` with only what `supervision` allows; `ground_truth(i)` gives the full
    instances (with masks) for evaluation.
    """

    def __init__(
        self,
        annotation_file: Path,
        image_root: Path,
        supervision: Supervision,
        *,
        check_images: bool = True,
    ) -> None:
        check_supervision(supervision)
        self.annotation_file = Path(annotation_file)
        self.image_root = Path(image_root)
        self.supervision: Supervision = supervision
        if not self.annotation_file.is_file():
            raise FileNotFoundError(f"annotation file not found: {self.annotation_file}")
        if not self.image_root.is_dir():
            raise FileNotFoundError(f"image folder not found: {self.image_root}")
        data = json.loads(self.annotation_file.read_text())
        if not isinstance(data, dict):
            raise ValueError(f"{self.annotation_file} is not a COCO annotation file: not an object")
        _require_keys(data, self.annotation_file)

        categories = sorted(data["categories"], key=lambda c: c["id"])
        self.classes: list[str] = [str(c["name"]) for c in categories]
        self.category_to_label: dict[int, int] = {
            int(c["id"]): label for label, c in enumerate(categories, start=1)
        }
        self.skipped = SkipReport()
        self._records = self._build_records(data, check_images)
        self.skipped.log(str(self.annotation_file))

    def _build_records(self, data: dict, check_images: bool) -> list[_ImageRecord]:
        images = {int(entry["id"]): entry for entry in data["images"]}
        kept: dict[int, list[dict]] = {image_id: [] for image_id in images}
        for annotation in data["annotations"]:
            image = images.get(int(annotation["image_id"]))
            reason = self._annotation_problem(annotation, image)
            if reason is None:
                kept[int(annotation["image_id"])].append(annotation)
            else:
                self.skipped.add(
                    reason,
                    f"annotation {annotation['id']} (image {annotation['image_id']}, "
                    f"category {annotation['category_id']}, bbox {annotation.get('bbox')})",
                )
        candidates = []
        for image_id, entry in images.items():
            if kept[image_id]:
                candidates.append(entry)
            else:
                self.skipped.add("no_annotations", f"image {image_id} ({entry['file_name']})")
        if check_images:
            with ThreadPoolExecutor(_CHECK_WORKERS) as pool:
                problems = list(pool.map(
                    lambda e: _check_image(
                        self.image_root / e["file_name"], int(e["width"]), int(e["height"])
                    ),
                    candidates,
                ))
        else:
            problems = [None] * len(candidates)
        records = []
        for entry, problem in zip(candidates, problems, strict=True):
            if problem is not None:
                self.skipped.add(problem, f"image {entry['id']} ({entry['file_name']})")
                continue
            records.append(_ImageRecord(
                image_id=int(entry["id"]), file_name=str(entry["file_name"]),
                width=int(entry["width"]), height=int(entry["height"]),
                annotations=tuple(kept[int(entry["id"])]),
            ))
        return records

    def _annotation_problem(self, annotation: dict, image: dict | None) -> str | None:
        if image is None:
            return "unknown_image"
        if int(annotation["category_id"]) not in self.category_to_label:
            return "unknown_category"
        if annotation.get("iscrowd", 0):
            return "crowd"
        bbox = annotation.get("bbox")
        if bbox is None:
            return None if self.supervision == "tags" else "missing_box"
        if len(bbox) != 4 or bbox[2] <= 0 or bbox[3] <= 0:
            return "empty_box"
        x, y, w, h = (float(v) for v in bbox)
        width, height = int(image["width"]), int(image["height"])
        if (x < -_BOX_TOLERANCE or y < -_BOX_TOLERANCE
                or x + w > width + _BOX_TOLERANCE or y + h > height + _BOX_TOLERANCE):
            return "box_outside_image"
        segmentation = annotation.get("segmentation")
        if segmentation is None:
            return "missing_segmentation" if self.supervision == "masks" else None
        if not _segmentation_size_ok(segmentation, height, width):
            return "bad_segmentation"
        return None

    def __len__(self) -> int:
        return len(self._records)

    @property
    def image_ids(self) -> list[int]:
        return [record.image_id for record in self._records]

    def _image(self, index: int) -> tuple[Path, int, str]:
        record = self._records[index]
        return self.image_root / record.file_name, record.image_id, record.file_name

    def _instances(self, index: int, with_masks: bool) -> Instances:
        record = self._records[index]
        labels = np.array(
            [self.category_to_label[int(a["category_id"])] for a in record.annotations], np.int64
        )
        # A tag (no bbox) has no box; tags supervision reads only the labels.
        xywh = np.array(
            [a.get("bbox") or [0, 0, 0, 0] for a in record.annotations], np.float32
        ).reshape(-1, 4)
        boxes = np.concatenate([xywh[:, :2], xywh[:, :2] + xywh[:, 2:]], axis=1)
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, record.width)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, record.height)
        if not with_masks:
            return Instances(labels=labels, boxes=boxes, masks=np.zeros((len(labels), 0, 0), bool))
        missing = [a["id"] for a in record.annotations if a.get("segmentation") is None]
        if missing:
            raise ValueError(f"image {record.image_id}: annotations {missing} have no segmentation")
        masks = np.stack([
            decode_segmentation(a["segmentation"], record.height, record.width)
            for a in record.annotations
        ])  # (N, H, W) bool
        return Instances(labels=labels, boxes=boxes, masks=masks)
