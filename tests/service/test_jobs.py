"""Batch jobs through the API with the embedded backend (no Redis), input staging and its
refusals, result lifetime, restart safety, and the deployment files. The Celery backend with
real workers is tested in test_jobs_celery.py, which shares the helpers here."""

import io
import json
import logging
import time
import zipfile
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from pycocotools import mask as mask_utils

from service.core.config import Settings
from service.jobs.chunks import MAX_CHUNK_STARTS, run_chunk
from service.jobs.embedded import EmbeddedBackend
from service.jobs.record import JobRecord, JobSpec, JobState, LabelOptions
from service.jobs.staging import StagingLimits, Upload, stage_uploads
from service.main import create_app
from service.runtime import ModelRuntime
from tests.service.conftest import CLASSES, encode, scene_image, zip_of

REPO = Path(__file__).resolve().parents[2]


def scene_png(seed: int) -> bytes:
    return encode(scene_image(seed))


def job_settings(tmp_path: Path, bundle: Path, **overrides) -> Settings:
    values = {"model_path": bundle, "device": "cpu", "job_store": tmp_path / "jobs",
              "data_root": tmp_path / "data", "job_chunk_size": 2, **overrides}
    return Settings(**values)


def wait_finished(client: TestClient, job_id: str, timeout: float = 60.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.get(f"/v1/jobs/{job_id}").json()
        if status["state"] not in ("queued", "running"):
            return status
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish in {timeout} s: {status}")


def assert_error(response, status: int, code: str | None = None) -> None:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"code", "message"} and error["message"]
    if code is not None:
        assert error["code"] == code


def check_coco_result(result: dict, expected_images: set[str]) -> None:
    """Images as expected, categories of the model, and every annotation's RLE mask decodes
    to a non-empty mask of its image's size."""
    assert {image["file_name"] for image in result["images"]} == expected_images
    assert [c["name"] for c in result["categories"]] == CLASSES
    sizes = {image["id"]: (image["height"], image["width"]) for image in result["images"]}
    ids = [a["id"] for a in result["annotations"]]
    assert len(ids) == len(set(ids))
    for annotation in result["annotations"]:
        mask = mask_utils.decode({"size": annotation["segmentation"]["size"],
                                  "counts": annotation["segmentation"]["counts"].encode()})
        assert mask.shape == sizes[annotation["image_id"]]
        assert mask.sum() == annotation["area"] > 0
        assert 0.0 <= annotation["score"] <= 1.0
        assert 1 <= annotation["category_id"] <= len(CLASSES)


def write_coco_under(data_root: Path, entries: list[tuple[str, list[int]]]) -> bytes:
    """Render images at data_root/<file name> and a COCO JSON whose annotations carry the
    given category ids (1: disc, 2: square, 3: triangle, 4: star, not in the model)."""
    images, annotations = [], []
    for image_id, (file_name, categories) in enumerate(entries, start=1):
        path = data_root / file_name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(scene_png(image_id))
        images.append({"id": image_id, "file_name": file_name, "width": 96, "height": 96})
        for category in categories:
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": category, "bbox": [10, 10, 40, 40]})
    categories = [{"id": i, "name": n} for i, n in enumerate([*CLASSES, "star"], start=1)]
    return json.dumps({"images": images, "annotations": annotations,
                       "categories": categories}).encode()


@pytest.fixture
def embedded(tmp_path: Path, bundle_path: Path, runtime: ModelRuntime):
    settings = job_settings(tmp_path, bundle_path)
    with TestClient(create_app(settings, runtime=runtime)) as client:
        yield client, settings


def test_upload_job_completes_with_coco_result_and_bad_image_recorded(embedded) -> None:
    client, settings = embedded
    files = [("files", (f"scene{i}.png", scene_png(i), "image/png")) for i in range(2)]
    files.append(("files", ("broken.png", b"not an image at all", "image/png")))
    response = client.post("/v1/jobs", files=files,
                           data={"score_threshold": "0", "max_instances": "3"})
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["state"] == "queued" and job["progress"] == {"done": 0, "total": 3}
    assert response.headers["location"].endswith(f"/v1/jobs/{job['id']}")

    status = wait_finished(client, job["id"])
    assert status["state"] == "succeeded"
    assert status["progress"] == {"done": 3, "total": 3}
    assert [(e["index"], e["file_name"]) for e in status["errors"]] == [(2, "broken.png")]
    assert "not an image" in status["errors"][0]["error"]

    result = client.get(f"/v1/jobs/{job['id']}/result")
    assert result.status_code == 200
    check_coco_result(result.json(), {"scene0.png", "scene1.png"})
    assert len(result.json()["annotations"]) == 6  # 3 instances per image at threshold 0
    assert result.json()["errors"][0]["file_name"] == "broken.png"


