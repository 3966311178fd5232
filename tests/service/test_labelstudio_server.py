"""End to end with a real Label Studio (the `label-studio` package in `.venv-ls`, its SQLite
default in a temporary data dir, on 127.0.0.1): a brush-label project, an uploaded image and a
task with rectangles, discoseg connected as its ML backend by URL (Basic auth with an API key),
batch predictions retrieved, and the predictions read back from Label Studio's API.

Label Studio's pins conflict with ours, so it lives in its own environment: `make
test-integrations` creates `.venv-ls` and runs this test (about a minute of Label Studio
start-up on two cores); without it the test is skipped.
"""

import contextlib
import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from label_studio_sdk.converter.brush import decode_rle

from service.main import create_app
from tests.service.conftest import API_KEY, IMAGE_SIZE, encode, scene_image
from tests.service.test_page import serve

pytestmark = pytest.mark.integration

LABEL_STUDIO = Path(__file__).resolve().parents[2] / ".venv-ls" / "bin" / "label-studio"
TOKEN = "0123456789abcdef0123456789abcdef01234567"
START_TIMEOUT_S = 600
CONFIG = """<View>
  <Image name="image" value="$image"/>
  <BrushLabels name="tag" toName="image">
    <Label value="disc"/><Label value="square"/><Label value="triangle"/><Label value="cat"/>
  </BrushLabels>
  <RectangleLabels name="rect" toName="image"><Label value="square"/></RectangleLabels>
</View>"""


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def label_studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if not LABEL_STUDIO.exists():
        pytest.skip("no .venv-ls (make test-integrations creates it): Label Studio not here")
    data = tmp_path_factory.mktemp("label-studio")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    environment = {
        **os.environ,
        "LABEL_STUDIO_BASE_DATA_DIR": str(data),
        "LABEL_STUDIO_USERNAME": "ci@example.com",
        "LABEL_STUDIO_PASSWORD": "ci-password-0123",
        "LABEL_STUDIO_USER_TOKEN": TOKEN,
        "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
        "LABEL_STUDIO_HOST": url,
        # The ML backend and the images are on this machine's loopback.
        "ML_BLOCK_LOCAL_IP": "false",
        "SSRF_PROTECTION_ENABLED": "false",
    }
    with (data / "label-studio.log").open("wb") as log:
        process = subprocess.Popen(
            [str(LABEL_STUDIO), "start", "--no-browser", "--host", "127.0.0.1", "--port",
             str(port), "--data-dir", str(data)],
            env=environment, stdout=log, stderr=log, start_new_session=True,
        )
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            try:
                if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"Label Studio did not start: {(data / 'label-studio.log').read_text()[-3000:]}"
                )
            time.sleep(1)
        yield url
    finally:
        stop_group(process)


def stop_group(process: subprocess.Popen) -> None:
    """Stops the process and its children; one that has already exited is left as it is."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()


def test_label_studio_gets_discoseg_predictions(label_studio, make_settings, runtime) -> None:
    api = httpx.Client(base_url=label_studio, headers={"Authorization": f"Token {TOKEN}"},
                       timeout=120)
    project = api.post("/api/projects", json={"title": "discoseg e2e", "label_config": CONFIG})
    assert project.status_code == 201, project.text
    project_id = project.json()["id"]
    upload = api.post(f"/api/projects/{project_id}/import",
                      files={"file": ("scene.png", encode(scene_image(6)), "image/png")})
    assert upload.status_code == 201, upload.text
    (uploaded,) = api.get("/api/tasks", params={"project": project_id}).json()["tasks"]
    image_url = uploaded["data"]["image"]
    assert image_url.startswith("/data/upload/")
    box = {"x": 5.0, "y": 10.0, "width": 55.0, "height": 45.0, "rectanglelabels": ["square"]}
    hinted = api.post(f"/api/projects/{project_id}/import", json=[{
        "data": {"image": image_url},
        "annotations": [{"result": [{"from_name": "rect", "to_name": "image",
                                     "type": "rectanglelabels", "value": box,
                                     "original_width": IMAGE_SIZE,
                                     "original_height": IMAGE_SIZE}]}],
    }])
    assert hinted.status_code == 201, hinted.text

    app = create_app(make_settings(api_keys=[API_KEY], label_studio_k=3,
                                   label_studio_url=label_studio), runtime=runtime)
    with serve(app) as discoseg:
        backend = api.post("/api/ml", json={
            "project": project_id, "url": f"{discoseg}/ls", "title": "discoseg",
            "auth_method": "BASIC_AUTH", "basic_auth_user": "label-studio",
            "basic_auth_pass": API_KEY,
        })
        assert backend.status_code == 201, backend.text
        assert backend.json()["readable_state"] == "Connected"
        assert backend.json()["model_version"] == runtime.version
        action = api.post("/api/dm/actions",
                          params={"id": "retrieve_tasks_predictions", "project": project_id},
                          json={"selectedItems": {"all": True, "excluded": []}})
        assert action.status_code == 200, action.text

    predictions = api.get("/api/predictions", params={"project": project_id}).json()
    by_task: dict[int, list[dict]] = {}
    for prediction in predictions:
        by_task.setdefault(prediction["task"], []).append(prediction)
    tasks = sorted(by_task)
    assert len(tasks) == 2, predictions
    # The uploaded task has no hints: one prediction of the prediction network.
    (plain,) = by_task[tasks[0]]
    assert plain["model_version"] == runtime.version
    # The task with a rectangle: at most three distinct samples, each one square inside the
    # rectangle.
    hinted_predictions = by_task[tasks[1]]
    assert 1 <= len(hinted_predictions) <= 3
    masks = {tuple(p["result"][0]["value"]["rle"]) for p in hinted_predictions}
    assert len(masks) == len(hinted_predictions)
    for prediction in hinted_predictions:
        assert prediction["model_version"] == runtime.version and 0 < prediction["score"] <= 1
        (result,) = prediction["result"]
        assert result["type"] == "brushlabels"
        assert result["value"]["brushlabels"] == ["square"]
        mask = decode_rle(result["value"]["rle"]).reshape(IMAGE_SIZE, IMAGE_SIZE, 4)[..., 3] > 0
        rows, columns = np.nonzero(mask)
        scale = IMAGE_SIZE / 100
        assert columns.min() >= int(5 * scale) and columns.max() < np.ceil(60 * scale)
        assert rows.min() >= int(10 * scale) and rows.max() < np.ceil(55 * scale)
