"""Pascal VOC 2012 (and SBD converted to the same layout) segmentation folders.

    root/JPEGImages/<name>.jpg
    root/SegmentationObject/<name>.png   palette PNG: 0 background, 1..254 object ids, 255 void
    root/SegmentationClass/<name>.png    palette PNG: 0 background, 1..20 classes, 255 void
    root/ImageSets/Segmentation/<split>.txt   one <name> per line

An instance is the set of pixels with one object id; its class is the most frequent class
(ignoring background and void) under it; its box is the tight box of its mask. SBD's .mat
files must be converted to these PNGs first.
"""

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from training.data.dataset import (
    InstanceDataset,
    Instances,
    SkipReport,
    Supervision,
    boxes_from_masks,
    check_supervision,
    verified_size,
)

VOC_CLASSES: list[str] = [
    "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
    "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa",
    "train", "tvmonitor",
]
_VOID = 255
_CHECK_WORKERS = 8


class _BadItem(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class _ImageRecord:
    name: str
    object_ids: tuple[int, ...]
    labels: tuple[int, ...]


def _read_index_png(path: Path) -> np.ndarray:
    """uint8[H, W] palette indices of an annotation PNG."""
    if not path.is_file():
        raise _BadItem("missing_annotation")
    try:
        with Image.open(path) as image:
            if image.mode not in ("P", "L"):
                raise _BadItem("annotation_not_indexed")
            return np.asarray(image).astype(np.uint8)
    except _BadItem:
        raise
    except Exception as error:  # any decoder failure means the file is unusable
        raise _BadItem("unreadable_annotation") from error


def _image_id(name: str, position: int) -> int:
    """VOC names like 2007_000032 become 2007000032; other names their 1-based position."""
    digits = name.replace("_", "")
    return int(digits) if digits.isdigit() else position + 1


class VocDataset(InstanceDataset):
    """One split of a VOC-layout folder, seen through one supervision mode.

    `classes` are the 20 VOC classes; label l (1..20) is `classes[l - 1]` and equals the VOC
    class index, so `category_to_label` is the identity. Unusable images are skipped and
    listed in `skipped`.
    """

    def __init__(
        self,
        root: Path,
        split: str,
        supervision: Supervision,
        *,
        object_dir: str = "SegmentationObject",
        class_dir: str = "SegmentationClass",
    ) -> None:
        check_supervision(supervision)
        self.root = Path(root)
        self.supervision: Supervision = supervision
        self.object_dir = self.root / object_dir
        self.class_dir = self.root / class_dir
        self.classes: list[str] = list(VOC_CLASSES)
        self.category_to_label: dict[int, int] = {i: i for i in range(1, len(VOC_CLASSES) + 1)}
        split_file = self.root / "ImageSets" / "Segmentation" / f"{split}.txt"
        if not split_file.is_file():
            raise FileNotFoundError(f"split file not found: {split_file}")
        names = [line.strip() for line in split_file.read_text().splitlines() if line.strip()]
        self.skipped = SkipReport()
        with ThreadPoolExecutor(_CHECK_WORKERS) as pool:
            outcomes = list(pool.map(self._scan, names))
        self._records: list[_ImageRecord] = []
        self._image_ids: list[int] = []
        for position, (name, outcome) in enumerate(zip(names, outcomes, strict=True)):
            if isinstance(outcome, str):
                self.skipped.add(outcome, name)
                continue
            record, unknown = outcome
            for object_id in unknown:
                self.skipped.add("unknown_category", f"{name} object {object_id}")
            if not record.object_ids:
                self.skipped.add("no_annotations", name)
                continue
            self._records.append(record)
            self._image_ids.append(_image_id(name, position))
        self.skipped.log(f"{self.root} ({split})")

    def _image_path(self, name: str) -> Path:
        return self.root / "JPEGImages" / f"{name}.jpg"

    def _read_maps(self, name: str) -> tuple[np.ndarray, np.ndarray]:
        objects = _read_index_png(self.object_dir / f"{name}.png")
        classes = _read_index_png(self.class_dir / f"{name}.png")
        if objects.shape != classes.shape:
            raise _BadItem("annotation_size_mismatch")
        return objects, classes  # (H, W) object ids, (H, W) class indices

    def _scan(self, name: str) -> tuple[_ImageRecord, list[int]] | str:
        """The record of `name` and its object ids without a class, or the reason to skip it."""
        image_path = self._image_path(name)
        if not image_path.is_file():
            return "missing_image"
        try:
            width, height = verified_size(image_path)
        except Exception:  # any decoder failure means the file is unusable
            return "unreadable_image"
        try:
            objects, classes = self._read_maps(name)
        except _BadItem as bad:
            return bad.reason
        if objects.shape != (height, width):
            return "annotation_size_mismatch"
        object_ids, labels, unknown = [], [], []
        for object_id in np.unique(objects):
            if object_id in (0, _VOID):
                continue
            under = classes[objects == object_id]
            under = under[(under >= 1) & (under <= len(VOC_CLASSES))]
            if len(under) == 0:
                unknown.append(int(object_id))
                continue
            object_ids.append(int(object_id))
            labels.append(int(np.bincount(under).argmax()))
        return _ImageRecord(name, tuple(object_ids), tuple(labels)), unknown

    def __len__(self) -> int:
        return len(self._records)

    @property
    def image_ids(self) -> list[int]:
        return list(self._image_ids)

    def _image(self, index: int) -> tuple[Path, int, str]:
        name = self._records[index].name
        return self._image_path(name), self._image_ids[index], f"JPEGImages/{name}.jpg"

    def _instances(self, index: int, with_masks: bool) -> Instances:
        record = self._records[index]
        labels = np.array(record.labels, np.int64)
        if self.supervision == "tags" and not with_masks:
            return Instances(labels=labels, boxes=np.zeros((len(labels), 4), np.float32),
                             masks=np.zeros((len(labels), 0, 0), bool))
        objects, _ = self._read_maps(record.name)
        masks = np.stack([objects == object_id for object_id in record.object_ids])
        return Instances(labels=labels, boxes=boxes_from_masks(masks), masks=masks)
