"""Annotation-consistent argmax and loss-augmented argmax (docs/design.md, Annotation-consistent
inference): every output is consistent with its annotation, on random proposals, scores, tags and
boxes."""

import itertools

import pytest
import torch
from hypothesis import Phase, assume, event, given, settings
from hypothesis import strategies as st

from models.annotations import BoxAnnotation, TagAnnotation
from models.candidates import (
    box_candidates,
    box_rectangles,
    tag_candidates,
    with_box_rectangles,
)
from models.inference import (
    InferenceConfig,
    Selection,
    candidate_margins,
    consistent_argmax,
    delta_augmentation,
    most_frequent,
    selection_score,
    tags_respected,
    to_instances,
    unclaimed_instances,
)
from models.structures import InstanceSet
from tests.models.strategies import (
    NUM_CLASSES,
    assert_box_consistent,
    assert_tag_consistent,
    assert_tag_output,
    box_annotations,
    box_output_exists,
    disjoint_tiles,
    image_sizes,
    instance_sets,
    masks_near_boxes,
    proposal_masks,
    score_tensors,
    tag_output_exists,
    tag_sets,
    usually,
)

# Without shrinking: a failing example is shrunk for minutes on two cores, and each property
# below that found a bug has a minimal example of its own next to it.
SETTINGS = settings(
    max_examples=60,
    deadline=None,
    report_multiple_bugs=False,
    phases=(Phase.explicit, Phase.reuse, Phase.generate),
)
configs = st.builds(
    InferenceConfig,
    overlap_threshold=st.sampled_from([0.0, 0.2, 0.5]),
    box_iou_threshold=st.sampled_from([0.3, 0.5, 0.7]),
    max_instances_per_tag=st.sampled_from([None, 1, 2]),
)


@st.composite
def references(draw: st.DrawFn, num_candidates: int, image_size: tuple[int, int]):
    """A reference output for Δ: a Selection of the candidates or an InstanceSet of masks."""
    if num_candidates and draw(st.booleans()):
        ids = draw(st.lists(st.integers(0, num_candidates - 1), unique=True, max_size=5))
        labels = draw(st.lists(st.integers(1, NUM_CLASSES), min_size=len(ids), max_size=len(ids)))
        return Selection(
            torch.tensor(ids, dtype=torch.int64), torch.tensor(labels, dtype=torch.int64)
        )
    return draw(instance_sets(image_size))


def augmentations(data, candidates, image_size):
    """None (plain argmax) or δ against a random reference (loss-augmented argmax)."""
    if not data.draw(st.booleans(), label="loss-augmented"):
        return None
    reference = data.draw(references(len(candidates), image_size), label="reference")
    augmentation = delta_augmentation(candidates, reference, NUM_CLASSES)
    assert augmentation.shape == (len(candidates), NUM_CLASSES + 1)
    assert ((augmentation >= 0) & (augmentation <= 3 + 1e-6)).all()
    return augmentation


@settings(SETTINGS, max_examples=150)
@given(st.data())
def test_tag_outputs_are_consistent(data):
    size = data.draw(image_sizes)
    tags = data.draw(tag_sets())
    proposals = data.draw(proposal_masks(size, min_size=0, max_size=5))
    if data.draw(usually, label="with tiles"):
        tiles = data.draw(disjoint_tiles(size, len(tags.labels)))
        proposals = torch.cat([tiles, proposals])
    assume(len(proposals) > 0)
    scores = data.draw(score_tensors(len(proposals)))
    config = data.draw(configs)
    candidates = tag_candidates(proposals)
    augmentation = augmentations(data, candidates, size)
    selection = consistent_argmax(scores, candidates, tags, config, augmentation)
    output = to_instances(selection, candidates, scores)
    event(assert_tag_output(output, tags, proposals, config.overlap_threshold))
    respected = tags_respected(selection, candidates, tags, config.overlap_threshold)
    count, threshold = len(tags.labels), config.overlap_threshold
    if tag_output_exists(proposals, count, threshold):
        assert respected
    if respected:  # overlaps of exactly τ are consistent, which tag_output_exists leaves out
        assert tag_output_exists(proposals, count, threshold + 1e-5)
    assert output.proposal_ids.unique().numel() == len(output)


