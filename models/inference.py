"""Annotation-consistent inference: argmax and loss-augmented argmax (docs/design.md,
Annotation-consistent inference).

Scores are per proposal and class, FloatTensor[P, C+1] with column 0 the background. An output
is a `Selection` of candidates (see `models.candidates`) with a class each; its score is the
sum over selected (candidate, class) pairs of the margin s[i, c] - s[i, bg] (the sum of
s[i, bg] over all proposals is common to every output and dropped).

- tags: each tagged class first takes its best candidate, then candidates are added greedily
  by margin while it is positive, up to max_instances_per_tag per class; a candidate that
  overlaps a chosen one beyond τ_overlap (intersection over the smaller mask) is skipped. The
  greedy is an approximation of the argmax of the score under the non-overlap constraint.
  Where the proposals allow no consistent output (fewer mutually non-overlapping proposals
  than tags, as on a faint, low-contrast image), a class that finds no free candidate takes its
  best candidate overlapping the chosen ones, or, every candidate taken, none.
- boxes: one candidate per box with the box's class, assigned by maximum-weight matching
  (Hungarian) so that no proposal serves two boxes. Instances of boxes that overlap may
  overlap inside the shared part of their boxes: the annotation itself says they do.

Loss-augmented inference adds to each margin δ_q(c), what choosing candidate q with class c
adds to Δ against a reference output: the class, box and mask terms of Δ against its
best-matching reference instance (3 when none overlaps it). This is the per-instance
decomposition of Δ, again an approximation of the exact loss-augmented argmax.
"""

from dataclasses import dataclass, replace

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from torch import Tensor
from torchvision.ops import box_iou

from models.annotations import Annotation, BoxAnnotation, TagAnnotation
from models.candidates import Candidates
from models.delta import mask_iou
from models.structures import InstanceSet

_FORBIDDEN = 1e9


@dataclass(frozen=True)
class InferenceConfig:
    """overlap_threshold: τ_overlap on intersection over the smaller mask (tags).
    box_iou_threshold: τ_box, the least IoU of an instance's tight box with its box.
    max_instances_per_tag: the most instances of one tagged class in an output (None: as many
    as have a positive margin)."""

    overlap_threshold: float = 0.2
    box_iou_threshold: float = 0.5
    max_instances_per_tag: int | None = 1

    def __post_init__(self) -> None:
        if self.max_instances_per_tag is not None and self.max_instances_per_tag < 1:
            raise ValueError(
                f"max_instances_per_tag must be at least 1 (or None), "
                f"got {self.max_instances_per_tag}"
            )


@dataclass(frozen=True)
class Selection:
    """An output as candidates: candidate_ids Int64Tensor[N], labels Int64Tensor[N] in 1..C."""

    candidate_ids: Tensor
    labels: Tensor

    def __len__(self) -> int:
        return int(self.labels.numel())


def candidate_margins(scores: Tensor, candidates: Candidates) -> Tensor:
    """FloatTensor[Q, C+1]: s[i, c] - s[i, bg] for the proposal i of each candidate."""
    rows = scores[candidates.proposal_ids]
    return rows - rows[:, :1]


def selection_score(margins: Tensor, selection: Selection) -> Tensor:
    """The structured score S(y) of a selection: the sum of its margins (0-dim, differentiable)."""
    return margins[selection.candidate_ids, selection.labels].sum()


@torch.no_grad()
def consistent_argmax(
    scores: Tensor,
    candidates: Candidates,
    annotation: Annotation,
    config: InferenceConfig,
    augmentation: Tensor | None = None,
) -> Selection:
    """argmax_y S(y) (+ Σ δ when `augmentation`, FloatTensor[Q, C+1], is given) over the
    outputs consistent with the annotation. scores: FloatTensor[P, C+1]."""
    margins = candidate_margins(scores.detach().float(), candidates)
    if augmentation is not None:
        margins = margins + augmentation
    if isinstance(annotation, TagAnnotation):
        return tag_argmax(
            margins, candidates, annotation, config.overlap_threshold, config.max_instances_per_tag
        )
    return box_argmax(margins, candidates, annotation)