def test_zip_job_with_tag_hints(embedded) -> None:
    client, _ = embedded
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zipped:
        zipped.writestr("batch/a.png", scene_png(1))
        zipped.writestr("batch/b.png", scene_png(2))
        zipped.writestr("batch/README.txt", "not an image: skipped")
        zipped.writestr("__MACOSX/batch/._a.png", b"junk")
    hints = {"batch/a.png": {"tags": ["disc"]}, "batch/b.png": {"tags": ["square", "disc"]}}
    response = client.post(
        "/v1/jobs", files=[("files", ("batch.zip", archive.getvalue(), "application/zip"))],
        data={"hints": "tags", "annotations": json.dumps(hints)},
    )
    assert response.status_code == 202, response.text
    status = wait_finished(client, response.json()["id"])
    assert status["state"] == "succeeded" and status["errors"] == []
    assert status["progress"] == {"done": 2, "total": 2}
    result = client.get(status["result"]).json()
    check_coco_result(result, {"batch/a.png", "batch/b.png"})
    by_image = {}
    for annotation in result["annotations"]:
        by_image.setdefault(annotation["image_id"], set()).add(annotation["category_id"])
    assert by_image == {1: {1}, 2: {1, 2}}  # exactly the tagged classes


def test_coco_job_under_data_root_with_tags(embedded) -> None:
    client, settings = embedded
    coco = write_coco_under(settings.data_root, [
        ("sub/one.png", [1, 1]), ("two.png", [2, 3]),
        ("star.png", [4]),  # a class the model does not know: that image fails
        ("missing.png", [1]),  # listed, but no such file: that image fails
    ])
    (settings.data_root / "missing.png").unlink()
    response = client.post("/v1/jobs", files={"coco": ("train.json", coco, "application/json")},
                           data={"hints": "tags"})
    assert response.status_code == 202, response.text
    status = wait_finished(client, response.json()["id"])
    assert status["state"] == "succeeded"
    assert status["progress"] == {"done": 4, "total": 4}
    failed = {e["file_name"]: e["error"] for e in status["errors"]}
    assert set(failed) == {"star.png", "missing.png"}
    assert "star" in failed["star.png"]
    result = client.get(status["result"]).json()
    check_coco_result(result, {"sub/one.png", "two.png"})
    assert {a["image_id"] for a in result["annotations"]} == {1, 2}  # the COCO image ids


@pytest.mark.parametrize("file_name", ["/etc/hostname", "../outside.png", "sub/../../x.png",
                                       "link.png", "C:\\data\\x.png"])
def test_coco_paths_outside_data_root_are_refused(embedded, tmp_path: Path, file_name) -> None:
    client, settings = embedded
    settings.data_root.mkdir(parents=True, exist_ok=True)
    (tmp_path / "outside.png").write_bytes(scene_png(0))
    (settings.data_root / "link.png").symlink_to(tmp_path / "outside.png")
    coco = json.dumps({"images": [{"id": 1, "file_name": file_name}]}).encode()
    response = client.post("/v1/jobs", files={"coco": ("c.json", coco, "application/json")})
    assert_error(response, 400, "path_outside_data_root")
    assert not any(settings.job_store.iterdir())  # nothing staged is left behind


def test_bad_job_requests_are_4xx_json(tmp_path, bundle_path, runtime) -> None:
    settings = job_settings(tmp_path, bundle_path, max_files_per_job=2, max_upload_bytes=50_000)
    png = scene_png(0)
    with TestClient(create_app(settings, runtime=runtime)) as client:
        def post(files=None, data=None):
            return client.post("/v1/jobs", files=files, data=data)

        assert_error(post(data={"hints": "none"}), 422)
        both = [("files", ("a.png", png, "image/png")), ("coco", ("c.json", b"{}", "text/json"))]
        assert_error(post(files=both), 422)
        assert_error(post(files={"coco": ("c.json", b"{not json", "text/json")}), 422,
                     "invalid_coco")
        assert_error(post(files={"coco": ("c.json", b'{"images": []}', "text/json")}), 422,
                     "invalid_coco")
        assert_error(post(files=[("files", ("x.zip", b"PK but no zip", "application/zip"))]),
                     400, "invalid_zip")
        three = [("files", (f"{i}.png", png, "image/png")) for i in range(3)]
        assert_error(post(files=three), 413, "too_many_files")
        big = [("files", ("big.png", b"\0" * 50_001, "image/png"))]
        assert_error(post(files=big), 413, "file_too_large")
        one = [("files", ("a.png", png, "image/png"))]
        assert_error(post(files=one, data={"annotations": "[1, 2"}), 422, "invalid_annotations")
        assert_error(post(files=one, data={"hints": "masks"}), 422)
        assert_error(post(files=one, data={"score_threshold": "2"}), 422)
        unknown = "0" * 32
        for response in (client.get(f"/v1/jobs/{unknown}"),
                         client.get(f"/v1/jobs/{unknown}/result"),
                         client.delete(f"/v1/jobs/{unknown}"),
                         client.get("/v1/jobs/..%2F..%2Fetc"),
                         client.get("/v1/jobs/not-a-job")):
            assert_error(response, 404)
        assert not any(settings.job_store.iterdir())


