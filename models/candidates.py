"""Candidate instances: the masks an annotation-consistent output may be made of.

For tags every proposal is a candidate. For boxes a candidate is a proposal clipped to one box
whose tight box has IoU >= τ_box with that box, so that any choice of one candidate per box is
consistent with the boxes. The pairwise geometry of the candidates (intersections, IoUs) is
computed once per image; every argmax and every Δ against an output made of candidates then
reads it instead of touching masks again.
"""

import math
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor
from torchvision.ops import box_iou

from models.annotations import BoxAnnotation, TagAnnotation
from models.structures import any_along, mask_areas, mask_boxes


@dataclass(frozen=True)
class Candidates:
    """Q candidate masks derived from P proposals.

    masks: BoolTensor[Q, H, W].
    proposal_ids: Int64Tensor[Q], the proposal each candidate comes from.
    box_ids: Int64Tensor[Q], the annotation box it belongs to (-1 for tags).
    """

    masks: Tensor
    proposal_ids: Tensor
    box_ids: Tensor

    def __len__(self) -> int:
        return int(self.proposal_ids.numel())

    @cached_property
    def areas(self) -> Tensor:
        """FloatTensor[Q] pixel counts."""
        return mask_areas(self.masks)

    @cached_property
    def boxes(self) -> Tensor:
        """FloatTensor[Q, 4] tight boxes, x0, y0, x1, y1 pixels (x1, y1 exclusive)."""
        return mask_boxes(self.masks)

    @cached_property
    def intersection(self) -> Tensor:
        """FloatTensor[Q, Q] pixel counts of pairwise intersections."""
        flat = self.masks.flatten(1).float()
        return flat @ flat.T

    @cached_property
    def iou(self) -> Tensor:
        """FloatTensor[Q, Q] mask IoU."""
        union = self.areas[:, None] + self.areas[None, :] - self.intersection
        return self.intersection / union.clamp(min=1.0)

    @cached_property
    def box_iou(self) -> Tensor:
        """FloatTensor[Q, Q] IoU of the tight boxes."""
        return box_iou(self.boxes, self.boxes)

    @cached_property
    def overlap(self) -> Tensor:
        """FloatTensor[Q, Q]: intersection over the smaller mask (1 when one contains the other)."""
        smaller = torch.minimum(self.areas[:, None], self.areas[None, :])
        return self.intersection / smaller.clamp(min=1.0)


def tag_candidates(proposals: Tensor) -> Candidates:
    """Every non-empty proposal is a candidate. proposals: BoolTensor[P, H, W]."""
    nonempty = any_along(proposals.flatten(1), 1)
    keep = nonempty.nonzero().squeeze(1)
    return Candidates(
        masks=proposals if bool(nonempty.all()) else proposals[keep],
        proposal_ids=keep,
        box_ids=torch.full_like(keep, -1),
    )


def annotation_candidates(
    proposals: Tensor, annotation: TagAnnotation | BoxAnnotation | None, box_iou_threshold: float
) -> Candidates:
    """The candidates an output consistent with the annotation is made of (every proposal for
    tags)."""
    if isinstance(annotation, BoxAnnotation):
        return box_candidates(proposals, annotation, box_iou_threshold)
    return tag_candidates(proposals)


def box_pixel_window(box: Tensor, image_size: tuple[int, int]) -> tuple[int, int, int, int]:
    """The pixel window x0, y0, x1, y1 (x1, y1 exclusive) a mask clipped to `box` may cover."""
    height, width = image_size
    x0, y0, x1, y1 = box.tolist()
    return (
        max(0, math.floor(x0)),
        max(0, math.floor(y0)),
        min(width, math.ceil(x1)),
        min(height, math.ceil(y1)),
    )


def box_candidates(
    proposals: Tensor, annotation: BoxAnnotation, box_iou_threshold: float
) -> Candidates:
    """Proposals clipped to each box that still fit the box.

    proposals: BoolTensor[P, H, W]. A clipped proposal is a candidate for box b when it is
    non-empty and its tight box has IoU >= box_iou_threshold with box b's pixel window (the box
    as the pixel grid sees it, so that the filled window itself always fits).
    """
    image_size = tuple(proposals.shape[-2:])
    masks, proposal_ids, box_ids = [], [], []
    for b, box in enumerate(annotation.boxes):
        x0, y0, x1, y1 = box_pixel_window(box, image_size)
        window = torch.zeros(image_size, dtype=torch.bool)
        window[y0:y1, x0:x1] = True
        clipped = proposals & window
        window_box = torch.tensor([[x0, y0, x1, y1]], dtype=torch.float32)
        fits = box_iou(mask_boxes(clipped), window_box).squeeze(1) >= box_iou_threshold
        fits &= any_along(clipped.flatten(1), 1)
        ids = fits.nonzero().squeeze(1)
        masks.append(clipped[ids])
        proposal_ids.append(ids)
        box_ids.append(torch.full_like(ids, b))
    if not masks:
        return Candidates(
            masks=proposals[:0],
            proposal_ids=torch.zeros(0, dtype=torch.int64),
            box_ids=torch.zeros(0, dtype=torch.int64),
        )
    return Candidates(torch.cat(masks), torch.cat(proposal_ids), torch.cat(box_ids))


def box_rectangles(annotation: BoxAnnotation, image_size: tuple[int, int]) -> Tensor:
    """BoolTensor[N, H, W]: each box filled, on the pixel window of `box_pixel_window`."""
    rectangles = torch.zeros((len(annotation), *image_size), dtype=torch.bool)
    for b, box in enumerate(annotation.boxes):
        x0, y0, x1, y1 = box_pixel_window(box, image_size)
        rectangles[b, y0:y1, x0:x1] = True
    return rectangles


def with_box_rectangles(proposals: Tensor, annotation: BoxAnnotation) -> Tensor:
    """Append each box's filled rectangle to the proposals unless it is already one of them
    (boxes with the same pixel window get one rectangle each).

    The rectangle always fits its box, so with it every box has at least one candidate and a
    consistent output always exists.
    """
    rectangles = box_rectangles(annotation, tuple(proposals.shape[-2:]))
    flat = proposals.flatten(1)
    missing = []
    for b, rectangle in enumerate(rectangles):
        same_window = sum(bool((rectangle == earlier).all()) for earlier in rectangles[:b])
        present = int((flat == rectangle.flatten()).all(1).sum())
        if present <= same_window:  # boxes sharing a window each need a rectangle of their own
            missing.append(rectangle)
    return torch.cat([proposals, torch.stack(missing)]) if missing else proposals
