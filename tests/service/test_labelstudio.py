"""The Label Studio ML backend at /ls: health, setup, predictions in Label Studio's formats
(brush RLE decoded by label-studio-sdk, polygons, rectangles), hints from rectangles, choices and
clicks, images fetched from the Label Studio host, webhooks, and the 4xx paths."""

import base64
import http.server
import json
import math
import threading
from collections.abc import Iterator

import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle

from tests.service.conftest import API_KEY, CLASSES, IMAGE_SIZE, encode, scene_image

BRUSH = """<View><Image name="image" value="$image"/>
<BrushLabels name="tag" toName="image"><Label value="disc"/><Label value="square"/>
<Label value="triangle"/></BrushLabels></View>"""
POLYGON = """<View><Image name="img" value="$photo"/>
<PolygonLabels name="poly" toName="img"><Label value="disc"/><Label value="square"/>
<Label value="triangle"/><Label value="dog"/></PolygonLabels>
<Choices name="kind" toName="img"><Choice value="disc"/><Choice value="square"/></Choices>
</View>"""


def data_url(index: int) -> str:
    return "data:image/png;base64," + base64.b64encode(encode(scene_image(index))).decode()


def brush_mask(result: dict) -> np.ndarray:
    height, width = result["original_height"], result["original_width"]
    return decode_rle(result["value"]["rle"]).reshape(height, width, 4)[:, :, 3] > 0


def rectangle(label: str, box: list[float]) -> dict:
    x0, y0, x1, y1 = box
    size = IMAGE_SIZE / 100
    return {"type": "rectanglelabels", "from_name": "rect", "to_name": "image",
            "original_width": IMAGE_SIZE, "original_height": IMAGE_SIZE,
            "value": {"x": x0 / size, "y": y0 / size, "width": (x1 - x0) / size,
                      "height": (y1 - y0) / size, "rectanglelabels": [label]}}


def predict(client, tasks: list[dict], config: str = BRUSH, **extra) -> dict:
    response = client.post("/ls/predict", json={
        "tasks": tasks, "label_config": config, "project": "7.1700000000", **extra,
    })
    assert response.status_code == 200, response.text
    return response.json()


def test_health_and_setup_answer_with_the_model(client) -> None:
    health = client.get("/ls/health")
    assert health.status_code == 200
    version = client.get("/v1/models").json()["model"]
    assert health.json() == {"status": "UP", "model_class": "discoseg", "model_version": version}
    setup = client.post("/ls/setup", json={"project": "7.1700000000", "schema": BRUSH,
                                            "hostname": "http://127.0.0.1:1", "access_token": "t"})
    assert setup.status_code == 200 and setup.json() == {"model_version": version}


def test_without_hints_each_task_gets_the_prediction_networks_instances(client) -> None:
    body = predict(client, [{"id": 1, "data": {"image": data_url(1)}},
                            {"id": 2, "data": {"image": data_url(2)}}])
    assert body["warnings"] == []
    assert len(body["results"]) == 2
    for predictions in body["results"]:
        (prediction,) = predictions
        assert prediction["model_version"] == body["model_version"]
        assert 0 <= prediction["score"] <= 1
        for result in prediction["result"]:
            assert result["type"] == "brushlabels" and result["from_name"] == "tag"
            assert brush_mask(result).any()


def test_rectangles_become_box_hints_and_k_samples(client) -> None:
    boxes = [("square", [5.5, 10, 60, 50.2]), ("disc", [40, 45, 90, 95])]
    task = {"id": 3, "data": {"image": data_url(6)},
            "annotations": [{"result": [rectangle(label, box) for label, box in boxes]}]}
    body = predict(client, [task])
    (predictions,) = body["results"]
    assert 1 <= len(predictions) <= 3  # at most DISCOSEG_LABEL_STUDIO_K distinct samples
    for prediction in predictions:
        labels = sorted(r["value"]["brushlabels"][0] for r in prediction["result"])
        assert labels == ["disc", "square"]
        for result in prediction["result"]:
            (box,) = [b for label, b in boxes if label == result["value"]["brushlabels"][0]]
            mask = brush_mask(result)
            x0, y0 = math.floor(box[0]), math.floor(box[1])
            window = np.zeros_like(mask)
            window[y0 : math.ceil(box[3]), x0 : math.ceil(box[2])] = True
            assert mask.any() and not (mask & ~window).any()