def test_tag_argmax_succeeds_when_a_large_proposal_covers_the_disjoint_ones():
    # One image-sized proposal with the best score for class 1 contains two disjoint halves; the
    # halves alone are a consistent output for tags {1, 2}.
    proposals = torch.zeros((3, 12, 12), dtype=torch.bool)
    proposals[0] = True
    proposals[1, :, :6] = True
    proposals[2, :, 6:] = True
    scores = torch.tensor([[0.0, 5.0, 5.0], [0.0, 1.0, 1.0], [0.0, 1.0, 1.0]])
    tags = TagAnnotation((1, 2))
    candidates = tag_candidates(proposals)
    selection = consistent_argmax(scores, candidates, tags, InferenceConfig())
    assert_tag_consistent(to_instances(selection, candidates, scores), tags, 0.2)


def test_tag_argmax_without_a_consistent_output_lets_instances_overlap():
    # A faint image: the whole image and one region inside it, two tags. Each tag still gets
    # an instance; with one proposal only the better-scoring tag does.
    proposals = torch.zeros((2, 12, 12), dtype=torch.bool)
    proposals[0] = True
    proposals[1, 2:6, 2:6] = True
    scores = torch.tensor([[0.0, 2.0, 1.0], [0.0, 0.5, 3.0]])
    tags = TagAnnotation((1, 2))
    selection = consistent_argmax(scores, tag_candidates(proposals), tags, InferenceConfig())
    pairs = zip(selection.candidate_ids.tolist(), selection.labels.tolist(), strict=True)
    assert sorted(pairs) == [(0, 1), (1, 2)]
    alone = consistent_argmax(scores[1:], tag_candidates(proposals[1:]), tags, InferenceConfig())
    assert alone.labels.tolist() == [2]


def test_tag_argmax_without_any_proposal_names_the_problem():
    candidates = tag_candidates(torch.zeros((1, 8, 8), dtype=torch.bool))
    with pytest.raises(ValueError, match="tagged class 1"):
        consistent_argmax(torch.zeros((1, 3)), candidates, TagAnnotation((1,)), InferenceConfig())


def test_tag_argmax_adds_only_positive_margins():
    proposals = torch.zeros((3, 12, 12), dtype=torch.bool)
    proposals[0, :4, :4] = True
    proposals[1, 6:, 6:] = True
    proposals[2, :4, 6:] = True
    # Proposal 0 is the best for the tag; 1 has a positive margin, 2 a negative one.
    scores = torch.tensor([[0.0, 3.0], [0.0, 1.0], [0.0, -1.0]])
    candidates = tag_candidates(proposals)
    greedy = InferenceConfig(max_instances_per_tag=None)
    selection = consistent_argmax(scores, candidates, TagAnnotation((1,)), greedy)
    assert sorted(candidates.proposal_ids[selection.candidate_ids].tolist()) == [0, 1]


def test_tag_argmax_keeps_at_most_the_limit_per_tagged_class():
    proposals = torch.zeros((4, 12, 12), dtype=torch.bool)
    proposals[0, :4, :4] = True
    proposals[1, 6:, 6:] = True
    proposals[2, :4, 6:] = True
    proposals[3, 6:, :4] = True
    # Class 1 is best on 0 and 1, class 2 on 2 and 3; every margin is positive.
    scores = torch.tensor([[0.0, 3.0, 0.0], [0.0, 2.0, 0.0], [0.0, 0.0, 3.0], [0.0, 0.0, 2.0]])
    candidates = tag_candidates(proposals)
    tags = TagAnnotation((1, 2))
    for limit, expected in ((1, [0, 2]), (2, [0, 1, 2, 3])):
        config = InferenceConfig(max_instances_per_tag=limit)
        selection = consistent_argmax(scores, candidates, tags, config)
        assert sorted(candidates.proposal_ids[selection.candidate_ids].tolist()) == expected


