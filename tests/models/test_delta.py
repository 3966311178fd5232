"""Δ, the task loss between two instance segmentations (docs/design.md, Task loss), and mask IoU."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from models.delta import delta, delta_matrix, delta_terms, mask_iou
from models.structures import InstanceSet, mask_areas
from tests.models.strategies import (
    box_area_iou,
    image_sizes,
    instance_sets,
    proposal_masks,
    tight_box,
)

SETTINGS = settings(max_examples=50, deadline=None)


def reference_mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    intersection = float(np.minimum(a, b).sum())
    union = float(a.sum() + b.sum()) - intersection
    return intersection / union if union > 0 else 0.0


def reference_direction(y1: InstanceSet, y2: InstanceSet) -> list[float]:
    """Mean class, box and mask costs of y1's instances against their best matches in y2."""
    if len(y1) == 0:
        return [1.0, 1.0, 1.0]
    masks1, masks2 = y1.masks.numpy(), y2.masks.numpy()
    labels1, labels2 = y1.labels.tolist(), y2.labels.tolist()
    totals = [0.0, 0.0, 0.0]
    for u in range(len(y1)):
        best, best_iou = None, 0.0
        for v in range(len(y2)):
            iou = reference_mask_iou(masks1[u], masks2[v])
            # Ties (identical masks) go to an instance of the same class.
            tie_won = best is not None and iou == best_iou and labels2[v] == labels1[u]
            if iou > best_iou or (tie_won and labels2[best] != labels1[u]):
                best, best_iou = v, iou
        if best is None:
            costs = [1.0, 1.0, 1.0]
        else:
            box_iou = box_area_iou(tight_box(masks1[u]), tight_box(masks2[best]))
            costs = [float(labels1[u] != labels2[best]), 1 - box_iou, 1 - best_iou]
        totals = [t + c for t, c in zip(totals, costs, strict=True)]
    return [t / len(y1) for t in totals]


def reference_delta(y1: InstanceSet, y2: InstanceSet) -> list[float]:
    """[Δ_cls, Δ_box, Δ_mask] by plain loops over instances."""
    if len(y1) == 0 and len(y2) == 0:
        return [0.0, 0.0, 0.0]
    forward, backward = reference_direction(y1, y2), reference_direction(y2, y1)
    return [(f + b) / 2 for f, b in zip(forward, backward, strict=True)]


@st.composite
def output_pairs(draw: st.DrawFn, min_size: int = 0) -> tuple[InstanceSet, InstanceSet]:
    size = draw(image_sizes)
    return draw(instance_sets(size, min_size=min_size)), draw(instance_sets(size, min_size))


def distinct_masks(y: InstanceSet) -> bool:
    flat = y.masks.flatten(1)
    return all(not torch.equal(flat[i], flat[j]) for i in range(len(y)) for j in range(i))


@SETTINGS
@given(output_pairs())
def test_delta_matches_a_per_instance_loop(pair):
    y1, y2 = pair
    terms = delta_terms(y1, y2)
    got = [float(terms[name]) for name in ("cls", "box", "mask")]
    assert got == pytest.approx(reference_delta(y1, y2), abs=1e-5)
    assert float(delta(y1, y2)) == pytest.approx(sum(got), abs=1e-5)


@SETTINGS
@given(output_pairs())
def test_delta_is_symmetric_and_bounded(pair):
    y1, y2 = pair
    forward, backward = float(delta(y1, y2)), float(delta(y2, y1))
    assert forward == pytest.approx(backward, abs=1e-6)
    assert -1e-6 <= forward <= 3 + 1e-6
    for value in delta_terms(y1, y2).values():
        assert -1e-6 <= float(value) <= 1 + 1e-6


@SETTINGS
@given(st.data())
def test_delta_is_zero_on_identical_outputs(data):
    y = data.draw(instance_sets(data.draw(image_sizes), min_size=1).filter(distinct_masks))
    copy = InstanceSet.from_masks(y.masks.clone(), y.labels.clone())
    assert float(delta(y, copy)) == pytest.approx(0.0, abs=1e-6)


def test_delta_is_zero_on_identical_outputs_with_a_repeated_mask():
    # Two boxes of different classes over the same object legitimately give two instances with
    # one mask; each instance must match itself, not the first instance with the same mask.
    masks = torch.zeros((2, 12, 12), dtype=torch.bool)
    masks[:, 2:8, 2:8] = True
    y = InstanceSet.from_masks(masks, torch.tensor([1, 2]))
    assert float(delta(y, y)) == pytest.approx(0.0, abs=1e-6)


