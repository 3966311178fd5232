import logging

import numpy as np
import pytest
from PIL import Image

from training.data.voc import VOC_CLASSES, VocDataset

PERSON, DOG = VOC_CLASSES.index("person") + 1, VOC_CLASSES.index("dog") + 1
H, W = 24, 32


def _palette_png(path, indices):
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(indices.astype(np.uint8), mode="P")
    image.putpalette([v for i in range(256) for v in (i, 255 - i, (7 * i) % 256)])
    image.save(path)


def _write_item(root, name, objects, classes, *, jpg=True):
    if jpg:
        (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
        pixels = np.random.default_rng(0).integers(0, 255, (H, W, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / "JPEGImages" / f"{name}.jpg")
    _palette_png(root / "SegmentationObject" / f"{name}.png", objects)
    _palette_png(root / "SegmentationClass" / f"{name}.png", classes)


@pytest.fixture
def voc(tmp_path):
    objects = np.zeros((H, W), np.uint8)
    classes = np.zeros((H, W), np.uint8)
    objects[2:10, 3:12] = 1
    classes[2:10, 3:12] = PERSON
    objects[12:20, 15:30] = 2
    classes[12:20, 15:30] = DOG
    classes[12:14, 15:30] = PERSON  # a minority of another class under object 2
    objects[1, 2:13] = 255  # void border
    classes[1, 2:13] = 255
    objects[21:23, 0:4] = 3  # an object whose pixels are all void in the class map
    classes[21:23, 0:4] = 255
    _write_item(tmp_path, "2007_000032", objects, classes)
    _write_item(tmp_path, "2007_000033", np.zeros((H, W)), np.zeros((H, W)))
    _write_item(tmp_path, "2007_000039", objects, classes, jpg=False)
    (tmp_path / "JPEGImages" / "2007_000040.jpg").write_bytes(b"\xff\xd8 broken")
    _write_item(tmp_path, "2007_000040", objects, classes, jpg=False)
    Image.fromarray(np.zeros((H, W, 3), np.uint8)).save(tmp_path / "JPEGImages" / "2007_000041.jpg")
    splits = tmp_path / "ImageSets" / "Segmentation"
    splits.mkdir(parents=True)
    (splits / "train.txt").write_text(
        "2007_000032\n2007_000033\n2007_000039\n2007_000040\n2007_000041\n"
    )
    (splits / "val.txt").write_text("2007_000032\n")
    return tmp_path


def test_masks_mode_reads_instances(voc, caplog):
    with caplog.at_level(logging.WARNING):
        dataset = VocDataset(voc, "train", "masks")
    assert len(dataset) == 1
    assert dataset.classes == VOC_CLASSES and len(dataset.classes) == 20
    assert dataset.image_ids == [2007000032]
    sample = dataset[0]
    assert sample.file_name == "JPEGImages/2007_000032.jpg"
    assert sample.image.shape == (H, W, 3) and sample.image.dtype == np.uint8
    assert sample.labels.tolist() == [PERSON, DOG]
    assert sample.boxes.tolist() == [[3, 2, 12, 10], [15, 12, 30, 20]]
    assert sample.masks.shape == (2, H, W)
    assert sample.masks[0].sum() == 8 * 9 and sample.masks[1].sum() == 8 * 15
    assert not sample.masks[:, 1].any(), "void pixels belong to no instance"
    assert sample.tags == {PERSON, DOG}
    assert dict(dataset.skipped.counts) == {
        "unknown_category": 1, "no_annotations": 1, "missing_image": 1,
        "unreadable_image": 1, "missing_annotation": 1,
    }
    assert dataset.skipped.examples["missing_image"] == ["2007_000039"]
    assert len([r for r in caplog.records if r.levelno == logging.WARNING]) == 1


def test_supervision_modes_expose_only_what_they_may(voc):
    tags = VocDataset(voc, "val", "tags")
    boxes = VocDataset(voc, "val", "boxes")
    assert tags[0].tags == {PERSON, DOG}
    assert tags[0].labels is None and tags[0].boxes is None and tags[0].masks is None
    assert boxes[0].masks is None
    assert boxes[0].boxes.tolist() == [[3, 2, 12, 10], [15, 12, 30, 20]]
    ground_truth = tags.ground_truth(0)
    assert ground_truth.masks.shape == (2, H, W)
    assert ground_truth.labels.tolist() == [PERSON, DOG]


def test_missing_split_raises(voc):
    with pytest.raises(FileNotFoundError, match="test.txt"):
        VocDataset(voc, "test", "tags")
