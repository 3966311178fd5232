"""Work at a bounded resolution, answer at the image's own.

The networks and the segment proposals run on a copy of the image whose longer side is at most
the bundle's working size (`models.images.fit_image`), so a 16 Mpx photo costs about what its
working copy costs (full-size proposal masks took 7 GB for a 4 Mpx one). A `WorkingFrame`
maps hints given in image pixels into the copy; `FramedInstances` hands the masks found there
back at the image's size one at a time, so that encoding a result holds one full-size mask,
never all of them. A mask handed back still obeys its hints at full resolution: it is clipped
to its box and holds (or leaves out) the clicked pixels. An image no larger than the working
size is its own copy, and its masks come back unchanged.
"""

from collections.abc import Iterator
from dataclasses import dataclass, field, replace

import cv2
import numpy as np
import torch
from torch import Tensor

from models.annotations import Annotation, BoxAnnotation
from models.candidates import box_pixel_window
from models.images import fit_image, fitted_size
from models.refinement import PointPrompt, point_pixels
from models.structures import InstanceSet


@dataclass(frozen=True)
class WorkingFrame:
    """image_size: (H, W) of an image; size: (h, w) of its working copy."""

    image_size: tuple[int, int]
    size: tuple[int, int]

    @classmethod
    def fit(cls, image_size: tuple[int, int], max_side: int) -> "WorkingFrame":
        """The frame of `models.images.fit_image(image, max_side)`."""
        height, width = image_size
        return cls((height, width), fitted_size(height, width, max_side))

    @property
    def is_identity(self) -> bool:
        return self.size == self.image_size

    def copy(self, image: np.ndarray) -> np.ndarray:
        """uint8[h, w, 3]: the working copy of the uint8[H, W, 3] image."""
        return fit_image(image, max(self.size))

    def points(self, points: Tensor) -> Tensor:
        """FloatTensor[N, 2] x, y image pixels -> working pixels."""
        if self.is_identity:
            return points
        return (points.double() * self._scale()).float()

    def boxes(self, boxes: Tensor) -> Tensor:
        """FloatTensor[N, 4] x0, y0, x1, y1 image pixels -> working pixels, inside the copy."""
        if self.is_identity:
            return boxes
        height, width = self.size
        limit = torch.tensor([width, height, width, height], dtype=torch.float64)
        return torch.minimum(boxes.double() * self._scale().repeat(2), limit).float()

    def annotation(self, annotation: Annotation) -> Annotation:
        """Tags as they are; boxes in working pixels."""
        if isinstance(annotation, BoxAnnotation):
            return BoxAnnotation(self.boxes(annotation.boxes), annotation.labels)
        return annotation

    def prompt(self, prompt: PointPrompt) -> PointPrompt:
        """The prompt's points and box in working pixels."""
        box = None if prompt.box is None else self.boxes(prompt.box[None])[0]
        return PointPrompt(self.points(prompt.positive), self.points(prompt.negative), box)

    def mask(self, mask: Tensor) -> Tensor:
        """BoolTensor[H, W] -> BoolTensor[h, w]: the working pixels it covers at least half."""
        if self.is_identity:
            return mask
        height, width = self.size
        coverage = cv2.resize(
            mask.numpy().astype(np.uint8) * 255, (width, height), interpolation=cv2.INTER_AREA
        )
        return torch.from_numpy(coverage >= 128)

    def full_size(self, mask: Tensor, *, column_major: bool = False) -> Tensor:
        """BoolTensor[h, w] -> BoolTensor[H, W]: resampled bilinearly, kept where at least half
        on; a new tensor, or the mask itself when the frame is the identity. column_major: the
        new tensor laid out column by column, COCO RLE's order (transposing a 16 Mpx mask
        costs more than resampling it)."""
        if self.is_identity:
            return mask
        height, width = self.image_size
        pixels = mask.numpy().astype(np.uint8) * 255
        size = (width, height)
        if column_major:  # resampled transposed, then viewed back
            pixels, size = np.ascontiguousarray(pixels.T), (height, width)
        resampled = cv2.resize(pixels, size, interpolation=cv2.INTER_LINEAR)
        cv2.threshold(resampled, 127, 1, cv2.THRESH_BINARY, dst=resampled)  # 0/1 in place
        kept = torch.from_numpy(resampled.view(bool))
        return kept.T if column_major else kept

    def _scale(self) -> Tensor:
        """FloatTensor[2] (float64): working pixels per image pixel along x and along y."""
        (height, width), (h, w) = self.image_size, self.size
        return torch.tensor([w / width, h / height], dtype=torch.float64)