def test_choices_become_tags_polygons_are_in_percent_and_unknown_labels_are_reported(
    client,
) -> None:
    tasks = [{"id": i, "data": {"photo": data_url(i)}, "annotations": [{"result": [
        {"type": "choices", "from_name": "kind", "to_name": "img",
         "value": {"choices": ["disc"]}}]}]} for i in (4, 5)]
    body = predict(client, tasks, config=POLYGON)
    assert body["warnings"] == [
        "labels the model lacks (left out): dog; the model's classes: " + ", ".join(CLASSES)
    ]
    for predictions in body["results"]:
        assert 1 <= len(predictions) <= 3
        for prediction in predictions:
            kinds = {r["type"] for r in prediction["result"]}
            assert kinds == {"polygonlabels"}
            for result in prediction["result"]:
                assert result["value"]["polygonlabels"] == ["disc"]
                points = np.array(result["value"]["points"])
                assert points.shape[1] == 2 and (points >= 0).all() and (points <= 100).all()


def test_clicks_in_the_interactive_context_give_refinement_candidates(client) -> None:
    context = {"result": [
        {"type": "keypointlabels", "original_width": IMAGE_SIZE, "original_height": IMAGE_SIZE,
         "is_positive": True, "value": {"x": 40.0, "y": 40.0, "keypointlabels": ["square"]}},
        {"type": "keypointlabels", "original_width": IMAGE_SIZE, "original_height": IMAGE_SIZE,
         "is_positive": False, "value": {"x": 80.0, "y": 80.0, "keypointlabels": ["square"]}},
    ]}
    body = predict(client, [{"id": 9, "data": {"image": data_url(4)}}],
                   params={"context": context})
    (predictions,) = body["results"]
    assert 1 <= len(predictions) <= 3
    scores = [p["score"] for p in predictions]
    assert scores == sorted(scores, reverse=True)
    at = (int(0.4 * IMAGE_SIZE), int(0.4 * IMAGE_SIZE))
    away = (int(0.8 * IMAGE_SIZE), int(0.8 * IMAGE_SIZE))
    for prediction in predictions:
        (result,) = prediction["result"]
        mask = brush_mask(result)
        assert mask[at] and not mask[away]


@pytest.fixture
def label_studio_host() -> Iterator[tuple[str, list[str]]]:
    """A stand-in for Label Studio's file server: /data/upload/scene.png with a token."""
    seen: list[str] = []
    image = encode(scene_image(3))

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (the stdlib's name)
            seen.append(self.headers.get("Authorization", ""))
            if self.path != "/data/upload/scene.png" or self.headers.get(
                    "Authorization") != "Token secret-token":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "image/png")
            self.end_headers()
            self.wfile.write(image)

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def test_images_hosted_by_label_studio_are_fetched_with_the_setup_token(
    make_client, label_studio_host
) -> None:
    host, seen = label_studio_host
    tasks = [{"id": 1, "data": {"image": "/data/upload/scene.png"}},
             {"id": 2, "data": {"image": f"{host}/data/upload/missing.png"}},
             {"id": 3, "data": {"image": "http://example.invalid/x.png"}},
             {"id": 4, "data": {"image": "data:image/png;base64,@@@"}},
             {"id": 5, "data": {}}]
    with make_client(label_studio_url=host) as client:
        client.post("/ls/setup", json={"project": "11.1", "schema": BRUSH, "hostname": host,
                                       "access_token": "secret-token"})
        body = predict(client, tasks, project="11.1")
    assert len(body["results"][0]) == 1 and body["results"][1:] == [[], [], [], []]
    assert seen == ["Token secret-token", "Token secret-token"]
    warnings = body["warnings"]
    assert warnings[0].startswith("task 2: cannot fetch") and "404" in warnings[0]
    assert warnings[1].startswith("task 3: refusing to fetch http://example.invalid/x.png")
    assert warnings[2].startswith("task 4: the data: image URL is not base64")
    assert warnings[3] == "task 5: the task has no image in data.image"


