"""POST /v1/segment: formats of the 200s and every 4xx path."""

import io
import re

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from tests.service.conftest import (
    CLASSES,
    IMAGE_SIZE,
    encode,
    png_header,
    scene_image,
    upload,
)

VERSION = re.compile(r"^tiny-model-[0-9a-f]{12}$")


def test_json_instances_are_rle_masks_of_the_image_size(client) -> None:
    image = scene_image(1)
    response = client.post(
        "/v1/segment", files=upload(encode(image)), data={"score_threshold": "0"}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert VERSION.match(body["model"])
    assert response.headers["x-discoseg-model"] == body["model"]
    assert (body["width"], body["height"]) == (IMAGE_SIZE, IMAGE_SIZE)
    assert body["instances"], "an untrained Mask R-CNN still scores above 0 somewhere"
    scores = [instance["score"] for instance in body["instances"]]
    assert scores == sorted(scores, reverse=True)
    for instance in body["instances"]:
        assert instance["label"] in CLASSES
        assert 0 <= instance["score"] <= 1
        mask = mask_utils.decode(instance["mask"])
        assert mask.shape == (IMAGE_SIZE, IMAGE_SIZE)
        assert mask.any()
        rows, cols = np.nonzero(mask)
        x0, y0, x1, y1 = instance["bbox"]
        assert (x0, y0, x1, y1) == (cols.min(), rows.min(), cols.max() + 1, rows.max() + 1)


def test_threshold_and_limit_apply_as_query_or_form(client) -> None:
    data = encode(scene_image(2))
    everything = client.post("/v1/segment?score_threshold=0", files=upload(data)).json()
    limited = client.post(
        "/v1/segment", files=upload(data), data={"score_threshold": "0", "max_instances": "2"}
    ).json()
    assert len(everything["instances"]) > 2
    assert limited["instances"] == everything["instances"][:2]
    none = client.post("/v1/segment?score_threshold=1", files=upload(data)).json()
    assert none["instances"] == []


def test_png_overlay_is_a_png_of_the_image_size(client) -> None:
    image = scene_image(3, size=80)
    response = client.post(
        "/v1/segment?format=png&score_threshold=0", files=upload(encode(image, "JPEG"))
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "image/png"
    assert VERSION.match(response.headers["x-discoseg-model"])
    overlay = Image.open(io.BytesIO(response.content))
    assert overlay.format == "PNG"
    assert overlay.size == (80, 80)
    assert not np.array_equal(np.asarray(overlay.convert("RGB")), image), "instances drawn"


def _gif(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="GIF")
    return buffer.getvalue()


def _bilevel_png(width: int, height: int) -> bytes:
    """A PNG of few bytes that decodes to width x height pixels."""
    buffer = io.BytesIO()
    Image.new("1", (width, height)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.mark.parametrize(
    ("data", "status", "code", "message"),
    [
        (b"", 400, "invalid_image", "empty"),
        (b"this is not an image at all", 400, "invalid_image", "not an image"),
        (encode(scene_image(0))[:400], 400, "invalid_image", "truncated"),
        (_gif(scene_image(0)), 415, "unsupported_media_type", "GIF"),
        (encode(scene_image(0, size=16)[:8]), 422, "image_too_small", "at least 16"),
        # 25 million pixels in a few kilobytes: refused from its header
        (_bilevel_png(5000, 5000), 413, "image_too_large", "at most 16000000"),
        # 10^10 pixels: past Pillow's own bound, still our message
        (png_header(100_000, 100_000), 413, "image_too_large",
         "at most 16000000 are accepted (DISCOSEG_MAX_IMAGE_PIXELS)"),
    ],
)
def test_bad_images_are_4xx_with_a_clear_message(client, data, status, code, message) -> None:
    response = client.post("/v1/segment", files=upload(data))
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert message in error["message"]


@pytest.mark.parametrize(
    "query",
    [
        "score_threshold=1.5",
        "score_threshold=-0.1",
        "score_threshold=abc",
        "max_instances=0",
        "max_instances=101",
        "format=gif",
        "score_threshold=nan",
        "score_threshold=inf",
        "max_instances=1" + "0" * 5000,
    ],
)
def test_bad_options_are_422(client, query) -> None:
    response = client.post(f"/v1/segment?{query}", files=upload(encode(scene_image(0))))
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "validation_error"
    assert query.split("=")[0] in response.json()["error"]["message"]


def test_conflicting_form_and_query_values_are_422(client) -> None:
    response = client.post(
        "/v1/segment?score_threshold=0.1",
        files=upload(encode(scene_image(0))),
        data={"score_threshold": "0.9"},
    )
    assert response.status_code == 422
    assert "given twice" in response.json()["error"]["message"]


def test_missing_image_is_422(client) -> None:
    response = client.post("/v1/segment", data={"score_threshold": "0.5"})
    assert response.status_code == 422
    assert "image" in response.json()["error"]["message"]


def test_upload_over_the_limit_is_413(make_client) -> None:
    data = encode(scene_image(0))
    with make_client(max_upload_bytes=len(data) - 1) as small:
        response = small.post("/v1/segment", files=upload(data))
        assert response.status_code == 413
        assert response.json()["error"]["code"] == "payload_too_large"
        assert small.post("/v1/segment", files=upload(data[: len(data) // 2])).status_code == 400


def test_body_over_the_limit_is_refused_before_it_is_read(make_client) -> None:
    with make_client(max_upload_bytes=1000) as small:
        huge = b"x" * (3 << 20)
        response = small.post("/v1/segment", files=upload(huge))
        assert response.status_code == 413
        assert response.json()["error"]["message"].startswith("the request body exceeds")

        def chunks():  # no Content-Length: the limit applies while streaming
            for _ in range(3):
                yield b"y" * (1 << 20)

        streamed = small.post(
            "/v1/segment",
            content=chunks(),
            headers={"content-type": "multipart/form-data; boundary=abc"},
        )
        assert streamed.status_code == 413
        assert streamed.json()["error"]["code"] == "payload_too_large"


def test_image_over_the_pixel_limit_is_413(make_client) -> None:
    with make_client(max_image_pixels=IMAGE_SIZE * IMAGE_SIZE - 1) as small:
        response = small.post("/v1/segment", files=upload(encode(scene_image(0))))
        assert response.status_code == 413
        assert str(IMAGE_SIZE * IMAGE_SIZE - 1) in response.json()["error"]["message"]


def test_clear_messages_for_nan_and_numbers_with_too_many_digits(client) -> None:
    image = upload(encode(scene_image(0)))
    nan = client.post("/v1/segment", files=image, data={"score_threshold": "nan"})
    assert nan.json()["error"]["message"] == "score_threshold: Input should be a finite number"
    huge = client.post("/v1/segment", files=image, data={"max_instances": "9" * 5000})
    assert huge.json()["error"]["message"] == "max_instances: the number has too many digits"


@pytest.mark.parametrize("format", ["MPO", "TIFF"])
def test_multi_picture_jpeg_and_tiff_are_read_as_their_first_picture(client, format) -> None:
    first, second = scene_image(0, size=48), scene_image(1, size=32)
    buffer = io.BytesIO()
    Image.fromarray(first).save(buffer, format=format, save_all=True,
                                append_images=[Image.fromarray(second)])
    assert Image.open(io.BytesIO(buffer.getvalue())).n_frames == 2
    response = client.post("/v1/segment", files=upload(buffer.getvalue(), "photo.jpg"))
    assert response.status_code == 200, response.text
    assert (response.json()["width"], response.json()["height"]) == (48, 48)
