"""Warm-start losses of the conditional network, trained from the annotation alone before the
first P-step (DESIGN section 5), when there is no prediction network output yet.

- tags: a WSDDN-style multiple-instance loss (classification softmax over classes times
  detection softmax over proposals, summed into image-level class scores, binary cross-entropy
  against the tags), plus OICR-style self-training with a completeness rule: for each tag, among
  the proposals the classifier gives at least half its best probability for the class, the one
  covering most of them is the seed; proposals overlapping the seed (IoU >= 0.5) become
  positives of the class, proposals that overlap no seed become background.
- boxes: inside each box, clipped proposals that fill it tightly (tight-box IoU >= 0.8) are
  positives of the box's class; proposals that touch no box, and those inside a box that cover
  little of it, are background.
"""

import torch
from torch import Tensor
from torch.nn import functional as F
from torchvision.ops import box_iou

from models.annotations import BoxAnnotation, TagAnnotation
from models.candidates import Candidates

IGNORE = -1


def multiple_instance_loss(scores: Tensor, tags: TagAnnotation) -> Tensor:
    """WSDDN image-level loss. scores: FloatTensor[P, C+1] -> 0-dim loss."""
    classification = scores.softmax(dim=1)[:, 1:]  # (P, C)
    detection = scores[:, 1:].softmax(dim=0)  # (P, C)
    image_scores = (classification * detection).sum(dim=0).clamp(1e-6, 1 - 1e-6)  # (C,)
    target = torch.zeros_like(image_scores)
    target[torch.tensor(tags.labels, dtype=torch.int64) - 1] = 1.0
    return F.binary_cross_entropy(image_scores, target)


@torch.no_grad()
def tag_self_training_labels(
    scores: Tensor, candidates: Candidates, tags: TagAnnotation, positive_iou: float = 0.5
) -> Tensor:
    """Int64Tensor[P]: a class per proposal, 0 for background, IGNORE for undecided.

    scores: FloatTensor[P, C+1]; candidates: every proposal (tag_candidates).
    """
    num_proposals = scores.shape[0]
    labels = torch.full((num_proposals,), IGNORE, dtype=torch.int64)
    probabilities = scores.softmax(dim=1)
    proposal_ids = candidates.proposal_ids
    iou = candidates.iou
    covered = torch.zeros(len(candidates), dtype=torch.bool)
    for label in tags.labels:
        p = probabilities[proposal_ids, label]
        confident = p >= 0.5 * p.max()
        # Completeness: the seed is the confident proposal that covers most of the confident ones.
        coverage = (candidates.intersection[:, confident] / candidates.areas[confident]).sum(1)
        seed = int(torch.where(confident, coverage, torch.full_like(coverage, -1.0)).argmax())
        positives = iou[seed] >= positive_iou
        labels[proposal_ids[positives]] = label
        covered |= candidates.intersection[seed] > 0
    labels[proposal_ids[~covered]] = 0
    return labels


@torch.no_grad()
def box_fill_labels(
    candidates: Candidates,
    boxes: BoxAnnotation,
    num_proposals: int,
    proposal_boxes: Tensor,
    positive_iou: float = 0.8,
    part_iou: float = 0.5,
) -> Tensor:
    """Int64Tensor[P]: the box's class for proposals that fill a box, 0 for background,
    IGNORE otherwise. candidates: box_candidates (clipped at the lowest IoU threshold);
    proposal_boxes: FloatTensor[P, 4] tight boxes of the unclipped proposals."""
    labels = torch.full((num_proposals,), IGNORE, dtype=torch.int64)
    overlaps = box_iou(proposal_boxes, boxes.boxes)  # (P, B)
    # Proposals touching no box, and parts that fit no box, are background.
    labels[overlaps.max(dim=1).values < part_iou] = 0
    fit = box_iou(candidates.boxes, boxes.boxes).gather(1, candidates.box_ids[:, None]).squeeze(1)
    positive = fit >= positive_iou
    labels[candidates.proposal_ids[positive]] = boxes.labels[candidates.box_ids[positive]]
    return labels


def self_training_loss(scores: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy on the decided proposals; 0 attached to the graph when none is decided."""
    if (labels != IGNORE).any():
        return F.cross_entropy(scores, labels, ignore_index=IGNORE)
    return scores.sum() * 0
