"""POST /v1/pseudo-labels: samples consistent with the hints, seeds, and every 4xx path."""

import json
import math

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from tests.models.cases import twin_discs
from tests.service.conftest import CLASSES, IMAGE_SIZE, encode, scene_image, upload


def _post(client, image_index=0, **form):
    return client.post(
        "/v1/pseudo-labels",
        files=upload(encode(scene_image(image_index))),
        data={key: str(value) for key, value in form.items()},
    )


def _masks(sample: dict) -> list[np.ndarray]:
    return [mask_utils.decode(instance["mask"]).astype(bool) for instance in sample["instances"]]


@pytest.mark.parametrize(("image_index", "tags"), [(4, ["disc"]), (5, ["square", "triangle"])])
def test_every_sample_has_exactly_the_tagged_classes(client, image_index, tags) -> None:
    response = _post(client, image_index, tags=json.dumps(tags), k=6, seed=1)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == response.headers["x-discoseg-model"]
    assert (body["width"], body["height"]) == (IMAGE_SIZE, IMAGE_SIZE)
    assert 1 <= len(body["samples"]) <= 6
    outputs = [tuple(i["mask"]["counts"] for i in s["instances"]) for s in body["samples"]]
    assert len(set(outputs)) == len(outputs), "the samples are distinct outputs"
    assert 0 <= body["diversity"] <= 3
    for sample in body["samples"]:
        assert {instance["label"] for instance in sample["instances"]} == set(tags)
        scores = [instance["score"] for instance in sample["instances"]]
        assert sample["score"] == pytest.approx(sum(scores) / len(scores), abs=1e-5)
        for mask in _masks(sample):
            assert mask.shape == (IMAGE_SIZE, IMAGE_SIZE) and mask.any()


def test_every_sample_has_one_instance_per_box_inside_it(client) -> None:
    boxes = [
        {"label": "square", "bbox": [5.5, 10, 60, 50.2]},
        {"label": "disc", "bbox": [40, 45, 90, 95]},
    ]
    response = _post(client, 6, boxes=json.dumps(boxes), k=4, seed=2)
    assert response.status_code == 200, response.text
    for sample in response.json()["samples"]:
        assert sorted(i["label"] for i in sample["instances"]) == ["disc", "square"]
        for box in boxes:
            x0, y0, x1, y1 = box["bbox"]
            window = np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=bool)
            window[math.floor(y0) : math.ceil(y1), math.floor(x0) : math.ceil(x1)] = True
            fitting = [
                mask
                for instance, mask in zip(sample["instances"], _masks(sample), strict=True)
                if instance["label"] == box["label"] and not (mask & ~window).any()
            ]
            assert len(fitting) == 1, f"one {box['label']} instance inside {box['bbox']}"
            rows, cols = np.nonzero(fitting[0])
            tight = (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)
            window_box = (math.floor(x0), math.floor(y0), math.ceil(x1), math.ceil(y1))
            assert _box_iou(tight, window_box) >= 0.5