@torch.no_grad()
def unclaimed_instances(
    scores: Tensor,
    candidates: Candidates,
    annotation: Annotation,
    config: InferenceConfig,
    selection: Selection,
) -> Selection:
    """The candidates that the consistent argmax without `max_instances_per_tag` selects and
    `selection` (an output under the limit) does not: likely further instances of a tagged
    class that the output leaves unlabelled. Empty given boxes, where every box has its
    instance, and without a limit. scores: FloatTensor[P, C+1]."""
    if not isinstance(annotation, TagAnnotation) or config.max_instances_per_tag is None:
        return _selection([], [])
    unlimited = consistent_argmax(
        scores, candidates, annotation, replace(config, max_instances_per_tag=None)
    )
    left_out = ~torch.isin(unlimited.candidate_ids, selection.candidate_ids)
    return Selection(unlimited.candidate_ids[left_out], unlimited.labels[left_out])


def tag_argmax(
    margins: Tensor,
    candidates: Candidates,
    tags: TagAnnotation,
    overlap_threshold: float,
    max_instances_per_tag: int | None,
) -> Selection:
    """Greedy consistent argmax for tags. margins: FloatTensor[Q, C+1].

    Raises ValueError when there is no candidate at all.
    """
    labels = np.asarray(tags.labels, dtype=np.int64)
    if labels.size == 0:
        return _selection([], [])
    if len(candidates) == 0:
        raise ValueError(f"no proposal is left for tagged class {int(labels[0])}")
    tag_margins = margins[:, labels].numpy()  # (Q, T)
    conflicts = (candidates.overlap > overlap_threshold).numpy()
    np.fill_diagonal(conflicts, True)
    blocked = np.zeros(len(candidates), dtype=bool)
    chosen, chosen_labels = [], []

    def take(q: int, label: int) -> None:
        chosen.append(q)
        chosen_labels.append(label)
        blocked[:] |= conflicts[q]

    order = np.argsort(-tag_margins.max(axis=0), kind="stable")
    for position, t in enumerate(order):
        remaining = len(order) - position - 1
        q = _tag_pick(tag_margins[:, t], blocked, conflicts, remaining, chosen)
        if q is not None:
            take(q, int(labels[t]))

    limit = len(candidates) if max_instances_per_tag is None else max_instances_per_tag
    counts = dict.fromkeys(labels.tolist(), 1)
    best = tag_margins.argmax(axis=1)
    best_margin = tag_margins[np.arange(len(best)), best]
    for q in np.argsort(-best_margin, kind="stable"):
        if best_margin[q] <= 0:
            break
        label = int(labels[best[q]])
        if not blocked[q] and counts[label] < limit:
            take(int(q), label)
            counts[label] += 1
    return _selection(chosen, chosen_labels)


def tags_respected(
    selection: Selection, candidates: Candidates, tags: TagAnnotation, overlap_threshold: float
) -> bool:
    """Whether a tag output is consistent: every tagged class has an instance and no two
    instances overlap beyond τ_overlap (`tag_argmax` gives way on both only where the
    proposals allow no consistent output)."""
    ids = selection.candidate_ids
    overlapping = candidates.overlap[ids][:, ids] > overlap_threshold
    overlapping.fill_diagonal_(False)
    labels = set(selection.labels.tolist())
    return labels == set(tags.labels) and not bool(overlapping.any())


def _tag_pick(
    margins: np.ndarray,
    blocked: np.ndarray,
    conflicts: np.ndarray,
    remaining: int,
    chosen: list[int],
) -> int | None:
    """The best candidate by `margins` (float[Q]) for one tagged class: free of overlap and
    leaving room for `remaining` more classes; failing that (no consistent output exists), the
    best free one, then the best one not chosen yet; None when every candidate is chosen."""
    order = np.argsort(-margins, kind="stable")
    for q in order:
        if not blocked[q] and _completable(blocked | conflicts[q], conflicts, remaining):
            return int(q)
    fallback = [q for q in order if not blocked[q]] or [q for q in order if q not in chosen]
    return int(fallback[0]) if fallback else None


def _completable(blocked: np.ndarray, conflicts: np.ndarray, count: int) -> bool:
    """Whether `count` more mutually non-overlapping candidates can still be found, by the
    minimum-degree greedy for independent sets (exact when the free candidates are disjoint)."""
    free = ~blocked
    for _ in range(count):
        if not free.any():
            return False
        degrees = np.where(free, (conflicts & free).sum(axis=1), np.iinfo(np.int64).max)
        free &= ~conflicts[int(degrees.argmin())]
    return True


