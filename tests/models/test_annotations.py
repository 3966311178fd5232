"""Weak annotations: validation names the problem; names map to 1-based class ids."""

import pytest
import torch

from models.annotations import (
    BoxAnnotation,
    TagAnnotation,
    boxes_from_records,
    class_index,
    tags_from_names,
)

CLASSES = ("cat", "dog", "person")
IMAGE_SIZE = (20, 30)  # (H, W)


def boxes(*coordinates: list[float], labels: list[int] | None = None) -> BoxAnnotation:
    return BoxAnnotation(
        boxes=torch.tensor(coordinates, dtype=torch.float32).reshape(-1, 4),
        labels=torch.tensor(labels if labels is not None else [1] * len(coordinates)),
    )


def test_valid_annotations_pass():
    TagAnnotation((1, 3)).validate(3)
    TagAnnotation(()).validate(3)
    boxes([0, 0, 30, 20], [2.5, 3.5, 4.0, 19.9], labels=[1, 3]).validate(3, IMAGE_SIZE)
    boxes().validate(3, IMAGE_SIZE)


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ((0,), r"unknown class id\(s\) \[0\]"),
        ((1, 4), r"unknown class id\(s\) \[4\].*1\.\.3"),
        ((2, 1), "unique and sorted"),
        ((1, 1), "unique and sorted"),
    ],
)
def test_bad_tags_are_rejected(labels, message):
    with pytest.raises(ValueError, match=message):
        TagAnnotation(labels).validate(3)


@pytest.mark.parametrize(
    ("annotation", "message"),
    [
        (boxes([0, 0, 5, 5], labels=[4]), r"box 0: unknown class id 4, expected ids in 1\.\.3"),
        (boxes([0, 0, 5, 5], labels=[0]), "box 0: unknown class id 0"),
        (boxes([0, 0, 5, 5], [0, 0, 31, 5]), r"box 1: .* outside the 30x20 image"),
        (boxes([0, 0, 5, 21]), "outside the 30x20 image"),
        (boxes([-0.5, 0, 5, 5]), "outside"),
        (boxes([5, 0, 5, 5]), "box 0: empty box"),
        (boxes([0, 6, 5, 5]), "box 0: empty box"),
        (boxes([0, 0, float("nan"), 5]), "box 0: coordinates must be finite"),
        (boxes([0, 0, 5, float("inf")]), "coordinates must be finite"),
        (boxes([float("-inf"), 0, 5, 5]), "coordinates must be finite"),
        (boxes([0, 0, 5, 5], [1, 1, 4, 4], labels=[1]), "got 1 labels for 2 boxes"),
        (boxes([0, 0, 5, 5], labels=[1, 2]), "got 2 labels for 1 boxes"),
        (BoxAnnotation(torch.zeros((2, 3)), torch.ones(2, dtype=torch.int64)), r"shape \(N, 4\)"),
    ],
)
def test_bad_boxes_are_rejected(annotation, message):
    with pytest.raises(ValueError, match=message):
        annotation.validate(3, IMAGE_SIZE)


def test_tags_from_names():
    assert class_index(CLASSES) == {"cat": 1, "dog": 2, "person": 3}
    assert tags_from_names(["person", "cat", "person"], CLASSES) == TagAnnotation((1, 3))
    assert tags_from_names([], CLASSES) == TagAnnotation(())


def test_tags_from_an_unknown_name_list_the_known_classes():
    with pytest.raises(ValueError, match="unknown class 'horse'; known classes: cat, dog, person"):
        tags_from_names(["cat", "horse"], CLASSES)


def test_boxes_from_records():
    records = [
        {"label": "dog", "bbox": [1, 2, 10, 12]},
        {"label": "cat", "bbox": (0.5, 0.5, 30.0, 20.0)},
    ]
    annotation = boxes_from_records(records, CLASSES, IMAGE_SIZE)
    assert annotation.labels.tolist() == [2, 1]
    assert annotation.labels.dtype == torch.int64
    assert annotation.boxes.dtype == torch.float32
    assert annotation.boxes.tolist() == [[1, 2, 10, 12], [0.5, 0.5, 30, 20]]
    assert len(boxes_from_records([], CLASSES, IMAGE_SIZE)) == 0


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"label": "horse", "bbox": [0, 0, 5, 5]}, "unknown class 'horse'; known classes: cat"),
        ({"bbox": [0, 0, 5, 5]}, "unknown class 'None'"),
        ({"label": "cat"}, "box 0: bbox must be a list"),
        ({"label": "cat", "bbox": [0, 0, 5]}, "box 0: bbox must be a list"),
        ({"label": "cat", "bbox": "0 0 5 5"}, "box 0: bbox must be a list"),
        ({"label": "cat", "bbox": "0055"}, "box 0: bbox must be a list"),
        ({"label": "cat", "bbox": [0, 0, "a", 5]}, "box 0: bbox must hold numbers"),
        ({"label": "cat", "bbox": [0, 0, None, 5]}, "box 0: bbox must hold numbers"),
        ({"label": "cat", "bbox": [0, 0, 40, 5]}, "outside the 30x20 image"),
        ({"label": "cat", "bbox": [5, 5, 5, 9]}, "empty box"),
        ({"label": "cat", "bbox": [0, 0, "nan", 5]}, "coordinates must be finite"),
    ],
)
def test_bad_box_records_are_rejected(record, message):
    good = {"label": "cat", "bbox": [0, 0, 5, 5]}
    with pytest.raises(ValueError, match=message):
        boxes_from_records([record], CLASSES, IMAGE_SIZE)
    # The index in the message is the record's own, not always 0.
    if message.startswith("box 0"):
        with pytest.raises(ValueError, match="box 1" + message[len("box 0") :]):
            boxes_from_records([good, record], CLASSES, IMAGE_SIZE)