def test_unclaimed_instances_are_what_the_limit_left_out():
    proposals = torch.zeros((4, 12, 12), dtype=torch.bool)
    proposals[0, :4, :4] = True
    proposals[1, 6:, 6:] = True
    proposals[2, :4, 6:] = True
    proposals[3, :5, :5] = True  # overlaps proposal 0
    # Class 1 is best on 0, then 3 (overlapping 0) and 1; proposal 2 has a negative margin.
    scores = torch.tensor([[0.0, 3.0], [0.0, 1.0], [0.0, -1.0], [0.0, 2.0]])
    candidates = tag_candidates(proposals)
    tags = TagAnnotation((1,))

    def unclaimed(config):
        selection = consistent_argmax(scores, candidates, tags, config)
        left_out = unclaimed_instances(scores, candidates, tags, config, selection)
        assert not set(left_out.candidate_ids.tolist()) & set(selection.candidate_ids.tolist())
        return candidates.proposal_ids[left_out.candidate_ids].tolist(), left_out.labels.tolist()

    assert unclaimed(InferenceConfig(max_instances_per_tag=1)) == ([1], [1])
    assert unclaimed(InferenceConfig(max_instances_per_tag=2)) == ([], [])
    assert unclaimed(InferenceConfig(max_instances_per_tag=None)) == ([], [])
    boxes = BoxAnnotation(torch.tensor([[0.0, 0.0, 4.0, 4.0]]), torch.tensor([1]))
    box_output = Selection(torch.tensor([0]), torch.tensor([1]))
    assert len(unclaimed_instances(scores, candidates, boxes, InferenceConfig(), box_output)) == 0


def test_empty_tags_give_an_empty_output():
    proposals = torch.ones((2, 8, 8), dtype=torch.bool)
    candidates = tag_candidates(proposals)
    selection = consistent_argmax(
        torch.ones((2, 3)), candidates, TagAnnotation(()), InferenceConfig()
    )
    assert len(selection) == 0


@SETTINGS
@given(st.data())
def test_box_outputs_are_consistent_or_infeasible(data):
    size = data.draw(image_sizes)
    boxes = data.draw(box_annotations(size))
    proposals = data.draw(proposal_masks(size, min_size=1, max_size=6))
    proposals = torch.cat([proposals, data.draw(masks_near_boxes(boxes, size))])
    scores = data.draw(score_tensors(len(proposals)))
    config = data.draw(configs)
    candidates = box_candidates(proposals, boxes, config.box_iou_threshold)
    augmentation = augmentations(data, candidates, size)
    try:
        selection = consistent_argmax(scores, candidates, boxes, config, augmentation)
    except ValueError:
        assert not box_output_exists(proposals, boxes, config.box_iou_threshold), (
            "box inference failed although a consistent output exists"
        )
        event("no consistent output (none exists)")
        return
    event("consistent output")
    assert_box_consistent(
        to_instances(selection, candidates, scores), boxes, config.box_iou_threshold
    )


@SETTINGS
@given(st.data())
def test_box_outputs_with_box_rectangles_always_exist_and_are_consistent(data):
    size = data.draw(image_sizes)
    boxes = data.draw(box_annotations(size))
    proposals = data.draw(proposal_masks(size, min_size=0, max_size=6))
    proposals = torch.cat([proposals, data.draw(masks_near_boxes(boxes, size))])
    # Some box rectangles may already be proposals (the rectangle proposal of an earlier call).
    rectangles = box_rectangles(boxes, size)
    keep = data.draw(st.lists(st.booleans(), min_size=len(boxes), max_size=len(boxes)))
    proposals = torch.cat([proposals, rectangles[torch.tensor(keep, dtype=torch.bool)]])
    proposals = with_box_rectangles(proposals, boxes)
    scores = data.draw(score_tensors(len(proposals)))
    config = data.draw(configs)
    candidates = box_candidates(proposals, boxes, config.box_iou_threshold)
    augmentation = augmentations(data, candidates, size)
    selection = consistent_argmax(scores, candidates, boxes, config, augmentation)
    assert_box_consistent(
        to_instances(selection, candidates, scores), boxes, config.box_iou_threshold
    )


def test_identical_boxes_whose_rectangle_is_a_proposal_get_distinct_proposals():
    proposals = torch.zeros((1, 12, 12), dtype=torch.bool)
    proposals[0, 2:8, 2:8] = True
    boxes = BoxAnnotation(torch.tensor([[2.0, 2.0, 8.0, 8.0]] * 2), torch.tensor([1, 2]))
    proposals = with_box_rectangles(proposals, boxes)
    candidates = box_candidates(proposals, boxes, 0.5)
    scores = torch.zeros((len(proposals), 3))
    selection = consistent_argmax(scores, candidates, boxes, InferenceConfig())
    assert_box_consistent(to_instances(selection, candidates, scores), boxes, 0.5)


