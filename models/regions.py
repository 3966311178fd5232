"""Segment proposals as the prediction network reads them: the RoIs of its heads.

Each proposal brings what a detector trained from scratch on a few hundred images cannot learn
on its own: its tight box (the RoI), its mask resampled to the box (the shape the box head sees
and the mask head starts from) and its descriptors (models.descriptors). All of it depends on
the image and the proposals only, so it is computed once per image and cached.
"""

from dataclasses import dataclass, replace

import torch
from torch import Tensor
from torchvision.ops import roi_align

from models.descriptors import flip_descriptors, proposal_descriptors, working_copy
from models.structures import any_along, mask_areas, mask_boxes

# Mask R-CNN's mask resolution: the shapes are the mask head's starting point.
SHAPE_SIZE = 28
# Descriptors are computed on a copy whose longer side is this: at 128 a classifier over
# descriptors and shapes reached 0.58 mAP_r@0.5 on synthetic data against 0.51 at 64.
DESCRIPTOR_WORK_SIZE = 128
# Masks resampled at a time: bounds the float copy of the masks.
_SHAPE_CHUNK = 64


@dataclass(frozen=True)
class RegionProposals:
    """An image's segment proposals with their boxes, shapes and descriptors.

    masks: BoolTensor[P, H, W]; boxes: FloatTensor[P, 4] tight boxes in x0, y0, x1, y1 pixels
    (x1, y1 exclusive); shapes: FloatTensor[P, S, S] each mask's coverage of its box on an
    S x S grid (S = SHAPE_SIZE); descriptors: FloatTensor[P, DESCRIPTOR_SIZE]; areas:
    FloatTensor[P], the masks' pixel counts.
    """

    masks: Tensor
    boxes: Tensor
    shapes: Tensor
    descriptors: Tensor
    areas: Tensor

    def __len__(self) -> int:
        return int(self.boxes.shape[0])

    @property
    def image_size(self) -> tuple[int, int]:
        return (int(self.masks.shape[-2]), int(self.masks.shape[-1]))

    def to(self, device: torch.device | str) -> "RegionProposals":
        return RegionProposals(
            self.masks.to(device),
            self.boxes.to(device),
            self.shapes.to(device),
            self.descriptors.to(device),
            self.areas.to(device),
        )

    def hflip(self) -> "RegionProposals":
        """The proposals of the horizontally mirrored image."""
        width = self.masks.shape[-1]
        x0, y0, x1, y1 = self.boxes.unbind(1)
        return replace(
            self,
            masks=self.masks.flip(-1),
            boxes=torch.stack([width - x1, y0, width - x0, y1], dim=1),
            shapes=self.shapes.flip(-1),
            descriptors=flip_descriptors(self.descriptors),
        )


@torch.no_grad()
def describe_regions(image: Tensor, masks: Tensor) -> RegionProposals:
    """image: FloatTensor[3, H, W] in [0, 1]; masks: BoolTensor[P, H, W], each non-empty."""
    if masks.ndim != 3 or masks.shape[-2:] != image.shape[-2:]:
        raise ValueError(
            f"proposal masks must be (P, H, W) with the image's size {tuple(image.shape[-2:])}, "
            f"got {tuple(masks.shape)}"
        )
    if masks.shape[0] and not any_along(masks.flatten(1), 1).all():
        raise ValueError("proposal masks must be non-empty")
    boxes = mask_boxes(masks)
    return RegionProposals(
        masks=masks,
        boxes=boxes,
        shapes=mask_shapes(masks, boxes),
        descriptors=proposal_descriptors(working_copy(image, masks, DESCRIPTOR_WORK_SIZE)),
        areas=mask_areas(masks),
    )


def mask_shapes(masks: Tensor, boxes: Tensor, size: int = SHAPE_SIZE) -> Tensor:
    """FloatTensor[N, size, size]: each mask's coverage of its box (RoIAlign, as Mask R-CNN
    projects masks on boxes). masks: Tensor[N, H, W]; boxes: FloatTensor[N, 4]."""
    shapes = [masks.new_zeros((0, 1, size, size), dtype=torch.float32)]
    for start in range(0, len(masks), _SHAPE_CHUNK):
        chunk = masks[start : start + _SHAPE_CHUNK, None].float()  # (n, 1, H, W)
        index = torch.arange(len(chunk), dtype=torch.float32, device=chunk.device)[:, None]
        rois = torch.cat([index, boxes[start : start + _SHAPE_CHUNK].to(chunk)], dim=1)
        shapes.append(roi_align(chunk, rois, size, aligned=True))
    return torch.cat(shapes)[:, 0]
