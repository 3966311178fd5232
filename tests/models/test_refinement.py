"""Point refinement: every candidate holds each positive point and no negative one (and lies in
the box); with a positive point a candidate always exists; the best k are distinct and ranked."""

import functools

import numpy as np
import pytest
import torch
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from models.conditional import ConditionalConfig, ConditionalNet
from models.refinement import (
    PointPrompt,
    box_window,
    candidate_masks,
    distinct_best,
    is_consistent,
    point_pixels,
    refine,
    repair,
)
from tests.models.strategies import NUM_CLASSES, image_sizes, proposal_masks, single_masks

SETTINGS = settings(
    max_examples=60,
    deadline=None,
    report_multiple_bugs=False,
    phases=(Phase.explicit, Phase.reuse, Phase.generate),
)
CONFIG = ConditionalConfig(trunk_widths=(8, 16), descriptor_size=32)


@functools.cache
def untrained_net() -> ConditionalNet:
    torch.manual_seed(0)
    return ConditionalNet(NUM_CLASSES, CONFIG).eval()


@st.composite
def prompts(
    draw: st.DrawFn,
    image_size: tuple[int, int],
    min_positive: int = 0,
    with_box: bool | None = None,
) -> PointPrompt:
    """Valid prompts: points on distinct pixels (fractional coordinates), positives inside the
    box when there is one."""
    height, width = image_size
    box = None
    if with_box if with_box is not None else draw(st.booleans()):
        x0, x1 = sorted(draw(st.lists(st.integers(0, width), min_size=2, max_size=2, unique=True)))
        y0, y1 = sorted(
            draw(st.lists(st.integers(0, height), min_size=2, max_size=2, unique=True))
        )
        box = [float(x0), float(y0), float(x1), float(y1)]
    pixels = st.tuples(st.integers(0, height - 1), st.integers(0, width - 1))
    chosen = draw(st.lists(pixels, min_size=min_positive, max_size=8, unique=True))
    split = draw(st.integers(min(min_positive, len(chosen)), len(chosen)))
    positive_pixels, negative_pixels = chosen[:split], chosen[split:]
    if box is not None:
        positive_pixels = [
            (r, c) for r, c in positive_pixels if box[1] <= r < box[3] and box[0] <= c < box[2]
        ]
        if len(positive_pixels) < min_positive:
            row = draw(st.integers(int(box[1]), int(box[3]) - 1))
            column = draw(st.integers(int(box[0]), int(box[2]) - 1))
            negative_pixels = [p for p in negative_pixels if p != (row, column)]
            positive_pixels = [(row, column)]
    offset = st.floats(0, 0.99)
    positive = [[c + draw(offset), r + draw(offset)] for r, c in positive_pixels]
    negative = [[c + draw(offset), r + draw(offset)] for r, c in negative_pixels]
    if not positive and box is None:
        box = [0.0, 0.0, float(width), float(height)]
    return PointPrompt.from_lists(positive, negative, box)


def assert_consistent(masks: torch.Tensor, prompt: PointPrompt) -> None:
    image_size = tuple(masks.shape[-2:])
    positive = point_pixels(prompt.positive, image_size)
    negative = point_pixels(prompt.negative, image_size)
    for q, mask in enumerate(masks):
        assert mask.any(), f"candidate {q} is empty"
        assert all(mask[r, c] for r, c in positive.tolist()), f"candidate {q} misses a positive"
        assert not any(mask[r, c] for r, c in negative.tolist()), f"candidate {q} holds a negative"
        if prompt.box is not None:
            assert not (mask & ~box_window(prompt.box, image_size)).any(), f"{q} leaves the box"


@given(data=st.data(), image_size=image_sizes)
@SETTINGS
def test_every_candidate_is_consistent_and_one_exists_given_a_positive_point(
    data: st.DataObject, image_size: tuple[int, int]
) -> None:
    proposals = data.draw(proposal_masks(image_size, min_size=0))
    prompt = data.draw(prompts(image_size, min_positive=1))
    current = data.draw(st.none() | single_masks(image_size))
    prompt.validate(image_size)
    masks, sources = candidate_masks(proposals, prompt, current)
    assert len(masks) >= 1 and sources.shape == (len(masks),)
    assert_consistent(masks, prompt)
    assert len({m.numpy().tobytes() for m in masks}) == len(masks), "duplicate candidates"
    for mask, source in zip(masks, sources.tolist(), strict=True):
        if source >= 0 and prompt.box is None:
            assert torch.equal(mask, proposals[source])


@given(data=st.data(), image_size=image_sizes)
@SETTINGS
def test_candidates_without_positive_points_are_consistent_or_refused(
    data: st.DataObject, image_size: tuple[int, int]
) -> None:
    proposals = data.draw(proposal_masks(image_size, min_size=0))
    prompt = data.draw(prompts(image_size, with_box=True))
    prompt = PointPrompt(torch.zeros((0, 2)), prompt.negative, prompt.box)
    prompt.validate(image_size)
    try:
        masks, _ = candidate_masks(proposals, prompt)
    except ValueError as error:
        assert "no mask consistent" in str(error)
        return
    assert_consistent(masks, prompt)


@given(data=st.data(), image_size=image_sizes)
@SETTINGS
def test_repair_makes_any_mask_consistent(data: st.DataObject, image_size: tuple[int, int]) -> None:
    masks = data.draw(proposal_masks(image_size, min_size=1))
    proposals = data.draw(proposal_masks(image_size, min_size=0))
    prompt = data.draw(prompts(image_size, min_positive=1))
    repaired = repair(masks, prompt, proposals)
    assert bool(is_consistent(repaired, prompt).all())
    assert_consistent(repaired, prompt)
    # A mask that already was consistent is only clipped to the box.
    already = is_consistent(masks, prompt)
    assert torch.equal(repaired[already], masks[already])


