"""The CVAT serverless handlers (deploy/cvat/nuclio/main.py) on requests of CVAT's shapes,
forwarding to a live discoseg served by uvicorn; nuclio's context and event are stood in for."""

import base64
import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from pycocotools import mask as mask_utils

from service.main import create_app
from tests.service.conftest import API_KEY, IMAGE_SIZE, encode, scene_image
from tests.service.test_big_images import BIG, big_image
from tests.service.test_page import serve
from training.formats.cvat import serverless_mask_pixels

FUNCTIONS = Path(__file__).resolve().parents[2] / "deploy" / "cvat" / "nuclio"


def load_handlers():
    spec = importlib.util.spec_from_file_location("cvat_functions", FUNCTIONS / "main.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@dataclass
class Response:
    body: str
    headers: dict
    content_type: str
    status_code: int


@dataclass
class Logger:
    lines: list[str] = field(default_factory=list)

    def info(self, message: str) -> None:
        self.lines.append(message)


@dataclass
class Context:
    logger: Logger = field(default_factory=Logger)
    Response: type = Response


@dataclass
class Event:
    body: object


@pytest.fixture(scope="module")
def live(make_settings, runtime):
    app = create_app(make_settings(api_keys=[API_KEY]), runtime=runtime)
    with serve(app) as url:
        yield url


@pytest.fixture
def handlers(live, monkeypatch):
    monkeypatch.setenv("DISCOSEG_URL", live)
    monkeypatch.setenv("DISCOSEG_API_KEY", API_KEY)
    return load_handlers()


def image_b64(index: int) -> str:
    return base64.b64encode(encode(scene_image(index))).decode()


def test_the_detector_answers_the_instances_of_segment(handlers, live) -> None:
    request = {"image": image_b64(4), "threshold": 0.0}
    response = handlers.detector_handler(Context(), Event(json.dumps(request)))
    assert response.status_code == 200 and response.content_type == "application/json"
    shapes = json.loads(response.body)
    direct = httpx.post(f"{live}/v1/segment", files={"image": ("i", encode(scene_image(4)))},
                        data={"score_threshold": "0"},
                        headers={"Authorization": f"Bearer {API_KEY}"}).json()["instances"]
    assert len(shapes) == len(direct) > 0
    for shape, instance in zip(shapes, direct, strict=True):
        assert shape["type"] == "mask" and shape["label"] == instance["label"]
        assert float(shape["confidence"]) == pytest.approx(instance["score"])
        mask = serverless_mask_pixels(shape["mask"], IMAGE_SIZE, IMAGE_SIZE)
        expected = mask_utils.decode({"size": instance["mask"]["size"],
                                      "counts": instance["mask"]["counts"].encode()}) > 0
        assert np.array_equal(mask, expected)
        assert shape["points"] == shape["mask"][-4:]
    strict = json.loads(handlers.detector_handler(
        Context(), Event({"image": image_b64(4), "threshold": 1.0})).body)
    assert len(strict) <= len(shapes)


def test_the_interactor_answers_a_mask_consistent_with_the_clicks(handlers) -> None:
    request = {"image": image_b64(5), "pos_points": [[40, 40], [44.5, 41]],
               "neg_points": [[80, 80]], "obj_bbox": [[70, 90], [10, 15]]}
    response = handlers.interactor_handler(Context(), Event(request))
    assert response.status_code == 200, response.body
    mask = np.array(json.loads(response.body)["mask"])
    assert mask.shape == (IMAGE_SIZE, IMAGE_SIZE) and set(np.unique(mask)) <= {0, 255}
    assert mask[40, 40] == mask[41, 44] == 255 and mask[80, 80] == 0
    assert not mask[:15].any() and not mask[:, 71:].any() and not mask[91:].any()
    assert not mask[:, :10].any()


def test_images_beyond_the_working_size_get_masks_of_their_own_size(handlers) -> None:
    image = base64.b64encode(encode(big_image(5))).decode()
    height, width = BIG
    response = handlers.interactor_handler(Context(), Event({
        "image": image, "pos_points": [[200, 250]], "neg_points": [[330, 400]],
        "obj_bbox": [[150, 180], [420, 470]]}))
    assert response.status_code == 200, response.body
    mask = np.array(json.loads(response.body)["mask"])
    assert mask.shape == BIG and mask[250, 200] == 255 and mask[400, 330] == 0
    assert not mask[:180].any() and not mask[:, 420:].any()
    response = handlers.detector_handler(Context(), Event({"image": image, "threshold": 0.0}))
    shapes = json.loads(response.body)
    assert shapes
    for shape in shapes:
        x0, y0, x1, y1 = shape["points"]
        assert 0 <= x0 <= x1 < width and 0 <= y0 <= y1 < height
        assert len(shape["mask"]) == (x1 - x0 + 1) * (y1 - y0 + 1) + 4


def test_bad_requests_and_discoseg_refusals_are_400s_with_the_reason(handlers) -> None:
    context = Context()
    response = handlers.interactor_handler(context, Event({"pos_points": [[1, 1]]}))
    assert response.status_code == 400
    assert "needs a base64 'image'" in json.loads(response.body)["error"]
    response = handlers.interactor_handler(
        context, Event({"image": image_b64(1), "pos_points": [[500, 1]]}))
    assert response.status_code == 400
    assert json.loads(response.body)["error"] == (
        "discoseg answered 422: positive point 0: (500, 1) lies outside the 96x96 image"
    )
    assert len(context.logger.lines) == 2


def test_the_detector_fails_clearly_without_the_api_key(handlers, monkeypatch) -> None:
    monkeypatch.delenv("DISCOSEG_API_KEY")
    response = handlers.detector_handler(Context(), Event({"image": image_b64(1)}))
    assert response.status_code == 400
    assert "discoseg answered 401: missing API key" in json.loads(response.body)["error"]


def test_the_function_files_name_their_handlers() -> None:
    module = load_handlers()
    for kind in ("detector", "interactor"):
        spec = yaml.safe_load((FUNCTIONS / f"function-{kind}.yaml").read_text())
        assert spec["metadata"]["annotations"]["type"] == kind
        assert spec["spec"]["handler"] == f"main:{kind}_handler"
        assert callable(getattr(module, f"{kind}_handler"))
    labels = json.loads(yaml.safe_load((FUNCTIONS / "function-detector.yaml").read_text())[
        "metadata"]["annotations"]["spec"])
    assert [label["type"] for label in labels] == ["mask"] * len(labels)
