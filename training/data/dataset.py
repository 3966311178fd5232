"""The sample type shared by all datasets, and the report of what a dataset skipped.

A training sample carries only what its supervision mode lets training see: image-level tags,
or boxes, or masks. Ground-truth masks for evaluation come from `ground_truth(index)`, a
separate, explicit call on the dataset.
"""

import logging
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, get_args

import numpy as np
from PIL import Image

from models.orientation import upright, upright_size

Supervision = Literal["tags", "boxes", "masks"]
SUPERVISION_MODES: tuple[str, ...] = get_args(Supervision)

_EXAMPLES_PER_REASON = 5

logger = logging.getLogger(__name__)


@dataclass(frozen=True, eq=False)
class Instances:
    """Ground-truth instances of one image.

    labels: int64[N], contiguous class labels 1..C.
    boxes: float32[N, 4] in x0, y0, x1, y1 pixels.
    masks: bool[N, H, W].
    """

    labels: np.ndarray
    boxes: np.ndarray
    masks: np.ndarray


@dataclass(frozen=True, eq=False)
class Sample:
    """One training image with its weak (or full) annotation.

    image: uint8[H, W, 3] RGB.
    tags: the contiguous class labels (1..C) present in the image; set in every mode.
    labels: int64[N] per-object labels; None under "tags" supervision.
    boxes: float32[N, 4] x0, y0, x1, y1 pixels; None under "tags" supervision.
    masks: bool[N, H, W]; set only under "masks" supervision.
    """

    image: np.ndarray
    image_id: int
    file_name: str
    supervision: Supervision
    tags: frozenset[int]
    labels: np.ndarray | None = None
    boxes: np.ndarray | None = None
    masks: np.ndarray | None = None


def make_sample(
    *, image: np.ndarray, image_id: int, file_name: str, supervision: Supervision,
    instances: Instances,
) -> Sample:
    """Build a sample that exposes only what `supervision` allows."""
    tags = frozenset(int(label) for label in instances.labels)
    common = {"image": image, "image_id": image_id, "file_name": file_name,
              "supervision": supervision, "tags": tags}
    if supervision == "tags":
        return Sample(**common)
    if supervision == "boxes":
        return Sample(**common, labels=instances.labels, boxes=instances.boxes)
    if supervision == "masks":
        return Sample(**common, labels=instances.labels, boxes=instances.boxes,
                      masks=instances.masks)
    raise ValueError(f"supervision must be one of {SUPERVISION_MODES}, got {supervision!r}")


def check_supervision(supervision: str) -> None:
    if supervision not in SUPERVISION_MODES:
        raise ValueError(f"supervision must be one of {SUPERVISION_MODES}, got {supervision!r}")


def boxes_from_masks(masks: np.ndarray) -> np.ndarray:
    """float32[N, 4] tight x0, y0, x1, y1 boxes (x1, y1 exclusive) of bool[N, H, W] masks."""
    boxes = np.zeros((len(masks), 4), np.float32)
    for i, mask in enumerate(masks):
        ys, xs = np.nonzero(mask)
        if len(xs):
            boxes[i] = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    return boxes


@dataclass
class SkipReport:
    """What a dataset left out at construction: a count per reason and the first examples."""

    counts: Counter = field(default_factory=Counter)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, reason: str, example: str) -> None:
        self.counts[reason] += 1
        shown = self.examples.setdefault(reason, [])
        if len(shown) < _EXAMPLES_PER_REASON:
            shown.append(example)

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def summary(self) -> str:
        parts = [
            f"{reason}: {count} (e.g. {'; '.join(self.examples[reason][:2])})"
            for reason, count in sorted(self.counts.items())
        ]
        return ", ".join(parts)

    def log(self, source: str) -> None:
        """One warning line, only when something was skipped."""
        if self.total:
            logger.warning("%s: skipped %d item(s): %s", source, self.total, self.summary())


def verified_size(path: Path) -> tuple[int, int]:
    """(width, height) of an image file, upright (`models.orientation.upright_size`), once PIL has
    checked the file; a broken file raises (PIL raises many types)."""
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:  # verify() leaves the image unusable
        return upright_size(image)


def load_rgb(path: Path) -> np.ndarray:
    """uint8[H, W, 3] RGB pixels of an image file, upright (`models.orientation.upright`)."""
    with Image.open(path) as image:
        return np.asarray(upright(image).convert("RGB"))


class InstanceDataset:
    """Indexable dataset of `Sample`s; subclasses say where item i's image and instances are.

    Subclasses set `classes` (names of labels 1..C), `supervision` and `skipped`, and
    implement `__len__`, `_image(index) -> (path, image_id, file_name)` and
    `_instances(index, with_masks)`; without masks, `Instances.masks` may be empty (N, 0, 0).
    """

    classes: list[str]
    supervision: Supervision
    skipped: SkipReport

    def __len__(self) -> int:
        raise NotImplementedError

    def _image(self, index: int) -> tuple[Path, int, str]:
        raise NotImplementedError

    def _instances(self, index: int, with_masks: bool) -> Instances:
        raise NotImplementedError

    def __getitem__(self, index: int) -> Sample:
        if not -len(self) <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} items")
        index %= len(self)
        path, image_id, file_name = self._image(index)
        instances = self._instances(index, with_masks=self.supervision == "masks")
        return make_sample(image=load_rgb(path), image_id=image_id, file_name=file_name,
                           supervision=self.supervision, instances=instances)

    def ground_truth(self, index: int) -> Instances:
        """Full ground truth of item `index` (labels, boxes, masks), for evaluation only."""
        return self._instances(index, with_masks=True)