def box_argmax(margins: Tensor, candidates: Candidates, boxes: BoxAnnotation) -> Selection:
    """Maximum-weight matching of boxes to proposals. margins: FloatTensor[Q, C+1]. The
    selection lists the boxes in order: its i-th candidate is box i's.

    Raises ValueError when no assignment gives every box a distinct proposal that fits it.
    """
    num_boxes = len(boxes)
    if num_boxes == 0:
        return _selection([], [])
    proposal_ids = candidates.proposal_ids
    num_proposals = int(proposal_ids.max()) + 1 if len(candidates) else 0
    candidate_of = np.full((num_boxes, num_proposals), -1, dtype=np.int64)
    candidate_of[candidates.box_ids.numpy(), proposal_ids.numpy()] = np.arange(len(candidates))
    box_labels = boxes.labels.numpy()
    weights = margins.numpy()[:, box_labels].T  # (B, Q): margin for each box's class
    cost = np.full(candidate_of.shape, _FORBIDDEN)
    allowed = candidate_of >= 0
    cost[allowed] = -np.take_along_axis(weights, np.maximum(candidate_of, 0), axis=1)[allowed]
    if num_proposals < num_boxes:
        raise ValueError(f"{num_boxes} boxes but only {num_proposals} proposals fit any box")
    rows, cols = linear_sum_assignment(cost)
    if not allowed[rows, cols].all():
        missing = int(rows[~allowed[rows, cols]][0])
        raise ValueError(f"no distinct proposal fits box {missing}")
    return _selection(candidate_of[rows, cols].tolist(), box_labels[rows].tolist())


def _selection(candidate_ids: list[int], labels: list[int]) -> Selection:
    return Selection(
        torch.tensor(candidate_ids, dtype=torch.int64), torch.tensor(labels, dtype=torch.int64)
    )


def reference_overlaps(
    candidates: Candidates, reference: Selection | InstanceSet
) -> tuple[Tensor, Tensor]:
    """Mask IoU and box IoU, FloatTensor[Q, N] each, of every candidate with each reference
    instance; read from the candidates' geometry when the reference is made of them."""
    if isinstance(reference, Selection):
        ids = reference.candidate_ids
        return candidates.iou[:, ids], candidates.box_iou[:, ids]
    ious = mask_iou(candidates.masks, reference.masks, candidates.areas)
    return ious, box_iou(candidates.boxes, reference.boxes)


def delta_augmentation(
    candidates: Candidates, reference: Selection | InstanceSet, num_classes: int
) -> Tensor:
    """FloatTensor[Q, C+1]: δ_q(c), the Δ terms of choosing candidate q with class c against
    its best-matching (highest mask IoU) reference instance; 3 when no instance overlaps it."""
    full_mismatch = torch.full((len(candidates), num_classes + 1), 3.0)
    if len(reference) == 0:
        return full_mismatch
    ious, box_ious = reference_overlaps(candidates, reference)
    best_iou, match = ious.max(dim=1)
    geometric = (1 - box_ious.gather(1, match[:, None])) + (1 - best_iou[:, None])  # (Q, 1)
    classes = torch.arange(num_classes + 1)
    class_term = (classes[None, :] != reference.labels[match][:, None]).float()  # (Q, C+1)
    return torch.where(best_iou[:, None] > 0, geometric + class_term, full_mismatch)


def most_frequent(selections: list[Selection], k: int, leading: int = 0) -> list[int]:
    """The indices of at most k distinct outputs among `selections` (draws of one
    distribution), the most frequent first (ties: the earlier drawn), each by its first draw.
    With `leading`, outputs rank first by their count among the first `leading` draws (those of
    a preferred distribution), then by their count among all. Two selections are the same
    output when they hold the same (candidate, class) pairs."""
    first: dict[tuple, int] = {}
    counts: dict[tuple, int] = {}
    leading_counts: dict[tuple, int] = {}
    for index, selection in enumerate(selections):
        pairs = zip(selection.candidate_ids.tolist(), selection.labels.tolist(), strict=True)
        key = tuple(sorted(pairs))
        first.setdefault(key, index)
        counts[key] = counts.get(key, 0) + 1
        leading_counts[key] = leading_counts.get(key, 0) + int(index < leading)
    ranked = sorted(first, key=lambda key: (-leading_counts[key], -counts[key], first[key]))
    return [first[key] for key in ranked[:k]]


def to_instances(selection: Selection, candidates: Candidates, scores: Tensor) -> InstanceSet:
    """The InstanceSet of a selection; an instance's score is its class probability."""
    ids = selection.candidate_ids
    proposal_ids = candidates.proposal_ids[ids]
    probabilities = scores.detach().float().softmax(dim=1)
    return InstanceSet(
        masks=candidates.masks[ids],
        labels=selection.labels,
        scores=probabilities[proposal_ids, selection.labels],
        proposal_ids=proposal_ids,
    )
