"""The warm start's labels and losses on hand-made images: for boxes a thin cross in a box,
the box's rectangle, the box's background corners and a proposal far from the box; for tags
two objects of one class, a larger copy of the first and a faint third square."""

import torch

from models.annotations import BoxAnnotation, TagAnnotation
from models.candidates import box_candidates, tag_candidates
from models.structures import mask_boxes
from models.warm_start import (
    IGNORE,
    box_ranking_loss,
    box_seed_labels,
    detection_scores,
    instance_seeds,
    multiple_instance_loss,
    tag_self_training_labels,
    whole_object,
)

SIZE = (32, 32)


def _proposals() -> torch.Tensor:
    """BoolTensor[5, 32, 32]: cross, cross with a few more pixels, rectangle, corners, far."""
    cross = torch.zeros(SIZE, dtype=torch.bool)
    cross[9:11, 2:18] = True
    cross[2:18, 9:11] = True
    thick = cross.clone()
    thick[8, 3:8] = True  # IoU 0.92 with the cross
    rectangle = torch.zeros(SIZE, dtype=torch.bool)
    rectangle[2:18, 2:18] = True
    corners = rectangle & ~thick
    far = torch.zeros(SIZE, dtype=torch.bool)
    far[24:30, 24:30] = True
    return torch.stack([cross, thick, rectangle, corners, far])


def _setting() -> tuple[torch.Tensor, BoxAnnotation, object, torch.Tensor]:
    proposals = _proposals()
    boxes = BoxAnnotation(torch.tensor([[2.0, 2.0, 18.0, 18.0]]), torch.tensor([3]))
    candidates = box_candidates(proposals, boxes, box_iou_threshold=0.5)
    # the seed prior likes the cross best (as agreement with GrabCut would)
    seed_prior = torch.tensor([0.9, 0.8, 0.3, 0.1, 0.0])[candidates.proposal_ids]
    return proposals, boxes, candidates, seed_prior


def test_box_seed_labels_cross_positive_rest_background() -> None:
    proposals, boxes, candidates, seed_prior = _setting()
    assert candidates.proposal_ids.tolist() == [0, 1, 2, 3]  # the far proposal fits no box
    labels = box_seed_labels(candidates, boxes, len(proposals), mask_boxes(proposals), seed_prior)
    # cross and its thicker copy overlap the seed; the rectangle and corners barely do
    assert labels.tolist() == [3, 3, 0, 0, 0]


def test_box_seed_labels_positive_wins_over_another_boxs_background() -> None:
    proposals, _, _, _ = _setting()
    boxes = BoxAnnotation(
        torch.tensor([[2.0, 2.0, 18.0, 18.0], [2.0, 2.0, 18.0, 18.0]]), torch.tensor([3, 5])
    )
    candidates = box_candidates(proposals, boxes, box_iou_threshold=0.5)
    # box 0 seeds on the cross, box 1 on the corners: each box's positives survive the other
    # box's background labels
    prior = torch.tensor([0.9, 0.8, 0.3, 0.1, 0.0, 0.0, 0.1, 0.3, 0.9])
    labels = box_seed_labels(candidates, boxes, len(proposals), mask_boxes(proposals), prior)
    # (the rectangle is mostly corners, IoU 0.75 with box 1's seed: too little for a positive,
    # and it is box 0's background)
    assert labels.tolist() == [3, 3, 0, 5, 0]


def test_box_ranking_loss_descends_towards_the_positives() -> None:
    proposals, boxes, candidates, seed_prior = _setting()
    labels = box_seed_labels(candidates, boxes, len(proposals), mask_boxes(proposals), seed_prior)
    scores = torch.zeros(len(proposals), 7, requires_grad=True)
    loss = box_ranking_loss(scores, candidates, labels, boxes)
    loss.backward()
    margin_gradient = scores.grad[:, 3] - scores.grad[:, 0]
    assert (margin_gradient[:2] < 0).all()  # descending raises the positives' margins
    assert (margin_gradient[2:4] > 0).all()  # and lowers the rest of the box
    assert margin_gradient[4] == 0  # a proposal of no box is not ranked
    stepped = box_ranking_loss(scores.detach() - scores.grad, candidates, labels, boxes)
    assert stepped < loss


def test_box_ranking_loss_without_positives_is_zero_and_attached() -> None:
    proposals, boxes, candidates, _ = _setting()
    labels = torch.full((len(proposals),), IGNORE)
    scores = torch.randn(len(proposals), 7, requires_grad=True)
    loss = box_ranking_loss(scores, candidates, labels, boxes)
    assert loss.item() == 0 and loss.requires_grad


def _two_objects() -> tuple[object, torch.Tensor]:
    """Candidates: square A, A with a margin (overlaps A), square B, square C (all else apart),
    and their detection scores for one class: A 0.5, larger A 0.3, B 0.2, C 0.05."""
    boxes = [(2, 2, 8, 8), (1, 1, 10, 10), (14, 14, 20, 20), (24, 2, 30, 8)]
    masks = torch.zeros((4, *SIZE), dtype=torch.bool)
    for mask, (x0, y0, x1, y1) in zip(masks, boxes, strict=True):
        mask[y0:y1, x0:x1] = True
    return tag_candidates(masks), torch.tensor([0.5, 0.3, 0.2, 0.05])


