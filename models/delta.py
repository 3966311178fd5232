"""The task loss Δ between two instance segmentations (docs/design.md, Task loss) and batched IoUs.

Δ mirrors Mask R-CNN's multi-task loss: Δ = Δ_cls + Δ_box + Δ_mask. Each instance is matched
to the instance of the other output with the highest mask IoU; a match with IoU 0 (or no
instance at all) counts as a full mismatch, 1 per term. Each term is averaged over the
instances of one output, and the two directions are averaged, so Δ is symmetric, 0 when the
outputs agree and at most 3.
"""

import torch
from torch import Tensor
from torchvision.ops import box_iou

from models.structures import InstanceSet, any_along


def mask_iou(masks1: Tensor, masks2: Tensor, areas1: Tensor | None = None) -> Tensor:
    """IoU of every pair of masks as one matrix product.

    masks1: Tensor[N, H, W] (bool or fractional), masks2: Tensor[M, H, W]; areas1:
    FloatTensor[N], the sums of masks1 where known: the product then reads masks1 only where
    some mask of masks2 is on (many proposals against a few instances: 60 ms to 4 ms).
    Returns FloatTensor[N, M]; pairs of two empty masks have IoU 0.
    """
    a = masks1.flatten(1)
    b = masks2.flatten(1)
    if areas1 is None:
        areas1 = a.float().sum(1)
    else:
        support = any_along(b, 0).nonzero().squeeze(1)
        a, b = a[:, support], b[:, support]
    b = b.float()
    intersection = a.float() @ b.T  # (N, M)
    union = areas1.float()[:, None] + b.sum(1)[None, :] - intersection
    return torch.where(union > 0, intersection / union.clamp(min=1e-9), torch.zeros(()))


def match_costs(
    labels1: Tensor, boxes1: Tensor, labels2: Tensor, boxes2: Tensor, ious: Tensor
) -> Tensor:
    """Per instance of output 1, the cost of its best (highest mask IoU) match in output 2.

    labels*: Int64Tensor[N] / [M]; boxes*: FloatTensor[N, 4] / [M, 4]; ious: FloatTensor[N, M].
    Returns FloatTensor[N, 3]: the class, box and mask terms (each in [0, 1]).
    """
    n = labels1.numel()
    if ious.shape[1] == 0:
        return torch.ones((n, 3))
    best_iou = ious.max(dim=1).values
    # Among equally overlapping instances prefer one of the same class (identical masks tie).
    ties = ious == best_iou[:, None]
    preferred = ties & (labels1[:, None] == labels2[None, :])
    best = torch.where(
        preferred.any(dim=1), preferred.float().argmax(dim=1), ties.float().argmax(dim=1)
    )
    matched = best_iou > 0
    class_term = (labels1 != labels2[best]).float()
    box_term = 1 - box_iou(boxes1, boxes2).gather(1, best[:, None]).squeeze(1)
    mask_term = 1 - best_iou
    costs = torch.stack([class_term, box_term, mask_term], dim=1)
    return torch.where(matched[:, None], costs, torch.ones(()))


def delta_terms(y1: InstanceSet, y2: InstanceSet) -> dict[str, Tensor]:
    """Δ_cls, Δ_box and Δ_mask between two instance sets of one image (0-dim tensors)."""
    return _delta_terms(y1.labels, y1.boxes, y2.labels, y2.boxes, mask_iou(y1.masks, y2.masks))


def _delta_terms(
    labels1: Tensor, boxes1: Tensor, labels2: Tensor, boxes2: Tensor, ious: Tensor
) -> dict[str, Tensor]:
    if labels1.numel() == 0 and labels2.numel() == 0:
        zero = torch.zeros(())
        return {"cls": zero, "box": zero, "mask": zero}
    forward = _direction_mean(match_costs(labels1, boxes1, labels2, boxes2, ious))
    backward = _direction_mean(match_costs(labels2, boxes2, labels1, boxes1, ious.T))
    terms = (forward + backward) / 2
    return {"cls": terms[0], "box": terms[1], "mask": terms[2]}


def _direction_mean(costs: Tensor) -> Tensor:
    # An empty side has no counterpart for any instance of the other side: a full mismatch.
    return costs.mean(dim=0) if costs.shape[0] else torch.ones(3)


def delta(y1: InstanceSet, y2: InstanceSet) -> Tensor:
    """Δ(y1, y2) = Δ_cls + Δ_box + Δ_mask, a 0-dim FloatTensor in [0, 3]."""
    return sum(delta_terms(y1, y2).values())


def delta_matrix(outputs: list[InstanceSet]) -> Tensor:
    """FloatTensor[K, K]: Δ between every pair of K outputs of one image, with the mask IoUs of
    all their instances from a single matrix product."""
    sizes = [len(y) for y in outputs]
    masks = torch.cat([y.masks for y in outputs])
    labels = torch.cat([y.labels for y in outputs])
    boxes = torch.cat([y.boxes for y in outputs])
    ious = mask_iou(masks, masks)
    starts = [sum(sizes[:i]) for i in range(len(sizes))]
    blocks = [slice(start, start + size) for start, size in zip(starts, sizes, strict=True)]
    matrix = torch.zeros((len(outputs), len(outputs)))
    for i, a in enumerate(blocks):
        for j in range(i + 1, len(blocks)):
            b = blocks[j]
            terms = _delta_terms(labels[a], boxes[a], labels[b], boxes[b], ious[a, b])
            matrix[i, j] = matrix[j, i] = sum(terms.values())
    return matrix