def test_cancel_stops_pending_chunks(tmp_path, bundle_path, runtime) -> None:
    settings = job_settings(tmp_path, bundle_path, job_chunk_size=1)
    files = [("files", (f"{i}.png", scene_png(i), "image/png")) for i in range(5)]
    with TestClient(create_app(settings, runtime=runtime)) as client:
        job = client.post("/v1/jobs", files=files).json()
        cancelled = client.delete(f"/v1/jobs/{job['id']}")
        assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
        jobs = client.app.state.jobs
        deadline = time.monotonic() + 30
        while jobs.queue_depth() and time.monotonic() < deadline:
            time.sleep(0.05)
        jobs.stop()  # waits for a chunk that was already running
        status = client.get(f"/v1/jobs/{job['id']}").json()
        assert status["state"] == "cancelled"
        assert status["progress"]["done"] <= 1  # at most the chunk already running
        assert len(jobs.store.outcomes(job["id"])) == status["progress"]["done"]
        assert_error(client.get(f"/v1/jobs/{job['id']}/result"), 409, "job_not_finished")


def test_fetched_result_expires_and_finished_job_delete(tmp_path, bundle_path, runtime):
    settings = job_settings(tmp_path, bundle_path, job_fetched_ttl_s=1)
    one = [("files", ("a.png", scene_png(3), "image/png"))]
    with TestClient(create_app(settings, runtime=runtime)) as client:
        first = client.post("/v1/jobs", files=one, data={"hints": "none"}).json()
        second = client.post("/v1/jobs", files=one).json()
        wait_finished(client, first["id"])
        wait_finished(client, second["id"])
        assert client.get(f"/v1/jobs/{first['id']}/result").status_code == 200
        status = client.get(f"/v1/jobs/{first['id']}").json()
        assert status["fetched_at"] is not None
        assert status["expires_at"] <= status["fetched_at"] + 1.01
        assert client.get(f"/v1/jobs/{first['id']}/result").status_code == 200  # again: fine
        time.sleep(1.2)
        assert_error(client.get(f"/v1/jobs/{first['id']}/result"), 404)
        client.app.state.jobs.sweep()
        assert not (settings.job_store / first["id"]).exists()
        # An unfetched result stays until its TTL; DELETE of a finished job removes it.
        assert client.get(f"/v1/jobs/{second['id']}").status_code == 200
        assert client.delete(f"/v1/jobs/{second['id']}").status_code == 204
        assert_error(client.get(f"/v1/jobs/{second['id']}"), 404)
        assert not (settings.job_store / second["id"]).exists()


def test_embedded_backend_resumes_unfinished_jobs_after_restart(
    tmp_path, bundle_path, runtime
) -> None:
    settings = job_settings(tmp_path, bundle_path, job_chunk_size=1)
    first = EmbeddedBackend(settings, lambda: runtime)
    first.start()
    job_id = first.new_job_id()
    uploads = [Upload(f"{i}.png", io.BytesIO(scene_png(i))) for i in range(4)]
    items = stage_uploads(first.store.input_dir(job_id), uploads, hints_mode="none",
                          image_hints={}, limits=StagingLimits(10, 10**6, 10**7))
    first.submit(job_id, items, LabelOptions())
    first.stop()  # the process "dies": running chunk finishes, queued chunks are dropped
    interrupted = first.states.get(job_id)
    assert interrupted.done < 4

    second = EmbeddedBackend(settings, lambda: runtime)
    second.start()
    try:
        deadline = time.monotonic() + 60
        while second.states.get(job_id).state == "running" and time.monotonic() < deadline:
            time.sleep(0.05)
        record = second.states.get(job_id)
        assert record.state == "succeeded" and record.done == record.total == 4
        assert sorted(second.store.outcomes(job_id)) == [0, 1, 2, 3]
    finally:
        second.stop()


