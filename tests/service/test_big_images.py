"""Images larger than the model's working size: every route works on the working copy and
answers at the image's own size, with the hints obeyed there; a 16 Mpx photo costs at most
2 GB above the process's baseline."""

import base64
import json
import math
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient
from pycocotools import mask as mask_utils

from service.main import create_app
from tests.service.conftest import encode, scene_image, upload
from tests.service.test_jobs import job_settings, wait_finished
from tests.service.test_labelstudio import BRUSH, brush_mask, predict

REPO = Path(__file__).resolve().parents[2]
# Wider and taller than the tiny preset's working size (256), not square.
BIG = (600, 520)  # (H, W)


def big_image(index: int = 4, size: tuple[int, int] = BIG) -> np.ndarray:
    """A synthetic scene resampled to `size` (H, W)."""
    return cv2.resize(scene_image(index), size[::-1], interpolation=cv2.INTER_LINEAR)


def _decode(rle: dict) -> np.ndarray:
    return mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()}).astype(bool)


def _window(box: list[float], size: tuple[int, int] = BIG) -> np.ndarray:
    window = np.zeros(size, dtype=bool)
    x0, y0, x1, y1 = box
    window[math.floor(y0) : math.ceil(y1), math.floor(x0) : math.ceil(x1)] = True
    return window


def _tight_box(mask: np.ndarray) -> list[float]:
    rows, columns = np.nonzero(mask)
    return [columns.min(), rows.min(), columns.max() + 1.0, rows.max() + 1.0]


def _check_instance(instance: dict) -> np.ndarray:
    mask = _decode(instance["mask"])
    assert mask.shape == BIG and mask.any()
    assert instance["bbox"] == _tight_box(mask)
    return mask


def test_pseudo_labels_of_boxes_come_back_at_full_size_inside_each_box(client) -> None:
    boxes = [{"label": "square", "bbox": [30.5, 60, 350, 300.2]},
             {"label": "disc", "bbox": [240, 270, 515, 590]}]
    response = client.post("/v1/pseudo-labels", files=upload(encode(big_image(6))),
                           data={"boxes": json.dumps(boxes), "k": "3", "seed": "2"})
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["height"], body["width"]) == BIG
    for sample in body["samples"]:
        assert [i["label"] for i in sample["instances"]] == ["square", "disc"]
        for instance, box in zip(sample["instances"], boxes, strict=True):
            mask = _check_instance(instance)
            assert not (mask & ~_window(box["bbox"])).any()


def test_pseudo_labels_of_tags_come_back_at_full_size(client) -> None:
    response = client.post("/v1/pseudo-labels", files=upload(encode(big_image(5))),
                           data={"tags": '["square", "triangle"]', "k": "2", "seed": "1"})
    assert response.status_code == 200, response.text
    for sample in response.json()["samples"]:
        assert sorted(i["label"] for i in sample["instances"]) == ["square", "triangle"]
        for instance in sample["instances"]:
            _check_instance(instance)


def test_refine_candidates_hold_the_clicks_at_full_size(client) -> None:
    positive, box = [[200.5, 250.5], [204, 251]], [150, 180, 420, 470]
    current = np.zeros(BIG, dtype=np.uint8)
    current[200:300, 180:260] = 1
    rle = mask_utils.encode(np.asfortranarray(current))
    form = {"positive": json.dumps(positive), "negative": json.dumps([[330, 400]]),
            "box": json.dumps(box), "k": "3", "seed": "0",
            "mask": json.dumps({"size": rle["size"], "counts": rle["counts"].decode()})}
    response = client.post("/v1/refine", files=upload(encode(big_image(4))), data=form)
    assert response.status_code == 200, response.text
    for candidate in response.json()["candidates"]:
        mask = _check_instance(candidate)
        assert all(mask[math.floor(y), math.floor(x)] for x, y in positive)
        assert not mask[400, 330]
        assert not (mask & ~_window(box)).any()

    # a click one pixel from a positive one, on the same pixel of the working copy
    form |= {"negative": json.dumps([[205, 251]])}
    response = client.post("/v1/refine", files=upload(encode(big_image(4))), data=form)
    assert response.status_code == 422, response.text
    assert "working resolution" in response.json()["error"]["message"]


def test_segment_answers_at_full_size(client) -> None:
    response = client.post("/v1/segment?score_threshold=0", files=upload(encode(big_image(3))))
    assert response.status_code == 200, response.text
    instances = response.json()["instances"]
    assert instances
    for instance in instances:
        _check_instance(instance)


