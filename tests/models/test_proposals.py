import json

import cv2
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from models.proposals import ProposalSettings, propose


def _scene(size: int = 128, seed: int = 0) -> tuple[np.ndarray, list[np.ndarray]]:
    """A textured background with a disc, a rectangle and a triangle in flat noisy colours."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((6, 6, 3)).astype(np.float32)
    background = cv2.resize(coarse, (size, size), interpolation=cv2.INTER_CUBIC) * 120 + 60
    image = background + rng.normal(0, 6, (size, size, 3))
    shapes = [np.zeros((size, size), dtype=np.uint8) for _ in range(3)]
    s = size / 128
    cv2.circle(shapes[0], (int(35 * s), int(38 * s)), int(22 * s), 1, -1)
    cv2.rectangle(shapes[1], (int(70 * s), int(15 * s)), (int(115 * s), int(50 * s)), 1, -1)
    triangle = (np.array([[20, 115], [60, 70], [100, 118]]) * s).astype(np.int32)
    cv2.fillPoly(shapes[2], [triangle], 1)
    colours = [(230, 30, 30), (20, 20, 220), (240, 240, 30)]
    for shape, colour in zip(shapes, colours, strict=True):
        image[shape.astype(bool)] = np.array(colour) + rng.normal(0, 6, (int(shape.sum()), 3))
    return np.clip(image, 0, 255).astype(np.uint8), [m.astype(bool) for m in shapes]


def _ious(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """float[A, B] mask IoU."""
    fa, fb = a.reshape(len(a), -1).float(), b.reshape(len(b), -1).float()
    inter = fa @ fb.T
    return inter / (fa.sum(1)[:, None] + fb.sum(1)[None] - inter)


def _check_contract(masks: torch.Tensor, shape: tuple[int, int], dedup_iou: float) -> None:
    assert masks.dtype == torch.bool
    assert masks.shape[1:] == shape
    assert bool(masks.flatten(1).any(1).all()), "every mask must be non-empty"
    ious = _ious(masks, masks)
    ious.fill_diagonal_(0)
    assert len(masks) < 2 or float(ious.max()) <= dedup_iou + 1e-6


def _box_iou(mask: torch.Tensor, box: np.ndarray) -> float:
    ys, xs = torch.nonzero(mask, as_tuple=True)
    found = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=np.float64)
    x0, y0 = np.maximum(found[:2], box[:2])
    x1, y1 = np.minimum(found[2:], box[2:])
    inter = max(0.0, x1 - x0) * max(0.0, y1 - y0)
    area = lambda b: (b[2] - b[0]) * (b[3] - b[1])  # noqa: E731
    return inter / (area(found) + area(box) - inter)


def test_recovers_synthetic_objects() -> None:
    image, objects = _scene()
    masks = propose(image)
    _check_contract(masks, (128, 128), 0.9)
    assert 0 < len(masks) <= 300
    best = _ious(torch.from_numpy(np.stack(objects)), masks).max(1).values
    assert bool((best >= 0.7).all()), best


def test_downscaled_work_copy_keeps_full_resolution_contract() -> None:
    """Non-integer downscaling: masks at full size, exactly deduplicated, objects recovered."""
    image, objects = _scene(size=200, seed=1)
    image = np.ascontiguousarray(image[:, :170])
    objects = [o[:, :170] for o in objects]
    options = ProposalSettings(work_size=96, dedup_iou=0.8)
    masks = propose(image, settings=options)
    _check_contract(masks, (200, 170), 0.8)
    best = _ious(torch.from_numpy(np.stack(objects)), masks).max(1).values
    assert bool((best >= 0.7).all()), best


def test_max_proposals_and_ranking_prefix() -> None:
    image, _ = _scene(seed=2)
    everything = propose(image)
    few = propose(image, max_proposals=10)
    assert len(few) == 10
    assert torch.equal(few, everything[:10])
    assert len(propose(image, max_proposals=0)) == 0


def test_deterministic() -> None:
    image, _ = _scene(seed=3)
    boxes = np.array([[10.0, 12.0, 60.0, 64.0]])
    assert torch.equal(propose(image, boxes), propose(image, boxes))


def test_seed_changes_ranking_only() -> None:
    image, _ = _scene(seed=3)
    a = propose(image, settings=ProposalSettings(seed=0))
    b = propose(image, settings=ProposalSettings(seed=1))
    assert not torch.equal(a[: min(len(a), len(b))], b[: min(len(a), len(b))])


def test_box_conditioned_proposals() -> None:
    image, objects = _scene()
    boxes = []
    for obj in objects:
        ys, xs = np.nonzero(obj)
        boxes.append([xs.min() - 1.5, ys.min() - 2.0, xs.max() + 2.5, ys.max() + 1.2])
    boxes = np.clip(np.array(boxes), 0, 128)
    only_boxes = propose(image, boxes, max_proposals=0)
    _check_contract(only_boxes, (128, 128), 0.9)
    per_box_found = np.zeros(len(boxes), dtype=bool)
    for mask in only_boxes:
        inside = [
            not mask[:, : int(np.floor(b[0]))].any()
            and not mask[:, int(np.ceil(b[2])) :].any()
            and not mask[: int(np.floor(b[1]))].any()
            and not mask[int(np.ceil(b[3])) :].any()
            for b in boxes
        ]
        assert any(inside), "every box-conditioned proposal lies inside its box"
        per_box_found |= np.array([_box_iou(mask, b) >= 0.5 for b in boxes]) & inside
    assert per_box_found.all()
    # GrabCut or the clipped regions find each object itself, not just its rectangle.
    best = _ious(torch.from_numpy(np.stack(objects)), only_boxes).max(1).values
    assert bool((best >= 0.8).all()), best

    combined = propose(image, boxes, max_proposals=20)
    assert len(combined) <= len(only_boxes) + 20
    assert torch.equal(combined[: len(only_boxes)], only_boxes)
    _check_contract(combined, (128, 128), 0.9)


def test_box_covering_the_whole_image_and_tiny_box() -> None:
    image, _ = _scene(size=64)
    boxes = np.array([[0, 0, 64, 64], [30.2, 30.2, 31.0, 31.5]])
    masks = propose(image, boxes, max_proposals=0)
    _check_contract(masks, (64, 64), 0.9)
    assert bool(masks[0].all())
    assert any(bool(m[30, 30]) and int(m.sum()) <= 2 for m in masks)


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    height=st.integers(8, 48),
    width=st.integers(8, 48),
    box_count=st.integers(0, 3),
)
def test_contract_on_random_images(seed: int, height: int, width: int, box_count: int) -> None:
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    image[: height // 2] //= 4
    x = np.sort(rng.uniform(0, width, (box_count, 2)), axis=1)
    y = np.sort(rng.uniform(0, height, (box_count, 2)), axis=1)
    x[:, 1] += 0.5
    y[:, 1] += 0.5
    boxes = np.stack([x[:, 0], y[:, 0], np.minimum(x[:, 1], width), np.minimum(y[:, 1], height)], 1)
    options = ProposalSettings(work_size=32, dedup_iou=0.7, min_area_fraction=0.0)
    masks = propose(image, boxes, max_proposals=40, settings=options)
    _check_contract(masks, (height, width), 0.7)
    only_boxes = propose(image, boxes, max_proposals=0, settings=options)
    assert torch.equal(masks[: len(only_boxes)], only_boxes)
    # A sub-pixel box covers whole pixels: compare with the pixels it covers.
    pixel_boxes = np.concatenate([np.floor(boxes[:, :2]), np.ceil(boxes[:, 2:])], axis=1)
    for box in pixel_boxes:
        assert any(_box_iou(m, box) >= 0.5 for m in only_boxes)


@pytest.mark.parametrize(
    ("box", "message"),
    [
        ([10, 10, 10, 20], "empty"),
        ([10, 20, 30, 5], "empty"),
        ([np.nan, 0, 5, 5], "not finite"),
        ([0, 0, np.inf, 5], "not finite"),
        ([-1, 0, 5, 5], "outside"),
        ([0, 0, 5, 65], "outside"),
    ],
)
def test_bad_boxes(box: list[float], message: str) -> None:
    image, _ = _scene(size=64)
    boxes = np.array([[1, 1, 8, 8], box], dtype=np.float64)
    with pytest.raises(ValueError, match=f"box 1 .*{message}"):
        propose(image, boxes)


def test_bad_inputs() -> None:
    image, _ = _scene(size=32)
    empty = np.zeros((0, 5, 3), np.uint8)
    bad_images = [image.astype(np.float32), image[..., :2], image[..., 0], empty]
    for bad in bad_images:
        with pytest.raises(ValueError, match="image"):
            propose(bad)
    with pytest.raises(ValueError, match="shape"):
        propose(image, np.zeros((2, 3)))
    with pytest.raises(ValueError, match="max_proposals"):
        propose(image, max_proposals=-1)


def test_settings_round_trip_and_validation() -> None:
    options = ProposalSettings(scales=(50.0, 150.0), grabcut_variants=((0.05, 2),), seed=7)
    stored = json.loads(json.dumps(options.as_dict()))
    assert ProposalSettings.from_dict(stored) == options
    assert ProposalSettings.from_dict(ProposalSettings().as_dict()) == ProposalSettings()
    with pytest.raises(ValueError, match="unknown"):
        ProposalSettings.from_dict({"colour": "hsv"})
    with pytest.raises(ValueError, match="colour_spaces"):
        ProposalSettings(colour_spaces=("xyz",))
    with pytest.raises(ValueError, match="similarities"):
        ProposalSettings(similarities=("cq",))
    with pytest.raises(ValueError, match="dedup_iou"):
        ProposalSettings(dedup_iou=0.0)