@SETTINGS
@given(st.data())
def test_box_argmax_is_the_best_assignment(data):
    size = data.draw(image_sizes)
    boxes = data.draw(box_annotations(size, max_size=3))
    proposals = with_box_rectangles(data.draw(proposal_masks(size, max_size=5)), boxes)
    scores = data.draw(score_tensors(len(proposals)))
    candidates = box_candidates(proposals, boxes, 0.5)
    selection = consistent_argmax(scores, candidates, boxes, InferenceConfig())
    margins = candidate_margins(scores, candidates)
    per_box = [(candidates.box_ids == b).nonzero().squeeze(1).tolist() for b in range(len(boxes))]
    best = max(
        sum(float(margins[q, c]) for q, c in zip(choice, boxes.labels.tolist(), strict=True))
        for choice in itertools.product(*per_box)
        if len({int(candidates.proposal_ids[q]) for q in choice}) == len(choice)
    )
    assert float(selection_score(margins, selection)) == pytest.approx(best, abs=1e-4)


def test_loss_augmentation_of_a_selection_matches_its_instance_set():
    proposals = torch.zeros((4, 16, 16), dtype=torch.bool)
    proposals[0, 2:10, 2:10] = True
    proposals[1, 4:12, 4:14] = True
    proposals[2, 12:16, 0:5] = True
    proposals[3, 0:3, 12:16] = True
    candidates = tag_candidates(proposals)
    selection = Selection(torch.tensor([0, 2]), torch.tensor([2, 1]))
    instances = to_instances(selection, candidates, torch.zeros((4, 3)))
    from_selection = delta_augmentation(candidates, selection, 2)
    from_instances = delta_augmentation(candidates, instances, 2)
    assert torch.allclose(from_selection, from_instances)
    # Choosing the reference's own instance with its own class adds nothing to Δ; proposal 3
    # overlaps no reference instance and adds a full mismatch.
    assert from_selection[0, 2] == 0 and from_selection[2, 1] == 0
    assert from_selection[0, 1] == 1
    assert (from_selection[3] == 3).all()


def test_loss_augmentation_against_an_empty_reference_is_a_full_mismatch():
    candidates = tag_candidates(torch.ones((2, 8, 8), dtype=torch.bool))
    augmentation = delta_augmentation(candidates, InstanceSet.empty((8, 8)), 3)
    assert augmentation.shape == (2, 4) and (augmentation == 3).all()


def test_most_frequent_ranks_distinct_outputs_by_count_then_draw_order():
    def selection(*pairs):
        ids, labels = zip(*pairs, strict=True) if pairs else ((), ())
        return Selection(torch.tensor(ids, dtype=torch.int64), torch.tensor(labels))

    draws = [
        selection((3, 1)),
        selection((4, 2), (0, 1)),
        selection((0, 1), (4, 2)),  # the second output, its pairs in another order
        selection((3, 2)),  # another class on the same candidate: another output
        selection((4, 2), (0, 1)),
        selection((3, 1)),
    ]
    assert most_frequent(draws, 10) == [1, 0, 3]
    assert most_frequent(draws, 2) == [1, 0]
    assert most_frequent([selection()] * 3, 2) == [0]
    # the first draws lead: their outputs first, by their count there, then the others
    assert most_frequent(draws, 10, leading=1) == [0, 1, 3]
    assert most_frequent(draws, 10, leading=4) == [1, 0, 3]
    assert most_frequent(draws[::-1], 10, leading=1) == [0, 1, 2]


def test_an_overlap_of_exactly_tau_respects_the_tags():
    proposals = torch.zeros((2, 8, 8), dtype=torch.bool)
    proposals[0, 0, 0:2] = True
    proposals[1, 0, 1:5] = True  # one of the smaller mask's two pixels: overlap 0.5
    candidates = tag_candidates(proposals)
    tags = TagAnnotation((1, 2))
    scores = torch.zeros((2, 3))
    scores[0, 1] = scores[1, 2] = 3.0
    selection = consistent_argmax(scores, candidates, tags, InferenceConfig())
    assert sorted(selection.candidate_ids.tolist()) == [0, 1]
    assert tags_respected(selection, candidates, tags, 0.5)
    assert not tags_respected(selection, candidates, tags, 0.49)
