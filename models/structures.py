"""InstanceSet: one instance segmentation (a set of class-labelled masks)."""

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor


@dataclass(frozen=True)
class InstanceSet:
    """An instance segmentation of one image.

    masks: BoolTensor[N, H, W].
    labels: Int64Tensor[N], class ids in 1..C.
    scores: FloatTensor[N], confidence of each instance.
    proposal_ids: Int64Tensor[N], the segment proposal each instance was chosen from
        (-1 when it does not come from a proposal, e.g. a prediction network output).
    """

    masks: Tensor
    labels: Tensor
    scores: Tensor
    proposal_ids: Tensor

    def __len__(self) -> int:
        return int(self.labels.numel())

    @classmethod
    def empty(cls, image_size: tuple[int, int]) -> "InstanceSet":
        return cls(
            masks=torch.zeros((0, *image_size), dtype=torch.bool),
            labels=torch.zeros(0, dtype=torch.int64),
            scores=torch.zeros(0),
            proposal_ids=torch.zeros(0, dtype=torch.int64),
        )

    @classmethod
    def from_masks(
        cls, masks: Tensor, labels: Tensor, scores: Tensor | None = None
    ) -> "InstanceSet":
        """An instance set whose masks do not come from proposals."""
        n = labels.numel()
        return cls(
            masks=masks.bool(),
            labels=labels.to(torch.int64),
            scores=torch.ones(n) if scores is None else scores.float(),
            proposal_ids=torch.full((n,), -1, dtype=torch.int64),
        )

    def subset(self, keep: Tensor) -> "InstanceSet":
        """The instances selected by `keep` (BoolTensor[N] or Int64Tensor of indices)."""
        return InstanceSet(
            self.masks[keep], self.labels[keep], self.scores[keep], self.proposal_ids[keep]
        )

    @property
    def boxes(self) -> Tensor:
        """FloatTensor[N, 4]: tight boxes of the masks in x0, y0, x1, y1 pixels (x1, y1 exclusive);
        zeros for an empty mask."""
        return mask_boxes(self.masks)


def any_along(masks: Tensor, dim: int) -> Tensor:
    """BoolTensor: whether `masks` has a set element along `dim`. For a BoolTensor the max of
    its uint8 view: on the CPU torch's any() of bools along a dimension is about ten times
    slower (bench/mask_reductions.py)."""
    if masks.dtype != torch.bool or masks.shape[dim] == 0:
        return masks.any(dim)
    return masks.view(torch.uint8).amax(dim).bool()


def mask_areas(masks: Tensor) -> Tensor:
    """FloatTensor[N] pixel counts of BoolTensor[N, H, W]. On the CPU numpy counts them: torch
    sums bools 12 times slower (300 masks of 256 px: 80 ms)."""
    if masks.device.type != "cpu" or masks.dtype != torch.bool:
        return masks.flatten(1).sum(1).float()
    counts = np.count_nonzero(masks.numpy(), axis=(1, 2))
    return torch.from_numpy(counts).float()


def mask_boxes(masks: Tensor) -> Tensor:
    """FloatTensor[N, 4] tight boxes (x1, y1 exclusive) of BoolTensor[N, H, W]; 0 if empty."""
    boxes = torch.zeros((masks.shape[0], 4))
    # From the rows and columns a mask touches: a full-size mask of a 16 Mpx image would take
    # 256 MB of pixel coordinates in torchvision's masks_to_boxes.
    rows, columns = any_along(masks, 2), any_along(masks, 1)  # (N, H), (N, W)
    nonempty = rows.any(dim=1)
    if nonempty.any():
        rows, columns = rows[nonempty].to(torch.uint8), columns[nonempty].to(torch.uint8)
        boxes[nonempty] = torch.stack([
            columns.argmax(dim=1),
            rows.argmax(dim=1),
            columns.shape[1] - columns.flip(1).argmax(dim=1),
            rows.shape[1] - rows.flip(1).argmax(dim=1),
        ], dim=1).float().cpu()
    return boxes