def test_readyz_pings_the_job_backend_and_metrics_show_queue_depth(embedded) -> None:
    client, _ = embedded
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"]["jobs"] == "ok"
    assert "discoseg_job_queue_depth 0.0" in client.get("/metrics").text


def test_docker_compose_services_env_and_shared_volumes() -> None:
    yaml = pytest.importorskip("yaml", reason="PyYAML is needed to read docker-compose.yml")
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    services = compose["services"]
    assert set(services) == {"api", "worker", "redis", "flower"}
    for name in ("api", "worker"):
        service = services[name]
        environment = service["environment"]
        assert environment["DISCOSEG_REDIS_URL"].startswith("redis://redis:6379/")
        assert environment["DISCOSEG_JOB_STORE"] and environment["DISCOSEG_MODEL_PATH"]
        mounts = {v.split(":")[1] for v in service["volumes"]}
        assert environment["DISCOSEG_JOB_STORE"] in mounts
        assert str(Path(environment["DISCOSEG_MODEL_PATH"]).parent) in mounts
        assert "redis" in service["depends_on"]
    assert services["api"]["environment"]["DISCOSEG_JOB_STORE"] == \
        services["worker"]["environment"]["DISCOSEG_JOB_STORE"]
    assert "container_name" not in services["worker"]  # `--scale worker=N` needs this
    assert "ports" not in services["worker"]
    assert services["worker"]["command"][:2] == ["discoseg", "worker"]
    assert "jobs" in compose["volumes"]  # a named volume both mount
    dockerfile = (REPO / "Dockerfile").read_text()
    assert "python:3.11-slim" in dockerfile and "constraints.txt" in dockerfile


def _picture(format: str, **options) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(scene_image(5)).save(buffer, format=format, **options)
    return buffer.getvalue()


def test_zip_bombs_and_oversized_jobs_are_refused_and_nothing_stays(tmp_path, bundle_path,
                                                                    runtime) -> None:
    png = scene_png(0)
    settings = job_settings(tmp_path, bundle_path, max_job_bytes=int(2.5 * len(png)))
    with TestClient(create_app(settings, runtime=runtime)) as client:
        def post(files):
            return client.post("/v1/jobs", files=[("files", entry) for entry in files])

        bomb = zip_of({"a.png": png, "zeros.png": bytes(20 << 20)})  # 20 MiB in ~20 kB
        assert len(bomb) < 100_000
        assert_error(post([("bomb.zip", bomb, "application/zip")]), 413, "zip_bomb")
        three = zip_of({f"{i}.png": png for i in range(3)})
        response = post([("three.zip", three, "application/zip")])
        assert_error(response, 413, "job_too_large")
        assert "DISCOSEG_MAX_JOB_BYTES" in response.json()["error"]["message"]
        loose = [(f"{i}.png", png, "image/png") for i in range(3)]
        assert_error(post(loose), 413, "job_too_large")
        assert not any(settings.job_store.iterdir())  # what was staged is gone
        assert post(loose[:2]).status_code == 202


def test_formats_pillow_reads_are_labeled_and_others_refused_at_upload(embedded) -> None:
    client, settings = embedded
    gif = [("files", ("a.png", scene_png(0), "image/png")),
           ("files", ("b.gif", _picture("GIF"), "image/gif"))]
    response = client.post("/v1/jobs", files=gif)
    assert_error(response, 415, "unsupported_media_type")
    assert "'b.gif' is a GIF image" in response.json()["error"]["message"]
    assert not any(settings.job_store.iterdir())

    second = Image.fromarray(scene_image(6))
    files = [("files", ("camera.jpg", _picture("MPO", save_all=True, append_images=[second]),
                        "image/jpeg")),
             ("files", ("scan.tif", _picture("TIFF"), "image/tiff"))]
    response = client.post("/v1/jobs", files=files, data={"score_threshold": "0"})
    assert response.status_code == 202, response.text
    status = wait_finished(client, response.json()["id"])
    assert status["state"] == "succeeded" and status["errors"] == [], status
    result = client.get(status["result"]).json()
    assert {(i["file_name"], i["width"], i["height"]) for i in result["images"]} == \
        {("camera.jpg", 96, 96), ("scan.tif", 96, 96)}