def test_a_proposal_region_is_preferred_to_a_disc_for_a_missing_point() -> None:
    size = (40, 40)
    small = torch.zeros(size, dtype=torch.bool)
    small[5:15, 5:15] = True
    large = torch.zeros(size, dtype=torch.bool)
    large[0:30, 0:30] = True
    mask = torch.zeros(size, dtype=torch.bool)
    mask[20:35, 20:35] = True
    prompt = PointPrompt.from_lists([[25, 25], [8, 8]], [[36, 36]])
    repaired = repair(mask[None], prompt, torch.stack([small, large]))[0]
    # The smallest proposal holding the missing point (8, 8) and no negative one is added.
    assert torch.equal(repaired, mask | small)


@given(data=st.data(), k=st.integers(1, 5), max_iou=st.floats(0.1, 1.0))
@SETTINGS
def test_distinct_best_is_ranked_and_distinct(data: st.DataObject, k: int, max_iou: float) -> None:
    masks = data.draw(proposal_masks((24, 24), min_size=1))
    scores = torch.tensor(data.draw(st.lists(
        st.floats(0, 1), min_size=len(masks), max_size=len(masks)
    )))
    chosen = distinct_best(masks, scores, k, max_iou).tolist()
    assert 1 <= len(chosen) <= k and len(set(chosen)) == len(chosen)
    assert chosen[0] == int(torch.argsort(scores, descending=True, stable=True)[0])
    assert all(scores[a] >= scores[b] for a, b in zip(chosen, chosen[1:], strict=False))
    flat = masks.flatten(1).float()
    for i, a in enumerate(chosen):
        for b in chosen[:i]:
            inter = float(flat[a] @ flat[b])
            union = float(flat[a].sum() + flat[b].sum()) - inter
            assert inter / union <= max_iou + 1e-6
    if len(chosen) < k:  # every mask left out is a near-copy of a better one taken
        for q in set(range(len(masks))) - set(chosen):
            inter = flat[chosen] @ flat[q]
            union = flat[chosen].sum(1) + flat[q].sum() - inter
            assert bool(((inter / union) > max_iou).any())


@given(data=st.data(), k=st.integers(1, 4), label=st.none() | st.integers(1, NUM_CLASSES))
@settings(SETTINGS, max_examples=15)
def test_refine_returns_k_consistent_ranked_instances(
    data: st.DataObject, k: int, label: int | None
) -> None:
    size = (32, 32)
    image = np.random.default_rng(0).integers(0, 256, (*size, 3), dtype=np.uint8)
    proposals = data.draw(proposal_masks(size, min_size=1))
    prompt = data.draw(prompts(size, min_positive=1))
    output = refine(
        untrained_net(), image, proposals, prompt, k, label=label,
        generator=torch.Generator().manual_seed(0),
    )
    assert 1 <= len(output) <= k
    assert_consistent(output.masks, prompt)
    assert all(a >= b for a, b in zip(output.scores.tolist(), output.scores.tolist()[1:],
                                      strict=False))
    assert bool(((output.scores > 0) & (output.scores <= 1)).all())
    assert bool(((output.labels >= 1) & (output.labels <= NUM_CLASSES)).all())
    if label is not None:
        assert output.labels.tolist() == [label] * len(output)
    again = refine(
        untrained_net(), image, proposals, prompt, k, label=label,
        generator=torch.Generator().manual_seed(0),
    )
    assert torch.equal(again.masks, output.masks)


@pytest.mark.parametrize(
    ("positive", "negative", "box", "message"),
    [
        ([], [[3, 3]], None, "at least one positive point or a box"),
        ([[40, 3]], [], None, "positive point 0: (40, 3) lies outside the 32x32 image"),
        ([[3, 3]], [[3.5, 3.9]], None, "pixel (3, 3) is both a positive and a negative point"),
        ([[3, 3]], [], [10, 10, 20, 20], "positive point 0 lies outside the box"),
        ([[3, 3]], [], [10, 10, 5, 20], "empty box"),
        ([[3, 3]], [], [0, 0, 40, 20], "lies outside the 32x32 image"),
        ([[float("nan"), 3]], [], None, "coordinates must be finite"),
    ],
)
def test_invalid_prompts_are_refused_with_the_reason(
    positive: list, negative: list, box: list | None, message: str
) -> None:
    prompt = PointPrompt.from_lists(positive, negative, box)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        prompt.validate((32, 32))


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"positive": [[1, 2, 3]]}, "positive points must be"),
        ({"negative": [["a", 2]]}, "negative points must be"),
        ({"box": [1, 2, 3]}, "box must be"),
    ],
)
def test_malformed_prompts_are_refused(arguments: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        PointPrompt.from_lists(**arguments)


def test_refine_refuses_a_bad_label_k_or_current_mask() -> None:
    image = np.zeros((32, 32, 3), dtype=np.uint8)
    proposals = torch.ones((1, 32, 32), dtype=torch.bool)
    prompt = PointPrompt.from_lists([[4, 4]])
    with pytest.raises(ValueError, match="k must be at least 1"):
        refine(untrained_net(), image, proposals, prompt, 0)
    with pytest.raises(ValueError, match="unknown class id 9"):
        refine(untrained_net(), image, proposals, prompt, 1, label=9)
    with pytest.raises(ValueError, match="the current mask is"):
        refine(untrained_net(), image, proposals, prompt, 1,
               current=torch.zeros((8, 8), dtype=torch.bool))
