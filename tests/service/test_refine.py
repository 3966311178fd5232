"""POST /v1/refine: candidates consistent with the points and box, the current mask, seeds,
and every 4xx path."""

import json
import math

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from models.rle import encode_mask
from tests.service.conftest import API_KEY, CLASSES, IMAGE_SIZE, encode, scene_image, upload


def _post(client, image_index=0, **form):
    return client.post(
        "/v1/refine",
        files=upload(encode(scene_image(image_index))),
        data={key: value if isinstance(value, str) else json.dumps(value)
              for key, value in form.items()},
    )


def _masks(body: dict) -> list[np.ndarray]:
    return [mask_utils.decode(c["mask"]).astype(bool) for c in body["candidates"]]


@pytest.mark.parametrize(
    ("positive", "negative", "box"),
    [
        ([[30, 40]], [], None),
        ([[30, 40], [50.5, 44]], [[70, 70], [31, 41]], None),
        ([[30, 40]], [[35, 45]], [10, 20, 60, 70]),
        ([], [[12, 12]], [10.5, 10.5, 80, 60]),
    ],
)
def test_every_candidate_respects_the_points_and_the_box(client, positive, negative, box) -> None:
    form = {"positive": positive, "negative": negative, "k": "4", "seed": "3"}
    if box is not None:
        form["box"] = box
    response = _post(client, 4, **form)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == response.headers["x-discoseg-model"]
    assert (body["width"], body["height"]) == (IMAGE_SIZE, IMAGE_SIZE)
    assert 1 <= len(body["candidates"]) <= 4
    scores = [c["score"] for c in body["candidates"]]
    assert scores == sorted(scores, reverse=True)
    masks = _masks(body)
    for candidate, mask in zip(body["candidates"], masks, strict=True):
        assert candidate["label"] in CLASSES and mask.any()
        assert all(mask[math.floor(y), math.floor(x)] for x, y in positive)
        assert not any(mask[math.floor(y), math.floor(x)] for x, y in negative)
        if box is not None:
            x0, y0 = math.floor(box[0]), math.floor(box[1])
            x1, y1 = math.ceil(box[2]), math.ceil(box[3])
            window = np.zeros_like(mask)
            window[y0:y1, x0:x1] = True
            assert not (mask & ~window).any()
    for i, a in enumerate(masks):  # distinct: no near-copies
        for b in masks[:i]:
            assert (a & b).sum() / (a | b).sum() <= 0.9


def test_a_label_fixes_the_class_and_a_seed_the_answer(client) -> None:
    form = {"positive": [[40, 40]], "label": "square", "k": "3", "seed": "11"}
    first = _post(client, 5, **form).json()
    assert {c["label"] for c in first["candidates"]} == {"square"}
    assert _post(client, 5, **form).json() == first


def test_a_negative_click_on_the_current_mask_cuts_it(client) -> None:
    current = np.zeros((IMAGE_SIZE, IMAGE_SIZE), dtype=np.uint8)
    current[20:60, 20:60] = 1
    mask = json.dumps(encode_mask(current))
    response = _post(
        client, 6, positive=[[25, 25]], negative=[[50, 50]], mask=mask, k="32", seed="0"
    )
    assert response.status_code == 200, response.text
    masks = _masks(response.json())
    assert all(m[25, 25] and not m[50, 50] for m in masks)
    # The corrected current mask is among the candidates: most of it, without the cut region.
    overlaps = [(m & current.astype(bool)).sum() / m.sum() for m in masks]
    assert max(overlaps) == 1.0


