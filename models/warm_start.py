"""Warm-start losses of the conditional network, trained from the annotation alone before the
first P-step (docs/design.md, Warm start), when there is no prediction network output yet.

- tags: a WSDDN-style multiple-instance loss: a classification softmax over classes times a
  detection softmax over proposals, summed into image-level class scores, with binary
  cross-entropy against the tags. The detection logits are the class scores, which carry the
  objectness prior of the proposal (models.descriptors) with a learned weight, plus an optional
  extra `prior_weight` times the prior (0 by default: more of it made the seeds worse). On
  top, OICR-style self-training: the top proposal of each tag under the detection stream is
  a seed, and so is each proposal of the tag scoring at least `seed_ratio` times the top that
  overlaps no other seed (a tag may have several instances). Each seed grows to the candidate
  of highest objectness prior that contains it (the whole object of a discriminative part).
  Proposals overlapping a seed (IoU >= 0.5) become positives of the tag, proposals overlapping
  no seed become background. No two tags seed the same object.
- boxes: self-training seeded by GrabCut: in each box, the candidate closest to GrabCut's
  foreground and those nearly repeating it are positives of the box's class; the rest of the box
  and proposals that fit no box are background. (Filling the box is no criterion: the box's
  own rectangle and its background corners fill it too.)
"""

import torch
from torch import Tensor
from torch.nn import functional as F
from torchvision.ops import box_iou

from models.annotations import BoxAnnotation, TagAnnotation
from models.candidates import Candidates
from models.inference import InferenceConfig

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
    seed_ratio: float,
    positive_iou: float = 0.5,
) -> Tensor:
    """Int64Tensor[P]: a class per proposal, 0 for background, IGNORE for undecided.

    The tags take their seeds in turn, the tag of the strongest top candidate first, and no
    seed overlaps an earlier tag's (τ_overlap): one object is one class's seed, so that a tag
    whose own object scores lower does not take its neighbour's. scores: FloatTensor[P, C+1];
    candidates: every proposal (tag_candidates); seed_ratio: see instance_seeds.
    """
    labels = torch.full((scores.shape[0],), IGNORE, dtype=torch.int64)
    detection = detection_scores(scores, prior, prior_weight)[candidates.proposal_ids]
    covered = torch.zeros(len(candidates), dtype=torch.bool)
    taken = torch.zeros(len(candidates), dtype=torch.bool)
    candidate_prior = prior[candidates.proposal_ids]
    tag_order = sorted(tags.labels, key=lambda label: -float(detection[:, label - 1].max()))
    for label in tag_order:
        seeds = instance_seeds(detection[:, label - 1], candidates, seed_ratio, excluded=taken)
        grown = (whole_object(seed, candidates, candidate_prior, taken) for seed in seeds)
        seeds = list(dict.fromkeys(grown))
        for seed in seeds:
            labels[candidates.proposal_ids[candidates.iou[seed] >= positive_iou]] = label
            covered |= candidates.intersection[seed] > 0
        if seeds:
            overlap = candidates.overlap[:, seeds] > InferenceConfig.overlap_threshold
            taken |= overlap.any(dim=1)
    labels[candidates.proposal_ids[~covered]] = 0
    return labels


def whole_object(
    seed: int, candidates: Candidates, prior: Tensor, excluded: Tensor, containment: float = 0.9
) -> int:
    """The seed grown to the object it is part of: of the candidates that hold at least
    `containment` of the seed's pixels (the seed among them) and are not `excluded`
    (BoolTensor[Q]), the one of highest objectness prior (FloatTensor[Q]).

    The detection stream's top candidate is often a discriminative part, such as an arc of a
    disc's rim; the whole object contains it and has the stronger contour and colour contrast
    (warm-start picks of the right object, mean of three training seeds: 154 -> 166 of 263).
    """
    containing = candidates.intersection[seed] >= containment * candidates.areas[seed]
    containing &= ~excluded
    containing[seed] = True
    ids = containing.nonzero().squeeze(1)
    best = int(ids[prior[ids].argmax()])
    return best if prior[best] > prior[seed] else seed