@pytest.mark.parametrize("configured", [None, "http://127.0.0.1:1"])
def test_setup_never_points_the_backend_at_the_host_it_names(
    make_client, label_studio_host, configured
) -> None:
    host, seen = label_studio_host
    tasks = [{"id": 1, "data": {"image": "/data/upload/scene.png"}},
             {"id": 2, "data": {"image": f"{host}/data/upload/scene.png"}}]
    with make_client(label_studio_url=configured) as client:
        setup = client.post("/ls/setup", json={"project": "12.1", "schema": BRUSH,
                                                "hostname": host, "access_token": "secret-token"})
        assert setup.status_code == 200, setup.text
        body = predict(client, tasks, project="12.1")
    assert body["results"] == [[], []] and seen == []
    if configured is None:
        assert all("Label Studio's URL is unknown" in w for w in body["warnings"])
    else:
        assert body["warnings"][0].startswith("task 1: cannot fetch http://127.0.0.1:1/data/")
        assert body["warnings"][1].startswith(f"task 2: refusing to fetch {host}/data/")


def test_without_a_known_host_a_relative_image_is_a_warning(client) -> None:
    body = predict(client, [{"id": 1, "data": {"image": "/data/upload/x.png"}}],
                   project="99.1")
    assert body["results"] == [[]]
    assert "Label Studio's URL is unknown" in body["warnings"][0]


def test_webhook_records_annotation_events_and_ignores_others(make_client, tmp_path) -> None:
    events = tmp_path / "events.jsonl"
    with make_client(label_studio_events=events) as client:
        event = {"action": "ANNOTATION_CREATED", "project": {"id": 7},
                 "annotation": {"id": 1, "result": []}}
        response = client.post("/ls/webhook", json=event)
        assert response.status_code == 200
        assert response.json() == {"status": "recorded", "action": "ANNOTATION_CREATED"}
        response = client.post("/ls/webhook", json={"action": "PROJECT_UPDATED"})
        assert response.status_code == 200 and response.json()["status"] == "ignored"
    (line,) = events.read_text().splitlines()
    recorded = json.loads(line)
    assert recorded["annotation"] == event["annotation"] and recorded["received_at"] > 0


