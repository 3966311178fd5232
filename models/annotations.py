"""Weak annotations: image-level tags or class-labelled boxes, validated against a class list.

Class ids are 1-based (0 is background), matching torchvision's detection models.
"""

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class TagAnnotation:
    """The set of classes present in an image.

    labels: class ids in 1..C, unique and sorted.
    """

    labels: tuple[int, ...]

    def validate(self, num_classes: int) -> None:
        unknown = [c for c in self.labels if not 1 <= c <= num_classes]
        if unknown:
            raise ValueError(f"unknown class id(s) {unknown}: expected ids in 1..{num_classes}")
        if list(self.labels) != sorted(set(self.labels)):
            raise ValueError(f"tag labels must be unique and sorted, got {list(self.labels)}")


@dataclass(frozen=True)
class BoxAnnotation:
    """One class-labelled box per object.

    boxes: FloatTensor[N, 4] in x0, y0, x1, y1 pixels.
    labels: Int64Tensor[N] class ids in 1..C.
    """

    boxes: Tensor
    labels: Tensor

    def __len__(self) -> int:
        return int(self.labels.numel())

    def validate(self, num_classes: int, image_size: tuple[int, int]) -> None:
        """Raise ValueError naming the first bad box or class; image_size is (H, W)."""
        height, width = image_size
        if self.boxes.ndim != 2 or self.boxes.shape[1] != 4:
            raise ValueError(f"boxes must have shape (N, 4), got {tuple(self.boxes.shape)}")
        if self.labels.shape != (self.boxes.shape[0],):
            raise ValueError(
                f"got {self.labels.numel()} labels for {self.boxes.shape[0]} boxes: one per box"
            )
        pairs = zip(self.boxes.tolist(), self.labels.tolist(), strict=True)
        for index, (box, label) in enumerate(pairs):
            x0, y0, x1, y1 = box
            if not 1 <= label <= num_classes:
                raise ValueError(
                    f"box {index}: unknown class id {label}, expected ids in 1..{num_classes}"
                )
            if not all(map(_is_finite, box)):
                raise ValueError(f"box {index}: coordinates must be finite, got {box}")
            if x1 <= x0 or y1 <= y0:
                raise ValueError(f"box {index}: empty box {box} (need x0 < x1 and y0 < y1)")
            if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
                raise ValueError(
                    f"box {index}: {box} lies outside the {width}x{height} image"
                )


Annotation = TagAnnotation | BoxAnnotation


def _is_finite(value: float) -> bool:
    return value == value and abs(value) != float("inf")


def class_index(classes: Sequence[str]) -> dict[str, int]:
    """Class name -> 1-based class id."""
    return {name: index + 1 for index, name in enumerate(classes)}


def _class_id(name: str, classes: Sequence[str]) -> int:
    ids = class_index(classes)
    if name not in ids:
        raise ValueError(f"unknown class {name!r}; known classes: {', '.join(classes)}")
    return ids[name]


def tags_from_names(names: Iterable[str], classes: Sequence[str]) -> TagAnnotation:
    """Tags from class names; an unknown name raises ValueError listing the known classes."""
    return TagAnnotation(tuple(sorted({_class_id(name, classes) for name in names})))


def boxes_from_records(
    records: Iterable[Mapping[str, object]], classes: Sequence[str], image_size: tuple[int, int]
) -> BoxAnnotation:
    """Boxes from `{"label": name, "bbox": [x0, y0, x1, y1]}` records, validated.

    image_size: (H, W) of the image the boxes refer to.
    """
    labels, boxes = [], []
    for index, record in enumerate(records):
        bbox = record.get("bbox")
        if isinstance(bbox, str | bytes) or not isinstance(bbox, Sequence) or len(bbox) != 4:
            raise ValueError(f"box {index}: bbox must be a list [x0, y0, x1, y1], got {bbox!r}")
        try:
            boxes.append([float(v) for v in bbox])
        except (TypeError, ValueError) as error:
            raise ValueError(f"box {index}: bbox must hold numbers, got {bbox!r}") from error
        labels.append(_class_id(str(record.get("label")), classes))
    annotation = BoxAnnotation(
        boxes=torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
        labels=torch.tensor(labels, dtype=torch.int64),
    )
    annotation.validate(len(classes), image_size)
    return annotation