def instance_seeds(
    detection: Tensor,
    candidates: Candidates,
    ratio: float,
    overlap_threshold: float = InferenceConfig.overlap_threshold,
    excluded: Tensor | None = None,
) -> list[int]:
    """The seeds of one tag, candidate indices: its top candidate under the detection stream,
    then, by score, each candidate scoring at least `ratio` times the top that overlaps no seed
    beyond overlap_threshold (intersection over the smaller mask, τ_overlap of the instances of
    one output): more instances of the class (ratio 1: the top one alone). Candidates where
    `excluded` (BoolTensor[Q]) is set are passed over; none may be left.
    detection: FloatTensor[Q]."""
    order = detection.argsort(descending=True)
    if excluded is not None:
        order = order[~excluded[order]]
    if len(order) == 0:
        return []
    order = order[detection[order] >= ratio * detection[order[0]]].tolist()
    seeds = order[:1]
    for q in order[1:]:
        if not (candidates.overlap[q, seeds] > overlap_threshold).any():
            seeds.append(q)
    return seeds


@torch.no_grad()
def box_seed_labels(
    candidates: Candidates,
    boxes: BoxAnnotation,
    num_proposals: int,
    proposal_boxes: Tensor,
    seed_prior: Tensor,
    positive_iou: float = 0.9,
    negative_iou: float = 0.3,
    part_iou: float = 0.5,
) -> Tensor:
    """Int64Tensor[P]: a class per proposal, 0 for background, IGNORE for undecided.

    Each box's seed is its candidate of highest seed_prior; candidates of the box that
    nearly repeat the seed (IoU >= positive_iou) take the box's class (at 0.7 instead of 0.9 the
    warm-started network chose a near-seed candidate for 47% of the boxes instead of 83%, and
    its choices fell from 0.93 to 0.83 mean IoU with the objects), those that barely do (IoU <
    negative_iou: the box's background, or its rectangle around a thin object) and proposals
    that fit no box are background. Positives win over background where boxes overlap.
    candidates: box_candidates; proposal_boxes: FloatTensor[P, 4] tight boxes of the
    proposals; seed_prior: FloatTensor[Q], e.g. agreement with GrabCut in the box.
    """
    labels = torch.full((num_proposals,), IGNORE, dtype=torch.int64)
    overlaps = box_iou(proposal_boxes, boxes.boxes)  # (P, B)
    labels[overlaps.max(dim=1).values < part_iou] = 0
    positives = []
    for b in range(len(boxes)):
        ids = (candidates.box_ids == b).nonzero().squeeze(1)
        if ids.numel() == 0:
            continue
        seed = ids[seed_prior[ids].argmax()]
        iou = candidates.iou[seed, ids]
        labels[candidates.proposal_ids[ids[iou < negative_iou]]] = 0
        positives.append((candidates.proposal_ids[ids[iou >= positive_iou]], boxes.labels[b]))
    for proposal_ids, label in positives:
        labels[proposal_ids] = label
    return labels


def box_ranking_loss(
    scores: Tensor, candidates: Candidates, labels: Tensor, boxes: BoxAnnotation
) -> Tensor:
    """Per box, the negative log of the softmax mass its positive candidates take among all its
    candidates, on the margins s[c] - s[bg] that the box argmax compares. scores: FloatTensor[P,
    C+1]; labels: box_seed_labels."""
    margins = scores[candidates.proposal_ids] - scores[candidates.proposal_ids, :1]
    terms = []
    for b in range(len(boxes)):
        ids = (candidates.box_ids == b).nonzero().squeeze(1)
        label = int(boxes.labels[b])
        positive = labels[candidates.proposal_ids[ids]] == label
        if ids.numel() > 1 and positive.any():
            log_p = margins[ids, label].log_softmax(dim=0)
            terms.append(-log_p[positive].logsumexp(dim=0))
    return torch.stack(terms).mean() if terms else scores.sum() * 0


def self_training_loss(scores: Tensor, labels: Tensor) -> Tensor:
    """Cross-entropy on the decided proposals; 0 attached to the graph when none is decided."""
    if (labels != IGNORE).any():
        return F.cross_entropy(scores, labels, ignore_index=IGNORE)
    return scores.sum() * 0
