"""Hand-built inputs shared by the model tests."""

import numpy as np
import torch
from torch import Tensor

from models.annotations import BoxAnnotation
from models.conditional import ConditionalNet
from models.delta import mask_iou

TWIN_SIZE = 64


def twin_discs() -> tuple[np.ndarray, Tensor]:
    """Two identical red discs side by side on a grey image, and four proposals: disc A, disc
    B, the background around them and the whole image.

    Given the tag of the discs' class the two discs are two equally right answers: the networks
    see the same shape and colours in both and tell them apart only by their place, so their
    margins differ by far less than the default noise moves them. Returns uint8[64, 64, 3] and
    BoolTensor[4, 64, 64].
    """
    ys, xs = torch.meshgrid(torch.arange(TWIN_SIZE), torch.arange(TWIN_SIZE), indexing="ij")
    discs = [(xs - cx) ** 2 + (ys - 32) ** 2 <= 7**2 for cx in (22, 42)]
    image = np.full((TWIN_SIZE, TWIN_SIZE, 3), 128, dtype=np.uint8)
    image[(discs[0] | discs[1]).numpy()] = (230, 50, 25)
    proposals = torch.stack(
        [*discs, ~(discs[0] | discs[1]), torch.ones(TWIN_SIZE, TWIN_SIZE, dtype=torch.bool)]
    )
    return image, proposals


def box_pick_ious(
    net: ConditionalNet,
    image: np.ndarray | Tensor,
    proposals: Tensor,
    boxes: BoxAnnotation,
    objects: Tensor,
) -> list[float]:
    """The IoU of each box's pick (one sample, noise seed 0) with the box's object.

    objects: BoolTensor[B, H, W], the object of each box.
    """
    pick = net.sample(image, proposals, boxes, 1, torch.Generator().manual_seed(0))[0]
    assert len(pick) == len(boxes)  # instance b is box b's (models.inference.box_argmax)
    return mask_iou(pick.masks, objects).diagonal().tolist()
