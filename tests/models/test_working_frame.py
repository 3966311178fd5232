"""The working frame: hints scaled into the working copy, masks back at the image's size obeying
their hints there, and an image within the working size left as it is."""

import numpy as np
import pytest
import torch
from torchvision.ops import masks_to_boxes

from models.annotations import BoxAnnotation, TagAnnotation
from models.images import fit_image
from models.refinement import PointPrompt
from models.structures import InstanceSet, mask_boxes
from models.working_frame import FramedInstances, WorkingFrame, framed


def _square_masks(size: tuple[int, int], squares: list[tuple[int, int, int, int]]) -> InstanceSet:
    masks = torch.zeros((len(squares), *size), dtype=torch.bool)
    for i, (x0, y0, x1, y1) in enumerate(squares):
        masks[i, y0:y1, x0:x1] = True
    return InstanceSet.from_masks(masks, torch.ones(len(squares), dtype=torch.int64))


def test_the_frame_is_the_one_fit_image_makes() -> None:
    image = np.zeros((1000, 3000, 3), dtype=np.uint8)
    frame = WorkingFrame.fit(image.shape[:2], 256)
    assert frame.size == fit_image(image, 256).shape[:2] == (85, 256)
    assert frame.copy(image).shape[:2] == frame.size
    small, part = WorkingFrame.fit((90, 120), 256), image[:90, :120]
    assert small.is_identity and small.copy(part) is part


def test_hints_are_scaled_into_the_copy_and_kept_inside_it() -> None:
    frame = WorkingFrame((400, 800), (100, 200))
    boxes = BoxAnnotation(torch.tensor([[40.0, 20, 800, 400]]), torch.tensor([1]))
    scaled = frame.annotation(boxes)
    assert torch.allclose(scaled.boxes, torch.tensor([[10.0, 5, 200, 100]]))
    scaled.validate(1, frame.size)
    tags = TagAnnotation((1, 2))
    assert frame.annotation(tags) is tags
    prompt = frame.prompt(PointPrompt.from_lists([[400, 200]], [[8, 4]], [0, 0, 800, 400]))
    assert prompt.positive.tolist() == [[100.0, 50.0]] and prompt.negative.tolist() == [[2, 1]]
    assert prompt.box.tolist() == [0, 0, 200, 100]


def test_a_mask_goes_into_the_copy_by_coverage_and_back_by_bilinear_resampling() -> None:
    frame = WorkingFrame((40, 40), (10, 10))
    mask = torch.zeros((40, 40), dtype=torch.bool)
    mask[8:24, 4:21] = True  # working rows 2..5 and columns 1..4, and a quarter of column 5
    working = frame.mask(mask)
    expected = torch.zeros((10, 10), dtype=torch.bool)
    expected[2:6, 1:5] = True
    assert torch.equal(working, expected)
    back = frame.full_size(working)
    assert back.shape == (40, 40)
    assert (back & mask).sum() / (back | mask).sum() > 0.8


def test_full_size_masks_are_clipped_to_their_box_and_hold_the_clicks() -> None:
    frame = WorkingFrame((100, 100), (10, 10))
    instances = _square_masks((10, 10), [(2, 2, 6, 6), (0, 0, 10, 10)])
    boxes = BoxAnnotation(torch.tensor([[25.0, 25, 55, 55], [3, 3, 97.5, 97.5]]),
                          torch.tensor([1, 1]))
    clipped = FramedInstances.of_boxes(instances, frame, boxes)
    first, second = clipped.mask(0), clipped.mask(1)
    assert not first[:25].any() and not first[:, 55:].any() and first[30:50, 30:50].all()
    assert second[3:98, 3:98].all() and not second[:3].any() and not second[:, 98:].any()

    prompt = PointPrompt.from_lists([[19.5, 20.2]], [[40, 40]], [15, 15, 70, 70])
    candidates = FramedInstances.of_prompt(_square_masks((10, 10), [(2, 2, 7, 7)]), frame, prompt)
    (mask,) = candidates.masks()
    assert mask[20, 19] and not mask[40, 40]
    assert not mask[:15].any() and not mask[:, 70:].any()
    (by_columns,) = candidates.masks(column_major=True)
    assert torch.equal(by_columns, mask) and by_columns.numpy().flags.f_contiguous


def test_one_box_per_instance_is_required() -> None:
    frame = WorkingFrame((100, 100), (10, 10))
    boxes = BoxAnnotation(torch.tensor([[0.0, 0, 50, 50]]), torch.tensor([1]))
    with pytest.raises(ValueError, match="2 instances for 1 boxes"):
        FramedInstances.of_boxes(_square_masks((10, 10), [(0, 0, 2, 2)] * 2), frame, boxes)


def test_within_the_working_size_masks_come_back_unchanged() -> None:
    instances = _square_masks((30, 40), [(1, 2, 9, 7), (10, 10, 30, 25)])
    frame = WorkingFrame.fit((30, 40), 256)
    boxes = BoxAnnotation(torch.tensor([[0.0, 0, 5, 5], [0, 0, 40, 30]]), torch.tensor([1, 1]))
    for wrapped in (framed(instances), FramedInstances.of_boxes(instances, frame, boxes)):
        for index, mask in enumerate(wrapped.masks()):
            assert torch.equal(mask, instances.masks[index])
    assert framed(framed(instances)).instances is instances


def test_subset_keeps_each_instance_with_its_window() -> None:
    frame = WorkingFrame((100, 100), (10, 10))
    instances = _square_masks((10, 10), [(0, 0, 10, 10), (0, 0, 10, 10)])
    boxes = BoxAnnotation(torch.tensor([[0.0, 0, 50, 50], [50, 50, 100, 100]]),
                          torch.tensor([1, 1]))
    second = FramedInstances.of_boxes(instances, frame, boxes).subset(torch.tensor([1]))
    (mask,) = second.masks()
    assert mask_boxes(mask[None])[0].tolist() == [50, 50, 100, 100]


def test_mask_boxes_match_torchvision() -> None:
    generator = torch.Generator().manual_seed(0)
    masks = torch.rand((50, 7, 9), generator=generator) > 0.97
    expected = torch.zeros((50, 4))
    nonempty = masks.flatten(1).any(1)
    expected[nonempty] = masks_to_boxes(masks[nonempty]) + torch.tensor([0.0, 0, 1, 1])
    assert torch.equal(mask_boxes(masks), expected)