def _no_pixels() -> Tensor:
    return torch.zeros((0, 2), dtype=torch.int64)


@dataclass(frozen=True)
class FramedInstances:
    """Instances found in a working copy, handed out at the image's size.

    instances: the InstanceSet of the working copy (masks BoolTensor[N, h, w]).
    windows: Int64Tensor[N, 4] x0, y0, x1, y1 (exclusive) image pixels that each full-size
        mask is clipped to (its box), or None.
    inside, outside: Int64Tensor[M, 2] (row, column) image pixels that every full-size mask
        holds, leaves out (clicked points).
    """

    instances: InstanceSet
    frame: WorkingFrame
    windows: Tensor | None = None
    inside: Tensor = field(default_factory=_no_pixels)
    outside: Tensor = field(default_factory=_no_pixels)

    @classmethod
    def at_image_size(cls, instances: InstanceSet) -> "FramedInstances":
        """Instances whose masks are already at the image's size."""
        size = tuple(instances.masks.shape[-2:])
        return cls(instances, WorkingFrame(size, size))

    @classmethod
    def of_boxes(
        cls, instances: InstanceSet, frame: WorkingFrame, boxes: BoxAnnotation
    ) -> "FramedInstances":
        """Instances of box hints, instance i of box i (`models.inference.box_argmax`), each
        clipped to its box at full size. boxes: in image pixels."""
        if len(instances) != len(boxes):
            raise ValueError(f"{len(instances)} instances for {len(boxes)} boxes: one per box")
        windows = [box_pixel_window(box, frame.image_size) for box in boxes.boxes]
        windows = torch.tensor(windows, dtype=torch.int64).reshape(-1, 4)
        return cls(instances, frame, windows=windows)

    @classmethod
    def of_prompt(
        cls, instances: InstanceSet, frame: WorkingFrame, prompt: PointPrompt
    ) -> "FramedInstances":
        """Candidates of a point prompt (in image pixels): each holds the positive points,
        none of the negative ones and lies inside the box, at full size too."""
        windows = None
        if prompt.box is not None:
            window = box_pixel_window(prompt.box, frame.image_size)
            windows = torch.tensor([window], dtype=torch.int64).expand(len(instances), 4)
        return cls(
            instances, frame, windows=windows,
            inside=point_pixels(prompt.positive, frame.image_size),
            outside=point_pixels(prompt.negative, frame.image_size),
        )

    def __len__(self) -> int:
        return len(self.instances)

    @property
    def labels(self) -> Tensor:
        return self.instances.labels

    @property
    def scores(self) -> Tensor:
        return self.instances.scores

    def subset(self, keep: Tensor) -> "FramedInstances":
        """The instances selected by `keep` (BoolTensor[N] or Int64Tensor of indices)."""
        windows = None if self.windows is None else self.windows[keep]
        return replace(self, instances=self.instances.subset(keep), windows=windows)

    def mask(self, index: int, *, column_major: bool = False) -> Tensor:
        """BoolTensor[H, W]: instance `index`'s mask at the image's size (column_major:
        `WorkingFrame.full_size`)."""
        mask = self.frame.full_size(self.instances.masks[index], column_major=column_major)
        if self.frame.is_identity:  # the hints hold already: the masks were chosen by them
            return mask
        if self.windows is not None:
            x0, y0, x1, y1 = self.windows[index].tolist()
            mask[:y0], mask[y1:], mask[:, :x0], mask[:, x1:] = False, False, False, False
        mask[self.inside[:, 0], self.inside[:, 1]] = True
        mask[self.outside[:, 0], self.outside[:, 1]] = False
        return mask

    def masks(self, *, column_major: bool = False) -> Iterator[Tensor]:
        """BoolTensor[H, W]: each instance's mask in turn, at the image's size."""
        for index in range(len(self)):
            yield self.mask(index, column_major=column_major)


def framed(instances: InstanceSet | FramedInstances) -> FramedInstances:
    """FramedInstances of either kind: an InstanceSet's masks are at the image's size."""
    if isinstance(instances, FramedInstances):
        return instances
    return FramedInstances.at_image_size(instances)