@SETTINGS
@given(st.data())
def test_delta_is_three_on_pairwise_disjoint_masks(data):
    size = data.draw(image_sizes)
    masks = data.draw(proposal_masks(size, min_size=2, max_size=6))
    flat = masks.flatten(1).float()
    disjoint_to_first = [q for q in range(1, len(masks)) if float(flat[q] @ flat[0]) == 0]
    take = data.draw(st.lists(st.sampled_from(disjoint_to_first or [0]), max_size=3))
    take = [q for q in dict.fromkeys(take) if q != 0]
    y1 = InstanceSet.from_masks(masks[:1], torch.tensor([1]))
    y2 = InstanceSet.from_masks(masks[take], torch.ones(len(take), dtype=torch.int64))
    assert float(delta(y1, y2)) == pytest.approx(3.0)


def test_delta_of_empty_outputs():
    empty = InstanceSet.empty((16, 16))
    masks = torch.zeros((1, 16, 16), dtype=torch.bool)
    masks[0, 3:9, 4:12] = True
    one = InstanceSet.from_masks(masks, torch.tensor([2]))
    assert float(delta(empty, empty)) == 0.0
    assert float(delta(empty, one)) == pytest.approx(3.0)
    assert float(delta(one, empty)) == pytest.approx(3.0)


def test_delta_counts_class_box_and_mask_disagreement_separately():
    masks1 = torch.zeros((1, 10, 10), dtype=torch.bool)
    masks1[0, 0:4, 0:4] = True
    masks2 = torch.zeros((1, 10, 10), dtype=torch.bool)
    masks2[0, 0:4, 0:2] = True  # half of the first mask, half of its box
    terms = delta_terms(
        InstanceSet.from_masks(masks1, torch.tensor([1])),
        InstanceSet.from_masks(masks2, torch.tensor([2])),
    )
    assert float(terms["cls"]) == 1.0
    assert float(terms["box"]) == pytest.approx(0.5)
    assert float(terms["mask"]) == pytest.approx(0.5)


@SETTINGS
@given(st.data())
def test_mask_iou_matches_a_per_pair_loop(data):
    size = data.draw(image_sizes)
    masks1 = data.draw(proposal_masks(size, min_size=0, max_size=5))
    masks2 = data.draw(proposal_masks(size, min_size=0, max_size=5))
    got = mask_iou(masks1, masks2)
    assert got.shape == (len(masks1), len(masks2))
    # with the areas known, only the pixels of masks2 are read
    assert torch.equal(mask_iou(masks1, masks2, mask_areas(masks1)), got)
    a, b = masks1.numpy(), masks2.numpy()
    for i in range(len(a)):
        for j in range(len(b)):
            assert float(got[i, j]) == pytest.approx(reference_mask_iou(a[i], b[j]), abs=1e-6)
        assert float(mask_areas(masks1)[i]) == a[i].sum()


@SETTINGS
@given(st.data())
def test_mask_iou_of_fractional_masks_matches_a_per_pair_loop(data):
    # Soft masks (coverage in [0, 1]): intersection a.b, union sum(a) + sum(b) - a.b.
    size = data.draw(image_sizes)
    masks = data.draw(proposal_masks(size, min_size=1, max_size=5))
    weights = data.draw(st.lists(st.floats(0.1, 1.0), min_size=len(masks), max_size=len(masks)))
    soft = masks.float() * torch.tensor(weights)[:, None, None]
    got = mask_iou(soft, masks)
    a, b = soft.numpy(), masks.float().numpy()
    for i in range(len(a)):
        for j in range(len(b)):
            intersection = float((a[i] * b[j]).sum())
            union = float(a[i].sum() + b[j].sum()) - intersection
            assert float(got[i, j]) == pytest.approx(intersection / union, rel=1e-5)


def test_mask_iou_of_two_empty_masks_is_zero():
    empty = torch.zeros((1, 8, 8), dtype=torch.bool)
    assert mask_iou(empty, empty).tolist() == [[0.0]]


@SETTINGS
@given(image_sizes.flatmap(lambda size: st.lists(instance_sets(size), min_size=1, max_size=4)))
def test_delta_matrix_matches_pairwise_delta(outputs):
    matrix = delta_matrix(outputs)
    for i, a in enumerate(outputs):
        assert matrix[i, i].item() == 0
        for j, b in enumerate(outputs):
            if i != j:
                assert matrix[i, j].item() == pytest.approx(float(delta(a, b)), abs=1e-5)