def test_instance_seeds_takes_strong_disjoint_candidates() -> None:
    candidates, detection = _two_objects()
    assert instance_seeds(detection, candidates, ratio=1.0) == [0]
    assert instance_seeds(detection, candidates, ratio=0.3) == [0, 2], "the larger A overlaps A"
    assert instance_seeds(detection, candidates, ratio=0.05) == [0, 2, 3]


def test_tag_self_training_labels_second_seed_is_positive_not_background() -> None:
    candidates, detection = _two_objects()
    scores = torch.stack([torch.full((4,), -20.0), detection.log()], dim=1)  # (P, bg + 1 class)
    tags, prior = TagAnnotation((1,)), torch.zeros(4)
    one = tag_self_training_labels(scores, candidates, tags, prior, 0.0, seed_ratio=1.0)
    two = tag_self_training_labels(scores, candidates, tags, prior, 0.0, seed_ratio=0.3)
    assert one.tolist() == [1, IGNORE, 0, 0], "B overlaps no seed: background"
    assert two.tolist() == [1, IGNORE, 1, 0]


def test_two_tags_never_seed_the_same_object() -> None:
    candidates, detection = _two_objects()
    # class 1 is surest of A; class 2 would pick A too, then B: it gets B
    class_2 = torch.tensor([0.4, 0.1, 0.3, 0.05])
    scores = torch.stack([torch.full((4,), -20.0), detection.log(), class_2.log()], dim=1)
    labels = tag_self_training_labels(
        scores, candidates, TagAnnotation((1, 2)), torch.zeros(4), 0.0, seed_ratio=1.0
    )
    assert labels.tolist() == [1, IGNORE, 2, 0]


def _object_and_its_rim() -> tuple[object, torch.Tensor]:
    """Candidates: an object, an arc of its rim, the object merged with a neighbour, and a far
    object; and their objectness prior (the far one highest, the arc lowest)."""
    masks = torch.zeros((4, *SIZE), dtype=torch.bool)
    masks[0, 4:14, 4:14] = True
    masks[1, 4:14, 4:6] = True
    masks[2, 4:14, 4:20] = True
    masks[3, 22:30, 22:30] = True
    return tag_candidates(masks), torch.tensor([1.0, 0.2, 0.5, 2.0])


def test_a_seed_grows_to_the_whole_object_that_contains_it() -> None:
    candidates, prior = _object_and_its_rim()
    none = torch.zeros(4, dtype=torch.bool)
    assert whole_object(1, candidates, prior, none) == 0, "the object, not the merged region"
    assert whole_object(0, candidates, prior, none) == 0, "the merged region has less prior"
    assert whole_object(3, candidates, prior, none) == 3
    assert whole_object(1, candidates, torch.zeros(4), none) == 1, "no more prior: no growth"
    assert whole_object(1, candidates, prior, torch.tensor([True, False, False, False])) == 2
    assert whole_object(1, candidates, prior, torch.tensor([True, False, True, False])) == 1


def test_the_self_training_labels_of_a_rim_seed_are_the_whole_objects() -> None:
    candidates, prior = _object_and_its_rim()
    detection = torch.tensor([0.2, 0.6, 0.1, 0.1])  # WSDDN's top proposal: the arc
    scores = torch.stack([torch.full((4,), -20.0), detection.log()], dim=1)
    labels = tag_self_training_labels(
        scores, candidates, TagAnnotation((1,)), prior, 0.0, seed_ratio=1.0
    )
    assert labels.tolist() == [1, IGNORE, 1, 0], "the merged region repeats the object: IoU 0.62"


def test_instance_seeds_pass_over_excluded_candidates() -> None:
    candidates, detection = _two_objects()
    excluded = torch.tensor([True, True, False, False])
    assert instance_seeds(detection, candidates, ratio=1.0, excluded=excluded) == [2]
    assert instance_seeds(detection, candidates, 1.0, excluded=torch.ones(4, dtype=bool)) == []


def test_multiple_instance_loss_descends_towards_the_tags() -> None:
    # Five proposals, four classes, tags {1, 3}: a step down the loss raises the image-level
    # scores of classes 1 and 3 and lowers those of 2 and 4.
    scores = torch.randn((5, 5), generator=torch.Generator().manual_seed(0), requires_grad=True)
    tags, prior = TagAnnotation((1, 3)), torch.linspace(0, 1, 5)

    def image_scores(s: torch.Tensor) -> torch.Tensor:
        return detection_scores(s, prior, 1.0).sum(dim=0)

    loss = multiple_instance_loss(scores, tags, prior, 1.0)
    loss.backward()
    stepped = scores.detach() - 0.1 * scores.grad
    change = image_scores(stepped) - image_scores(scores.detach())
    assert (change[[0, 2]] > 0).all() and (change[[1, 3]] < 0).all(), change
    assert multiple_instance_loss(stepped, tags, prior, 1.0) < loss