@pytest.mark.parametrize(
    ("body", "code", "message"),
    [
        ({"tasks": [], "label_config": "<View"}, "invalid_label_config", "not XML"),
        ({"tasks": [], "label_config": "<View><Text name='t' value='$t'/></View>"},
         "invalid_label_config", "no <Image> tag"),
        ({"tasks": [], "label_config": "<View><Image name='i' value='$i'/></View>"},
         "invalid_label_config", "has none of BrushLabels"),
        ({"label_config": BRUSH}, "validation_error", "tasks"),
        ({"tasks": "x", "label_config": BRUSH}, "validation_error", "body.tasks: Input should"),
        ({"tasks": [{"id": "1", "data": {}}], "label_config": BRUSH}, "validation_error",
         "body.tasks[0].id"),
        ({"tasks": [{"data": {}, "annotations": [{"result": [
            {"type": "rectanglelabels", "value": {"x": "1", "y": 2, "width": 3, "height": 4}}]}]}],
          "label_config": BRUSH}, "validation_error",
         "body.tasks[0].annotations[0].result[0].value.x"),
        ({"tasks": [{"data": {}, "annotations": [{"result": [
            {"type": "brushlabels", "value": {"rle": [256]}}]}]}], "label_config": BRUSH},
         "validation_error", "value.rle[0]: Input should be less than or equal to 255"),
        ({"tasks": [], "label_config": 5}, "validation_error", "body.label_config"),
    ],
)
def test_bad_predict_requests_are_4xx(client, body: dict, code: str, message: str) -> None:
    response = client.post("/ls/predict", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == code
    assert message in response.json()["error"]["message"]


@pytest.mark.parametrize(
    ("path", "content", "message"),
    [
        ("/ls/predict", b'{"tasks": [], "label_config": ', "body: Invalid JSON"),
        ("/ls/predict", b"[" * 100_000, "recursion limit"),
        ("/ls/predict", b'{"tasks": [{"id": 1' + b"0" * 5000 + b', "data": {}}]}',
         "too many digits"),
        ("/ls/predict", b'{"tasks": [], "label_config": "", "params": {"context": {"result": '
         b'[{"type": "keypointlabels", "value": {"x": NaN, "y": 1}}]}}}',
         "body.params.context.result[0].value.x: Input should be a finite number"),
        ("/ls/setup", b'{"project": 7}', "body.project: Input should be a valid string"),
        ("/ls/setup", b'{"hostname": "' + b"h" * 3000 + b'"}', "body.hostname"),
        ("/ls/webhook", b'{"action": ["ANNOTATION_CREATED"]}', "body.action"),
        ("/ls/webhook", b'{"action": "ANNOTATION_CREATED", "task": {"x": [Infinity]}}',
         "body: NaN and infinity are not JSON numbers"),
    ],
)
def test_label_studio_bodies_are_validated(client, path: str, content: bytes, message: str) -> None:
    response = client.post(path, content=content, headers={"Content-Type": "application/json"})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "validation_error" and message in error["message"], error


def test_results_of_other_kinds_carry_no_labels(client) -> None:
    """A text area or a result whose type names another value field is no hint (and no 500)."""
    task = {"id": 1, "data": {"image": data_url(3)}, "annotations": [{"result": [
        {"type": "textarea", "value": {"text": ["a note"]}},
        {"type": "x", "value": {"x": 5.0, "y": 5.0}},
    ]}]}
    body = predict(client, [task])
    assert body["warnings"] == [] and len(body["results"][0]) == 1


def test_openapi_documents_the_label_studio_bodies(client) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    predict_body = paths["/ls/predict"]["post"]["requestBody"]["content"]["application/json"]
    schema = predict_body["schema"]
    assert set(schema["required"]) == {"tasks", "label_config"}
    assert "$ref" not in json.dumps(schema)
    assert "schema" in paths["/ls/setup"]["post"]["requestBody"]["content"]["application/json"][
        "schema"]["properties"]


def test_with_api_keys_label_studio_authenticates_with_basic_auth(make_client) -> None:
    with make_client(api_keys=[API_KEY]) as client:
        assert client.get("/ls/health").status_code == 401
        basic = base64.b64encode(f"labelstudio:{API_KEY}".encode()).decode()
        assert client.get("/ls/health", headers={"Authorization": f"Basic {basic}"}
                          ).status_code == 200
        wrong = base64.b64encode(b"labelstudio:wrong-key-0123456789").decode()
        assert client.get("/ls/health", headers={"Authorization": f"Basic {wrong}"}
                          ).status_code == 401
        assert client.get("/ls/health", headers={"Authorization": f"Bearer {API_KEY}"}
                          ).status_code == 200
        no_colon = base64.b64encode(API_KEY.encode()).decode()
        for header in ("Basic !!!", f"Basic {no_colon}", f"Token {API_KEY}"):
            response = client.get("/ls/health", headers={"Authorization": header})
            assert response.status_code == 401
            assert response.json()["error"]["code"] == "unauthorized"
        # Checked before the body is read: an unauthenticated predict gets no validation error.
        response = client.post("/ls/predict", content=b"{not json")
        assert response.status_code == 401