def _box_iou(a, b) -> float:
    width = max(0, min(a[2], b[2]) - max(a[0], b[0]))
    height = max(0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = width * height
    area = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / area


def test_samples_differ_where_the_hints_allow_two_answers(client) -> None:
    # Two identical discs, the tag "disc" and one instance per tag: either disc is right, and
    # the conditional network's noise splits the samples between them (4 to 16 of 32 took the
    # rarer disc over five networks and three seeds).
    image, _ = twin_discs()
    response = client.post(
        "/v1/pseudo-labels",
        files=upload(encode(image)),
        data={"tags": '["disc"]', "k": "32", "seed": "0", "instances_per_tag": "1"},
    )
    assert response.status_code == 200, response.text
    body = response.json()
    picks = [_masks(sample) for sample in body["samples"]]
    assert all(len(masks) == 1 for masks in picks)
    distinct = {masks[0].tobytes() for masks in picks}
    assert len(distinct) >= 2, "all 32 samples picked the same instance"
    assert body["diversity"] > 0


def test_samples_name_every_instance_the_networks_find_unless_limited(client) -> None:
    image, _ = twin_discs()
    counts = {}
    for limit in ("", "1"):
        response = client.post(
            "/v1/pseudo-labels",
            files=upload(encode(image)),
            data={"tags": '["disc"]', "k": "8", "seed": "0", "instances_per_tag": limit},
        )
        assert response.status_code == 200, response.text
        counts[limit] = [len(sample["instances"]) for sample in response.json()["samples"]]
    assert max(counts[""]) >= 2
    assert counts["1"] and set(counts["1"]) == {1}


def test_the_same_seed_gives_the_same_samples(client) -> None:
    first = _post(client, 7, tags='["disc", "square"]', k=5, seed=123).json()
    again = _post(client, 7, tags='["disc", "square"]', k=5, seed=123).json()
    assert first["samples"] == again["samples"]
    assert first["diversity"] == again["diversity"]


def test_one_sample_has_no_diversity(client) -> None:
    body = _post(client, 8, tags='["triangle"]', k=1).json()
    assert len(body["samples"]) == 1
    assert body["diversity"] == 0


def test_empty_tags_give_one_empty_sample(client) -> None:
    body = _post(client, 8, tags="[]", k=2).json()
    assert [sample["instances"] for sample in body["samples"]] == [[]]


@pytest.mark.parametrize(
    ("form", "code", "message"),
    [
        ({"tags": '["disc", "cat"]'}, "invalid_hints", "known classes: " + ", ".join(CLASSES)),
        ({"tags": '["disc"'}, "validation_error", "tags: Invalid JSON"),
        ({"tags": '{"disc": 1}'}, "validation_error", "tags: Input should be a valid array"),
        ({"tags": "[1, 2]"}, "validation_error", "tags[0]: Input should be a valid string"),
        ({"boxes": "[{]"}, "validation_error", "boxes: Invalid JSON"),
        ({"boxes": '[{"label": "disc"}]'}, "validation_error", "boxes[0].bbox: Field required"),
        ({"boxes": '[{"label": "disc", "bbox": [1, 2, 3]}]'}, "validation_error",
         "boxes[0].bbox: List should have at least 4 items"),
        ({"boxes": '[{"label": "disc", "bbox": ["a", 2, 3, 4]}]'}, "validation_error",
         "boxes[0].bbox[0]: Input should be a valid number"),
        ({"boxes": '[{"label": "disc", "bbox": [1, 2, 3, NaN]}]'}, "validation_error",
         "boxes[0].bbox[3]: Input should be a finite number"),
        ({"boxes": '[{"label": "disc", "bbox": [10, 10, 200, 40]}]'}, "invalid_hints", "outside"),
        ({"boxes": '[{"label": "disc", "bbox": [-1, 10, 20, 40]}]'}, "invalid_hints", "outside"),
        ({"boxes": '[{"label": "disc", "bbox": [30, 10, 30, 40]}]'}, "invalid_hints", "empty"),
        ({"boxes": '[{"label": "dog", "bbox": [1, 1, 9, 9]}]'}, "invalid_hints", "known classes"),
        ({}, "validation_error", "exactly one of"),
        ({"tags": '["disc"]', "boxes": "[]"}, "validation_error", "exactly one of"),
        ({"tags": '["disc"]', "k": "0"}, "validation_error",
         "k: Input should be greater than or equal to 1"),
        ({"tags": '["disc"]', "k": "33"}, "validation_error",
         "k: Input should be less than or equal to 32"),
        ({"tags": '["disc"]', "k": "two"}, "validation_error", "k"),
        ({"tags": '["disc"]', "seed": "-1"}, "validation_error", "seed"),
        ({"tags": '["disc"]', "instances_per_tag": "0"}, "validation_error",
         "instances_per_tag: Input should be greater than or equal to 1"),
        ({"tags": '["disc"]', "seed": str(2**63)}, "validation_error", "seed"),
    ],
)
def test_bad_hints_and_options_are_422(client, form, code, message) -> None:
    response = client.post(
        "/v1/pseudo-labels", files=upload(encode(scene_image(0))), data=form
    )
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert message in error["message"]


def test_too_many_boxes_is_422(make_client) -> None:
    boxes = [{"label": "disc", "bbox": [0, 0, 10 + i, 10]} for i in range(3)]
    with make_client(max_boxes=2) as limited:
        response = _post(limited, boxes=json.dumps(boxes), k=1)
        assert response.status_code == 422
        assert "at most 2" in response.json()["error"]["message"]


def test_bad_image_is_4xx_before_hints_are_read(client) -> None:
    response = client.post(
        "/v1/pseudo-labels", files=upload(b"\x89PNG\r\n\x1a\nbroken"), data={"tags": "[]"}
    )
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_image"