def test_cancel_deletes_inputs_and_delete_of_a_cancelled_job_removes_it(tmp_path, bundle_path,
                                                                        runtime) -> None:
    settings = job_settings(tmp_path, bundle_path, job_chunk_size=1)
    files = [("files", (f"{i}.png", scene_png(i), "image/png")) for i in range(4)]
    with TestClient(create_app(settings, runtime=runtime)) as client:
        job_id = client.post("/v1/jobs", files=files).json()["id"]
        cancelled = client.delete(f"/v1/jobs/{job_id}")
        assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
        assert not (settings.job_store / job_id / "inputs").exists()
        assert client.get(f"/v1/jobs/{job_id}").json()["state"] == "cancelled"
        assert client.delete(f"/v1/jobs/{job_id}").status_code == 204
        assert_error(client.get(f"/v1/jobs/{job_id}"), 404)
        client.app.state.jobs.stop()  # a chunk still running finishes first
        assert not (settings.job_store / job_id).exists()


def test_job_errors_name_images_relative_to_the_data_root(embedded) -> None:
    client, settings = embedded
    coco = write_coco_under(settings.data_root, [("sub/gone.png", [1])])
    (settings.data_root / "sub" / "gone.png").unlink()
    response = client.post("/v1/jobs", files={"coco": ("c.json", coco, "application/json")})
    status = wait_finished(client, response.json()["id"])
    assert [e["error"] for e in status["errors"]] == ["No such file or directory: sub/gone.png"]
    assert str(settings.data_root.parent) not in json.dumps(client.get(status["result"]).json())


def test_client_file_names_are_escaped_in_the_log(embedded, caplog) -> None:
    client, _ = embedded
    caplog.set_level(logging.INFO, logger="service.jobs.chunks")
    forged = "x.png\nCRITICAL everything is fine.png"
    archive = zip_of({forged: b"not an image"})
    response = client.post("/v1/jobs", files={"files": ("z.zip", archive, "application/zip")})
    status = wait_finished(client, response.json()["id"])
    assert status["errors"][0]["file_name"] == forged
    logged = [r.getMessage() for r in caplog.records if r.name == "service.jobs.chunks"]
    assert any("CRITICAL everything is fine" in message for message in logged)
    assert not any("\n" in message for message in logged)


def _lost_job(backend: EmbeddedBackend, images: int) -> str:
    """A job whose spec and state exist but whose chunks were never dispatched (lost)."""
    job_id = backend.new_job_id()
    uploads = [Upload(f"{i}.png", io.BytesIO(scene_png(i))) for i in range(images)]
    items = stage_uploads(backend.store.input_dir(job_id), uploads, hints_mode="none",
                          image_hints={}, limits=StagingLimits(10, 10**6, 10**7))
    spec = JobSpec(job_id=job_id, items=items, options=LabelOptions(), chunk_size=2,
                   created_at=time.time())
    backend.store.write_spec(spec)
    backend.states.create(JobRecord(job_id=job_id, state=JobState.QUEUED, total=images,
                                    created_at=spec.created_at))
    return job_id


def test_embedded_backend_dispatches_lost_chunks_again(tmp_path, bundle_path, runtime) -> None:
    settings = job_settings(tmp_path, bundle_path, job_redelivery_timeout_s=1)
    backend = EmbeddedBackend(settings, lambda: runtime)
    backend.start()
    try:
        job_id = _lost_job(backend, 3)
        assert backend.recover_lost_chunks() == 0  # not silent for the timeout yet
        time.sleep(1.1)
        assert backend.recover_lost_chunks() == 2
        deadline = time.monotonic() + 60
        while backend.states.get(job_id).state != "succeeded" and time.monotonic() < deadline:
            time.sleep(0.05)
        record = backend.states.get(job_id)
        assert record.state == "succeeded" and record.done == 3 and record.redispatches == 1
    finally:
        backend.stop()


def test_a_chunk_whose_worker_is_lost_each_time_fails_with_a_reason(
    tmp_path, bundle_path, runtime
) -> None:
    settings = job_settings(tmp_path, bundle_path)
    backend = EmbeddedBackend(settings, lambda: runtime)
    job_id = _lost_job(backend, 3)
    for _ in range(MAX_CHUNK_STARTS):  # started, then the process died each time
        backend.states.start_chunk(job_id, 0)
    assert run_chunk(backend.context, runtime, job_id, 0) == 2
    record = backend.states.get(job_id)
    assert record.done == 2 and set(record.errors) == {0, 1}
    assert record.errors[0] == (f"the chunk holding this image was started {MAX_CHUNK_STARTS} "
                                "times and never finished: its worker was lost each time "
                                "(killed, or out of memory)")
    assert run_chunk(backend.context, runtime, job_id, 1) == 1  # other chunks run
    assert backend.states.get(job_id).state == "succeeded"
