"""A job's result in every export format (GET /v1/jobs/{id}/result?format=), and jobs over
Label Studio, CVAT and CSV annotation files under the data root (Label Studio's file names lose
its upload prefix and folders: the images lie at the root)."""

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from label_studio_sdk.converter.brush import decode_rle

from service.main import create_app
from service.runtime import ModelRuntime
from tests.service.test_jobs import job_settings, scene_png, wait_finished
from training.formats import export_files, labels_from_coco, parse_labels


@pytest.fixture(scope="module")
def finished_job(tmp_path_factory, bundle_path: Path, runtime: ModelRuntime):
    settings = job_settings(tmp_path_factory.mktemp("formats"), bundle_path)
    with TestClient(create_app(settings, runtime=runtime)) as client:
        files = [("files", (f"scene{i}.png", scene_png(i), "image/png")) for i in range(2)]
        job = client.post("/v1/jobs", files=files,
                          data={"score_threshold": "0", "max_instances": "2"}).json()
        assert wait_finished(client, job["id"])["state"] == "succeeded"
        coco = client.get(f"/v1/jobs/{job['id']}/result").json()
        yield client, job["id"], coco, settings


def masks_of(coco: dict) -> list[np.ndarray]:
    labels = labels_from_coco(coco)
    return [i.mask() for image in labels.images for i in image.instances]


def test_single_file_formats(finished_job) -> None:
    client, job_id, coco, _ = finished_job
    assert len(coco["annotations"]) == 4
    expected = masks_of(coco)
    response = client.get(f"/v1/jobs/{job_id}/result", params={"format": "labelstudio"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    tasks = response.json()
    assert [t["data"]["image"] for t in tasks] == ["scene0.png", "scene1.png"]
    decoded = [decode_rle(r["value"]["rle"]).reshape(96, 96, 4)[:, :, 3] > 0
               for t in tasks for r in t["predictions"][0]["result"]]
    assert all(np.array_equal(a, b) for a, b in zip(decoded, expected, strict=True))

    response = client.get(f"/v1/jobs/{job_id}/result", params={"format": "cvat"})
    assert response.headers["content-type"] == "application/xml"
    assert 'filename="annotations.xml"' in response.headers["content-disposition"]
    back = parse_labels(response.content, "cvat")
    assert all(np.array_equal(a.mask(), b) for a, b in zip(
        [i for image in back.images for i in image.instances], expected, strict=True))

    polygons = client.get(f"/v1/jobs/{job_id}/result", params={"format": "coco-polygons"})
    assert all(isinstance(a["segmentation"], list) for a in polygons.json()["annotations"])
    assert client.get(f"/v1/jobs/{job_id}/result", params={"format": "coco"}).json() == coco


@pytest.mark.parametrize("name", ["yolo-seg", "voc-png"])
def test_folder_formats_come_as_a_zip(finished_job, name: str) -> None:
    client, job_id, coco, _ = finished_job
    response = client.get(f"/v1/jobs/{job_id}/result", params={"format": name})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/zip"
    with zipfile.ZipFile(io.BytesIO(response.content)) as archive:
        contents = {n: archive.read(n) for n in archive.namelist()}
    assert contents == export_files(labels_from_coco(coco), name)


def test_an_unknown_format_is_a_422(finished_job) -> None:
    client, job_id, _, _ = finished_job
    response = client.get(f"/v1/jobs/{job_id}/result", params={"format": "tiff"})
    assert response.status_code == 422
    assert response.json()["error"]["code"] == "validation_error"


def test_jobs_read_csv_labelstudio_and_cvat_files_under_the_data_root(finished_job) -> None:
    client, _, _, settings = finished_job
    root = settings.data_root
    (root / "in").mkdir(parents=True, exist_ok=True)
    for i in range(2):
        (root / "in" / f"{i}.png").write_bytes(scene_png(i + 5))
        (root / f"ls{i}.png").write_bytes(scene_png(i + 7))
    csv = "file,tags\nin/0.png,disc\nin/1.png,square|disc\n"
    labels = parse_labels(csv.encode(), "csv", root)
    files = {
        "csv": csv.encode(),
        "labelstudio": json.dumps([
            {"id": t, "data": {"image": f"/data/upload/1/abcdef01-ls{t}.png"}, "annotations": [{
                "result": [{"type": "choices", "original_width": 96, "original_height": 96,
                            "value": {"choices": ["disc"]}}]}]} for t in (0, 1)]).encode(),
        "cvat": export_files(labels, "cvat")["annotations.xml"],
    }
    for name, content in files.items():
        response = client.post("/v1/jobs", files={"coco": ("labels", content)},
                               data={"annotation_format": name, "hints": "tags"})
        assert response.status_code == 202, (name, response.text)
        status = wait_finished(client, response.json()["id"])
        assert status["state"] == "succeeded" and status["errors"] == [], (name, status)


@pytest.mark.parametrize(
    ("annotation_format", "content", "message"),
    [
        ("csv", b"file,tags\n../x.png,disc\n", "'../x.png' is not inside the images folder"),
        ("csv", b"file,tags\nnothere.png,disc\n", "'nothere.png' is not in the images folder"),
        ("csv", b"file,label,x0,y0,x1,y1\nls0.png,disc,1,2,NaN,4\n", "must be finite"),
        ("cvat", b"nope", "not CVAT XML"),
        ("cvat", b'<annotations><image id="0" name="ls0.png" width="200000" height="200000">'
         b'<mask label="disc" left="0" top="0" width="1" height="1" rle="0,1"/></image>'
         b"</annotations>", "200000x200000 pixels, more than the 16000000"),
        ("labelstudio", b"[" * 100_000, "coco: Invalid JSON: recursion limit"),
        ("labelstudio", b'[{"id": 1' + b"0" * 5000 + b', "data": {}}]', "too many digits"),
        ("labelstudio", b'[{"data": {"image": "ls0.png"}, "annotations": [{"result": [{"type": '
         b'"rectanglelabels", "value": {"x": NaN, "y": 0, "width": 1, "height": 1}}]}]}]',
         "coco[0].annotations[0].result[0].value.x: Input should be a finite number"),
        ("labelstudio", b'[{"data": {"image": "ls0.png"}, "annotations": [{"result": [{"type": '
         b'"choices", "original_width": "96", "value": {"choices": ["disc"]}}]}]}]',
         "coco[0].annotations[0].result[0].original_width"),
        ("labelstudio", b'{"tasks": []}', "coco: Input should be a valid"),
        ("labelstudio", b'[{"data": {"image": "ls0.png"}, "annotations": [{"result": [{"type": '
         b'"brushlabels", "original_width": 100000, "original_height": 100000, "value": '
         b'{"rle": [0], "brushlabels": ["disc"]}}]}]}]', "100000x100000 pixels"),
    ],
)
def test_bad_annotation_files_are_422_naming_the_problem(
    finished_job, annotation_format: str, content: bytes, message: str
) -> None:
    client, _, _, settings = finished_job
    response = client.post("/v1/jobs", files={"coco": ("labels", content)},
                           data={"annotation_format": annotation_format, "hints": "tags"})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert error["code"] == "invalid_annotations" and message in error["message"], error
    assert str(settings.data_root.resolve()) not in response.text
