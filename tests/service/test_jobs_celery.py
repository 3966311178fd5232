"""Batch jobs on the Celery backend with real `discoseg worker` processes and a real Redis
(127.0.0.1:6379, databases 13 and 14 only; or a redis-server this module starts): uploads, COCO
with tag hints, a bad image, cancel, a worker killed in the middle of a chunk, and Redis going
away and coming back."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from service.jobs.celery_backend import CeleryBackend
from service.main import create_app
from service.runtime import ModelRuntime
from service.worker.app import CHUNK_QUEUE
from tests.service.test_jobs import (
    REPO,
    assert_error,
    check_coco_result,
    job_settings,
    scene_png,
    wait_finished,
    write_coco_under,
)

pytestmark = pytest.mark.slow
WORKER_START_TIMEOUT_S = 60
# Set (to 1) where a skipped Celery test would hide a failure: .ci/run sets it.
REQUIRE_REDIS = "DISCOSEG_REQUIRE_REDIS"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _start_redis_server(port: int) -> subprocess.Popen:
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--daemonize", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port, socket_connect_timeout=0.2)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            client.ping()
            return process
        except redis.ConnectionError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"redis-server did not start on port {port}")


@pytest.fixture(scope="module")
def redis_base():
    """'redis://127.0.0.1:<port>' of the local Redis, or of one started here; skip if none,
    or fail where DISCOSEG_REQUIRE_REDIS=1 (CI) asks for these tests to run."""
    try:
        redis.Redis(port=6379, socket_connect_timeout=0.5).ping()
        yield "redis://127.0.0.1:6379"
        return
    except redis.RedisError:
        pass
    try:
        port = _free_port()
        process = _start_redis_server(port)
    except (OSError, RuntimeError) as error:
        reason = f"no Redis on 127.0.0.1:6379 and none could be started: {error}"
        if os.environ.get(REQUIRE_REDIS) == "1":
            pytest.fail(f"{reason} ({REQUIRE_REDIS}=1)")
        pytest.skip(reason)
    yield f"redis://127.0.0.1:{port}"
    process.kill()
    process.wait()


def _clean_db(url: str) -> None:
    redis.Redis.from_url(url).flushdb()  # only this test database


class Worker:
    """A `discoseg worker` process (a process group: the prefork parent and its child)."""

    def __init__(self, settings, name: str, log: Path) -> None:
        env = {**os.environ,
               "DISCOSEG_REDIS_URL": settings.redis_url,
               "DISCOSEG_MODEL_PATH": str(settings.model_path),
               "DISCOSEG_JOB_STORE": str(settings.job_store),
               "DISCOSEG_DATA_ROOT": str(settings.data_root),
               "DISCOSEG_DEVICE": "cpu",
               "DISCOSEG_JOB_CHUNK_SIZE": str(settings.job_chunk_size),
               "DISCOSEG_JOB_REDELIVERY_TIMEOUT_S": str(settings.job_redelivery_timeout_s or 60),
               "OMP_NUM_THREADS": "1"}
        self.log = log
        self.process = subprocess.Popen(
            [sys.executable, "-m", "training.cli", "worker", "--concurrency", "1",
             "--name", f"{name}@%h", "--loglevel", "info"],
            cwd=REPO, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + WORKER_START_TIMEOUT_S
        while "ready." not in log.read_text():
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.kill()
                raise AssertionError(f"worker {name} did not start:\n{log.read_text()[-3000:]}")
            time.sleep(0.1)

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()


@pytest.fixture(scope="module")
def celery_env(redis_base, bundle_path, runtime, tmp_path_factory):
    """An API client on the Celery backend (db 13) and one running worker."""
    tmp_path = tmp_path_factory.mktemp("celery-jobs")
    settings = job_settings(tmp_path, bundle_path, redis_url=f"{redis_base}/13",
                            job_redelivery_timeout_s=30)
    _clean_db(settings.redis_url)
    worker = Worker(settings, "jobs-test", tmp_path / "worker.log")
    try:
        with TestClient(create_app(settings, runtime=runtime)) as client:
            assert isinstance(client.app.state.jobs, CeleryBackend)
            yield client, settings
    finally:
        worker.kill()
        _clean_db(settings.redis_url)


def test_celery_upload_job_with_a_bad_image(celery_env) -> None:
    client, settings = celery_env
    files = [("files", (f"scene{i}.png", scene_png(i), "image/png")) for i in range(2)]
    files.append(("files", ("broken.png", b"\x89PNG but cut", "image/png")))
    response = client.post("/v1/jobs", files=files,
                           data={"score_threshold": "0", "max_instances": "2"})
    assert response.status_code == 202, response.text
    status = wait_finished(client, response.json()["id"], timeout=90)
    assert status["state"] == "succeeded", status
    assert status["progress"] == {"done": 3, "total": 3}
    assert [e["file_name"] for e in status["errors"]] == ["broken.png"]
    result = client.get(status["result"])
    assert result.status_code == 200
    check_coco_result(result.json(), {"scene0.png", "scene1.png"})
    assert len(result.json()["annotations"]) == 4
    # Masks go to the result store, never to the Celery result backend.
    assert not redis.Redis.from_url(settings.redis_url).keys("celery-task-meta-*")


def test_celery_coco_job_with_tags(celery_env) -> None:
    client, settings = celery_env
    coco = write_coco_under(settings.data_root, [("c/one.png", [1]), ("c/two.png", [2, 3]),
                                                 ("c/three.png", [9])])
    response = client.post("/v1/jobs", files={"coco": ("c.json", coco, "application/json")},
                           data={"hints": "tags"})
    assert response.status_code == 202, response.text
    status = wait_finished(client, response.json()["id"], timeout=90)
    assert status["state"] == "succeeded" and status["progress"]["done"] == 3
    assert [(e["file_name"], e["error"]) for e in status["errors"]] == \
        [("c/three.png", "annotation 4: unknown category id 9")]
    result = client.get(status["result"]).json()
    check_coco_result(result, {"c/one.png", "c/two.png"})
    by_image = {}
    for annotation in result["annotations"]:
        by_image.setdefault(annotation["image_id"], set()).add(annotation["category_id"])
    assert by_image == {1: {1}, 2: {2, 3}}


def test_celery_cancel_skips_pending_chunks(celery_env) -> None:
    client, settings = celery_env
    files = [("files", (f"{i}.png", scene_png(i), "image/png")) for i in range(8)]
    job = client.post("/v1/jobs", files=files, data={"score_threshold": "0"}).json()
    cancelled = client.delete(f"/v1/jobs/{job['id']}")
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    queue = redis.Redis.from_url(settings.redis_url)
    deadline = time.monotonic() + 30
    while queue.llen(CHUNK_QUEUE) and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(1.0)  # the last chunk taken stops at its next image
    status = client.get(f"/v1/jobs/{job['id']}").json()
    assert status["state"] == "cancelled"
    assert status["progress"]["done"] <= settings.job_chunk_size  # at most one chunk started
    time.sleep(1.0)
    assert client.get(f"/v1/jobs/{job['id']}").json()["progress"] == status["progress"]
    assert_error(client.get(f"/v1/jobs/{job['id']}/result"), 409, "job_not_finished")


def test_worker_killed_mid_chunk_job_completes_once_per_image(
    redis_base, bundle_path, runtime, tmp_path
) -> None:
    settings = job_settings(tmp_path, bundle_path, redis_url=f"{redis_base}/14",
                            job_chunk_size=3, job_redelivery_timeout_s=2)
    _clean_db(settings.redis_url)
    states = redis.Redis.from_url(settings.redis_url)
    first = Worker(settings, "doomed", tmp_path / "doomed.log")
    second = None
    try:
        with TestClient(create_app(settings, runtime=runtime)) as client:
            files = [("files", (f"{i}.png", scene_png(i), "image/png")) for i in range(6)]
            job = client.post("/v1/jobs", files=files, data={"score_threshold": "0"}).json()
            done_key = f"discoseg:job:{job['id']}:done"
            deadline = time.monotonic() + 60
            while states.scard(done_key) == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            done_at_kill = states.scard(done_key)
            first.kill()  # SIGKILL, parent and child, in the middle of chunk 0
            assert 1 <= done_at_kill < 3, f"not mid-chunk: {done_at_kill} images done"
            assert client.get(f"/v1/jobs/{job['id']}").json()["state"] == "running"

            second = Worker(settings, "survivor", tmp_path / "survivor.log")
            status = wait_finished(client, job["id"], timeout=90)
            assert status["state"] == "succeeded", status
            assert status["progress"] == {"done": 6, "total": 6} and status["errors"] == []
            result = client.get(status["result"]).json()
            check_coco_result(result, {f"{i}.png" for i in range(6)})
            assert sorted(image["id"] for image in result["images"]) == [1, 2, 3, 4, 5, 6]
            assert states.scard(done_key) == 6
    finally:
        first.kill()
        if second is not None:
            second.kill()
        _clean_db(settings.redis_url)


def test_redis_away_gives_503_on_job_routes_and_recovers(
    bundle_path, runtime: ModelRuntime, tmp_path
) -> None:
    port = _free_port()
    server = _start_redis_server(port)
    settings = job_settings(tmp_path, bundle_path, redis_url=f"redis://127.0.0.1:{port}/0")
    one = [("files", ("a.png", scene_png(0), "image/png"))]
    try:
        with TestClient(create_app(settings, runtime=runtime)) as client:
            job = client.post("/v1/jobs", files=one)
            assert job.status_code == 202
            job_id = job.json()["id"]
            assert client.get(f"/v1/jobs/{job_id}").status_code == 200

            server.terminate()
            server.wait()
            started = time.monotonic()
            for response in (client.get(f"/v1/jobs/{job_id}"),
                             client.get(f"/v1/jobs/{job_id}/result"),
                             client.delete(f"/v1/jobs/{job_id}"),
                             client.post("/v1/jobs", files=one)):
                assert_error(response, 503, "jobs_unavailable")
                assert int(response.headers["retry-after"]) > 0
            assert time.monotonic() - started < 20  # fails fast, does not hang
            assert client.get("/healthz").status_code == 200
            assert client.get("/v1/models").status_code == 200  # the rest keeps working
            ready = client.get("/readyz")
            assert ready.status_code == 503 and ready.json()["checks"]["jobs"] != "ok"

            server = _start_redis_server(port)  # back, empty (no persistence here)
            again = client.post("/v1/jobs", files=one)
            assert again.status_code == 202, again.text
            assert client.get(f"/v1/jobs/{again.json()['id']}").json()["state"] == "queued"
            assert client.get("/readyz").status_code == 200
            assert redis.Redis(port=port).llen(CHUNK_QUEUE) == 1  # the chunk was queued
    finally:
        server.kill()
        server.wait()
