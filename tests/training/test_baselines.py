import numpy as np
import pytest
import torch

from models.annotations import BoxAnnotation
from models.delta import mask_iou
from training.baselines import baseline_target, grabcut_in_box
from training.config import TrainConfig


def _disc_image() -> tuple[np.ndarray, torch.Tensor]:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 60, (64, 64, 3), dtype=np.uint8)  # dark noisy background
    yy, xx = np.mgrid[:64, :64]
    disc = (yy - 30) ** 2 + (xx - 34) ** 2 <= 14**2
    image[disc] = (220, 180, 40)
    return image, torch.from_numpy(disc)


def test_grabcut_finds_the_object_inside_its_box() -> None:
    image, disc = _disc_image()
    mask = grabcut_in_box(image, torch.tensor([16.0, 12.0, 53.0, 49.0]))
    assert not mask[:, :16].any() and not mask[:12].any(), "the mask must stay in the box"
    assert mask_iou(mask[None], disc[None]).item() > 0.8


def test_box_mask_and_grabcut_targets() -> None:
    image, _ = _disc_image()
    boxes = BoxAnnotation(torch.tensor([[16.0, 12.0, 53.0, 49.0]]), torch.tensor([2]))
    box_mask = baseline_target(image, boxes, "box-mask")
    assert box_mask["masks"].sum() == 37 * 37
    assert box_mask["labels"].tolist() == [2]
    grabcut = baseline_target(image, boxes, "grabcut")
    assert 0 < grabcut["masks"].sum() < 37 * 37
    torch.testing.assert_close(grabcut["boxes"], torch.tensor([[20.0, 16.0, 49.0, 45.0]]))
    with pytest.raises(ValueError, match="unknown baseline"):
        baseline_target(image, boxes, "oracle")


def test_baseline_needs_boxes_supervision() -> None:
    with pytest.raises(ValueError, match="baseline"):
        TrainConfig(supervision="tags", baseline="grabcut")
    TrainConfig(supervision="boxes", baseline="grabcut")
