"""Warm-start losses of the conditional network, trained from the annotation alone before the
first P-step (DESIGN section 5), when there is no prediction network output yet.

- tags: a WSDDN-style multiple-instance loss: a classification softmax over classes times a
  detection softmax over proposals, summed into image-level class scores, with binary
  cross-entropy against the tags. The detection logits are the class scores plus
  `prior_weight` times an objectness prior of the proposal (models.descriptors): with learned
  logits alone the detection stream settles on whatever region predicts the tags best, often
  the whole image or a piece of an object. On top, OICR-style self-training: the top proposal of
  each tag under the detection stream is the seed, proposals overlapping it (IoU >= 0.5) become
  positives of the tag, proposals overlapping no seed become background.
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


def detection_scores(scores: Tensor, prior: Tensor, prior_weight: float) -> Tensor:
    """FloatTensor[P, C]: WSDDN's classification stream times its prior-biased detection
    stream. scores: FloatTensor[P, C+1]; prior: FloatTensor[P]."""
    classification = scores.softmax(dim=1)[:, 1:]  # (P, C) over classes
    detection = (scores[:, 1:] + prior_weight * prior[:, None]).softmax(dim=0)  # over proposals
    return classification * detection


def multiple_instance_loss(
    scores: Tensor, tags: TagAnnotation, prior: Tensor, prior_weight: float
) -> Tensor:
    """Image-level binary cross-entropy of the summed detection scores against the tags."""
    image_scores = detection_scores(scores, prior, prior_weight).sum(dim=0).clamp(1e-6, 1 - 1e-6)
    target = torch.zeros_like(image_scores)
    target[torch.tensor(tags.labels, dtype=torch.int64) - 1] = 1.0
    return F.binary_cross_entropy(image_scores, target)


@torch.no_grad()
def tag_self_training_labels(
    scores: Tensor,
    candidates: Candidates,
    tags: TagAnnotation,
    prior: Tensor,
    prior_weight: float,
    positive_iou: float = 0.5,
) -> Tensor:
    """Int64Tensor[P]: a class per proposal, 0 for background, IGNORE for undecided.

    scores: FloatTensor[P, C+1]; candidates: every proposal (tag_candidates).
    """
    labels = torch.full((scores.shape[0],), IGNORE, dtype=torch.int64)
    detection = detection_scores(scores, prior, prior_weight)[candidates.proposal_ids]
    covered = torch.zeros(len(candidates), dtype=torch.bool)
    for label in tags.labels:
        seed = int(detection[:, label - 1].argmax())
        labels[candidates.proposal_ids[candidates.iou[seed] >= positive_iou]] = label
        covered |= candidates.intersection[seed] > 0
    labels[candidates.proposal_ids[~covered]] = 0
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