def test_label_studio_predictions_have_the_images_size(client) -> None:
    image = "data:image/png;base64," + base64.b64encode(encode(big_image(6))).decode()
    box = [30, 60, 350, 300]
    height, width = BIG
    rectangle = {"type": "rectanglelabels", "from_name": "rect", "to_name": "image",
                 "original_width": width, "original_height": height,
                 "value": {"x": 100 * box[0] / width, "y": 100 * box[1] / height,
                           "width": 100 * (box[2] - box[0]) / width,
                           "height": 100 * (box[3] - box[1]) / height,
                           "rectanglelabels": ["square"]}}
    choices = {"type": "choices", "from_name": "kind", "to_name": "image",
               "value": {"choices": ["disc"]}}
    tasks = [{"id": 1, "data": {"image": image}, "annotations": [{"result": [choices]}]},
             {"id": 2, "data": {"image": image}, "annotations": [{"result": [rectangle]}]}]
    body = predict(client, tasks, BRUSH)
    assert body["warnings"] == []
    tagged, boxed = body["results"]
    for prediction in [*tagged, *boxed]:
        assert prediction["result"]  # a tag's every instance, a box's one
        for result in prediction["result"]:
            assert (result["original_height"], result["original_width"]) == BIG
            assert brush_mask(result).shape == BIG and brush_mask(result).any()
    for prediction in boxed:
        assert len(prediction["result"]) == 1
        assert not (brush_mask(prediction["result"][0]) & ~_window(box)).any()


def test_job_annotations_have_the_images_size(tmp_path, bundle_path, runtime) -> None:
    settings = job_settings(tmp_path, bundle_path)
    files = [("files", ("big.png", encode(big_image(6)), "image/png"))]
    box = [30, 60, 350, 300]
    annotations = json.dumps({"big.png": {"boxes": [{"label": "square", "bbox": box}]}})
    with TestClient(create_app(settings, runtime=runtime)) as client:
        response = client.post("/v1/jobs", files=files,
                               data={"hints": "boxes", "annotations": annotations})
        assert response.status_code == 202, response.text
        status = wait_finished(client, response.json()["id"])
        assert status["state"] == "succeeded" and status["errors"] == [], status
        result = client.get(status["result"]).json()
    (image,) = result["images"]
    assert (image["height"], image["width"]) == BIG
    (annotation,) = result["annotations"]
    mask = _decode(annotation["segmentation"])
    assert mask.shape == BIG and mask.sum() == annotation["area"] > 0
    assert not (mask & ~_window(box)).any()


_MEASURE = textwrap.dedent("""
    import json, resource, sys

    import cv2
    from fastapi.testclient import TestClient

    from service.core.config import Settings
    from service.main import create_app
    from tests.service.conftest import encode, scene_image, upload

    bundle, side = sys.argv[1], int(sys.argv[2])
    photo = encode(cv2.resize(scene_image(6), (side, side), interpolation=cv2.INTER_LINEAR), "JPEG")
    small = encode(scene_image(6), "JPEG")

    def forms(side):
        boxes = [{"label": "disc", "bbox": [0, 0, side / 2, side / 2]},
                 {"label": "square", "bbox": [side / 3, side / 3, side, side]}]
        return [{"tags": '["disc", "square"]', "k": "4", "seed": "0"},
                {"boxes": json.dumps(boxes), "k": "4", "seed": "0"}]

    app = create_app(Settings(model_path=bundle, device="cpu", api_keys=[]))
    with TestClient(app) as client:
        for form in forms(96):  # warm-up at the scene's own size
            response = client.post("/v1/pseudo-labels", files=upload(small), data=form)
            assert response.status_code == 200, response.text
        baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        sizes = []
        for form in forms(side):
            response = client.post(
                "/v1/pseudo-labels", files=upload(photo, "photo.jpg", "image/jpeg"), data=form
            )
            assert response.status_code == 200, response.text
            sizes += [i["mask"]["size"] for s in response.json()["samples"] for i in s["instances"]]
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"above_baseline_kib": peak - baseline, "mask_sizes": sizes}))
""")


@pytest.mark.slow
def test_a_16_megapixel_photo_costs_at_most_2_gb_above_baseline(bundle_path) -> None:
    side = 4000
    run = subprocess.run(
        [sys.executable, "-c", _MEASURE, str(bundle_path), str(side)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    measured = json.loads(run.stdout.strip().splitlines()[-1])
    assert measured["mask_sizes"] and all(s == [side, side] for s in measured["mask_sizes"])
    above = measured["above_baseline_kib"] * 1024
    assert above <= 2 * 10**9, f"{above / 1e9:.2f} GB above the baseline"