@pytest.mark.parametrize(
    ("form", "status", "code", "message"),
    [
        ({}, 422, "invalid_hints", "at least one positive point or a box"),
        ({"negative": [[3, 3]]}, 422, "invalid_hints", "at least one positive point or a box"),
        ({"positive": "[[1, 2"}, 422, "validation_error", "positive: Invalid JSON"),
        ({"positive": {"x": 1}}, 422, "validation_error", "positive: Input should be a valid"),
        ({"positive": [[1, 2, 3]]}, 422, "validation_error", "positive[0]: List should have at"),
        ({"positive": [[1, True]]}, 422, "validation_error", "positive[0][1]: Input should be"),
        ({"positive": [[1, "2"]]}, 422, "validation_error", "positive[0][1]: Input should be"),
        ({"positive": "[[1, NaN]]"}, 422, "validation_error", "positive[0][1]: Input should be "
         "a finite number"),
        ({"positive": "[[1, 1e999]]"}, 422, "validation_error", "finite number"),
        ({"negative": "[[1, " + "9" * 5000 + "]]"}, 422, "validation_error", "too many digits"),
        ({"negative": "[" * 10_000}, 422, "validation_error", "recursion limit"),
        ({"positive": [[200, 5]]}, 422, "invalid_hints", "lies outside the 96x96 image"),
        ({"positive": [[5, 5]], "negative": [[5.2, 5.7]]}, 422, "invalid_hints",
         "both a positive and a negative point"),
        ({"positive": [[5, 5]], "box": [10, 10, 20, 20]}, 422, "invalid_hints",
         "positive point 0 lies outside the box"),
        ({"positive": [[5, 5]], "box": [1, 2, 3]}, 422, "validation_error",
         "box: List should have at least 4 items"),
        ({"positive": [[5, 5]], "box": [1, 2, 3, None]}, 422, "validation_error", "box[3]"),
        ({"positive": [[5, 5]], "label": "dog"}, 422, "invalid_hints", "unknown class 'dog'"),
        ({"positive": [[5, 5]], "k": "0"}, 422, "validation_error",
         "k: Input should be greater than or equal to 1"),
        ({"positive": [[5, 5]], "k": "33"}, 422, "validation_error",
         "k: Input should be less than or equal to 32"),
        ({"positive": [[5, 5]], "mask": "{}"}, 422, "validation_error", "mask.size: Field"),
        ({"positive": [[5, 5]], "mask": '{"size": [10, 10], "counts": "T3"}'}, 422,
         "validation_error", "differs from the image"),
        ({"positive": [[5, 5]], "mask": '{"size": [96, 96], "counts": "!!"}'}, 422,
         "validation_error", "mask: the counts hold '!'"),
        # Runs that cover less than the size would be decoded into uninitialised memory.
        ({"positive": [[5, 5]], "mask": '{"size": [96, 96], "counts": ""}'}, 422,
         "validation_error", "the counts cover 0 pixels"),
        ({"positive": [[5, 5]], "mask": '{"size": [96, "96"], "counts": "T3"}'}, 422,
         "validation_error", "mask.size[1]"),
        ({"positive": [[5, 5]], "seed": str(2**63)}, 422, "validation_error", "seed"),
        ({"positive": [[i, i] for i in range(101)]}, 422, "validation_error", "at most 100"),
    ],
)
def test_bad_requests_are_refused_with_the_reason(client, form, status, code, message) -> None:
    response = _post(client, 0, **form)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert message in error["message"]


def test_no_image_or_a_broken_one_is_refused(client) -> None:
    response = client.post("/v1/refine", data={"positive": "[[1, 1]]"})
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "validation_error"
    response = client.post("/v1/refine", files=upload(b"not an image"),
                           data={"positive": "[[1, 1]]"})
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_image"


def test_refine_needs_the_api_key_when_keys_are_set(make_client) -> None:
    with make_client(api_keys=[API_KEY]) as client:
        response = _post(client, 0, positive=[[5, 5]])
        assert response.status_code == 401
        response = client.post(
            "/v1/refine", files=upload(encode(scene_image(0))), data={"positive": "[[5, 5]]"},
            headers={"Authorization": f"Bearer {API_KEY}"},
        )
        assert response.status_code == 200
