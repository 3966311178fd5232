"""Batch jobs on the Celery backend with real `discoseg worker` processes and a real Redis
(127.0.0.1:6379, databases 11 to 14 only; or a redis-server this module starts): uploads, COCO
with tag hints, a bad image, cancel, a worker killed in the middle of a chunk (also inside the
broker's redelivery scan), Redis going away and coming back, Redis killed in the middle of a
job, a worker that cannot load its model, chunks the broker lost, and a submission that fails
half-way."""

import json
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
from kombu.transport.redis import Channel

from service.jobs.backend import MAX_REDISPATCHES
from service.jobs.celery_backend import CeleryBackend, chunk_of_task_id
from service.jobs.record import ImageItem, JobRecord, JobState, LabelOptions
from service.jobs.redis_state import SUBMISSION_TTL_S
from service.jobs.state import JobBackendUnavailable
from service.main import create_app
from service.runtime import ModelRuntime
from service.worker.app import CHUNK_QUEUE, create_celery_app
from tests.service.conftest import encode, scene_image
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
REDIS_OUTAGE_S = 10
# Set (to 1) where a skipped Celery test would hide a failure: .ci/run sets it.
REQUIRE_REDIS = "DISCOSEG_REQUIRE_REDIS"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _start_redis_server(port: int, *options: str) -> subprocess.Popen:
    """A redis-server on `port` (by default without persistence; `options` override)."""
    process = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
         "--appendonly", "no", "--daemonize", "no", *options],
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
            [sys.executable, "-m", "service.cli", "worker", "--concurrency", "1",
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


@pytest.mark.parametrize("restore_lock_left", [False, True],
                         ids=["killed", "killed-holding-the-restore-lock"])
def test_worker_killed_mid_chunk_job_completes_once_per_image(
    redis_base, bundle_path, runtime, tmp_path, restore_lock_left
) -> None:
    """The survivor runs the rest, also when the doomed worker died inside the broker's scan
    for messages to redeliver, leaving that scan's lock to expire on its own."""
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
            if restore_lock_left:
                options = create_celery_app(settings).conf.broker_transport_options
                expire = options.get("unacked_mutex_expire", Channel.unacked_mutex_expire)
                states.set(Channel.unacked_mutex_key, "doomed's token", px=int(expire * 1000))

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


def _start_durable_redis(port: int, folder: Path) -> subprocess.Popen:
    """A redis-server that writes every change to its append-only file before answering."""
    return _start_redis_server(port, "--appendonly", "yes", "--appendfsync", "always",
                               "--dir", str(folder))


def _poll_until_finished(client: TestClient, job_id: str, timeout: float) -> dict:
    """The job's final status; 503s while Redis is away are waited out."""
    deadline = time.monotonic() + timeout
    status = None
    while time.monotonic() < deadline:
        response = client.get(f"/v1/jobs/{job_id}")
        if response.status_code == 200:
            status = response.json()
            if status["state"] not in ("queued", "running"):
                return status
        else:
            assert_error(response, 503, "jobs_unavailable")
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not finish in {timeout} s: {status}")


def test_redis_killed_mid_chunk_loses_no_image(bundle_path, runtime, tmp_path) -> None:
    port = _free_port()
    redis_dir = tmp_path / "redis"
    redis_dir.mkdir()
    server = _start_durable_redis(port, redis_dir)
    settings = job_settings(tmp_path, bundle_path, redis_url=f"redis://127.0.0.1:{port}/0",
                            job_chunk_size=4, job_redelivery_timeout_s=120)
    states = redis.Redis(port=port, socket_connect_timeout=0.5)
    worker = Worker(settings, "outlasts-redis", tmp_path / "worker.log")
    names = [f"{i}.png" for i in range(20)]
    try:
        with TestClient(create_app(settings, runtime=runtime)) as client:
            files = [("files", (name, encode(scene_image(i, 192)), "image/png"))
                     for i, name in enumerate(names)]
            job = client.post("/v1/jobs", files=files, data={"score_threshold": "0"}).json()
            done_key = f"discoseg:job:{job['id']}:done"
            deadline = time.monotonic() + 60
            while states.scard(done_key) == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            done_at_kill = states.scard(done_key)
            server.kill()  # SIGKILL in the middle of the first chunk
            server.wait()
            time.sleep(REDIS_OUTAGE_S)
            server = _start_durable_redis(port, redis_dir)

            assert 1 <= done_at_kill < len(names), f"not mid-job: {done_at_kill} images done"

            # Well within the redelivery timeout: the chunk waited for Redis, it was not lost.
            status = _poll_until_finished(client, job["id"], timeout=60)
            assert status["state"] == "succeeded", (status, worker.log.read_text()[-3000:])
            assert status["progress"] == {"done": 20, "total": 20}
            assert status["errors"] == []
            result = client.get(status["result"]).json()
            check_coco_result(result, set(names))
            file_names = [image["file_name"] for image in result["images"]]
            assert sorted(file_names) == sorted(names)  # every image, exactly once
            assert sorted(image["id"] for image in result["images"]) == list(range(1, 21))
    finally:
        worker.kill()
        server.kill()
        server.wait()


def _readyz_when_workers_seen(client: TestClient, timeout: float = 20.0) -> dict:
    """/readyz once it reports a live worker."""
    deadline = time.monotonic() + timeout
    while True:
        body = client.get("/readyz").json()
        if not body["checks"].get("workers", "").startswith("no live worker"):
            return body
        assert time.monotonic() < deadline, body
        time.sleep(0.2)


def test_readyz_shows_the_live_worker(celery_env) -> None:
    client, _ = celery_env
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready",
                            "checks": {"model": "ok", "jobs": "ok", "workers": "ok"}}


def test_worker_that_cannot_load_its_model_fails_jobs_with_the_reason(
    redis_base, bundle_path, runtime, tmp_path
) -> None:
    settings = job_settings(tmp_path, bundle_path, redis_url=f"{redis_base}/12")
    missing = tmp_path / "elsewhere" / "model.pt"
    _clean_db(settings.redis_url)
    with TestClient(create_app(settings, runtime=runtime)) as client:
        body = client.get("/readyz").json()
        assert body["status"] == "degraded"
        assert body["checks"]["workers"].startswith("no live worker")
        worker = Worker(settings.model_copy(update={"model_path": missing}), "modelless",
                        tmp_path / "worker.log")
        try:
            body = _readyz_when_workers_seen(client)
            assert body["status"] == "degraded", body
            reason = "cannot load the model: no model bundle at model.pt"
            assert body["checks"]["workers"] == f"worker modelless@{socket.gethostname()} {reason}"
            assert str(tmp_path) not in str(body)  # the server's folders stay private

            files = [("files", (f"{i}.png", scene_png(i), "image/png")) for i in range(3)]
            job = client.post("/v1/jobs", files=files).json()
            status = wait_finished(client, job["id"], timeout=60)
            assert status["state"] == "failed" and status["progress"] == {"done": 3, "total": 3}
            assert {e["error"] for e in status["errors"]} == {
                f"the worker modelless@{socket.gethostname()} could not load the model: "
                "no model bundle at model.pt"
            }
        finally:
            worker.kill()
            _clean_db(settings.redis_url)


def _held_chunks(queue: redis.Redis) -> list[tuple[str, int]]:
    return sorted(chunk_of_task_id(json.loads(raw)["headers"]["id"])
                  for raw in queue.lrange(CHUNK_QUEUE, 0, -1))


def test_lost_chunks_are_dispatched_again_then_failed_with_a_reason(
    redis_base, bundle_path, runtime, tmp_path
) -> None:
    settings = job_settings(tmp_path, bundle_path, redis_url=f"{redis_base}/11",
                            job_redelivery_timeout_s=1)
    _clean_db(settings.redis_url)
    queue = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    try:
        with TestClient(create_app(settings, runtime=runtime)) as client:
            jobs = client.app.state.jobs
            files = [("files", (f"{i}.png", scene_png(i), "image/png")) for i in range(3)]
            job_id = client.post("/v1/jobs", files=files).json()["id"]  # 2 chunks, no worker
            both = [(job_id, 0), (job_id, 1)]
            assert _held_chunks(queue) == both
            record = jobs.states.get(job_id)
            # A claim decided on an older sign of life (another API process was first) fails.
            assert not jobs.states.claim_redispatch(job_id, record.active_at - 1)
            time.sleep(1.1)  # the job shows no sign of life past the redelivery timeout
            assert jobs.recover_lost_chunks() == 0  # but the broker holds its chunks
            # A chunk delivered to a worker and not acknowledged is held too.
            delivered = queue.rpop(CHUNK_QUEUE)
            queue.hset(Channel.unacked_key, "tag", json.dumps([json.loads(delivered), "", ""]))
            assert jobs.recover_lost_chunks() == 0
            queue.hdel(Channel.unacked_key, "tag")  # now chunk 0 is lost
            assert jobs.recover_lost_chunks() == 1
            assert _held_chunks(queue) == both
            assert jobs.recover_lost_chunks() == 0  # dispatching again is a sign of life

            for _ in range(MAX_REDISPATCHES - 1):
                queue.delete(CHUNK_QUEUE)  # the broker loses both
                time.sleep(1.1)
                assert jobs.recover_lost_chunks() == 2
                assert _held_chunks(queue) == both
            assert client.get(f"/v1/jobs/{job_id}").json()["state"] == "queued"

            queue.delete(CHUNK_QUEUE)
            time.sleep(1.1)
            assert jobs.recover_lost_chunks() == 2  # lost once more: failed, not stuck
            assert queue.llen(CHUNK_QUEUE) == 0
            status = client.get(f"/v1/jobs/{job_id}").json()
            assert status["state"] == "failed" and status["progress"] == {"done": 3, "total": 3}
            assert {e["error"] for e in status["errors"]} == {
                f"the chunk holding this image was lost {MAX_REDISPATCHES + 1} times (the job "
                "queue failed each time); submit the image again"
            }
    finally:
        _clean_db(settings.redis_url)


def test_a_submission_failing_half_way_leaves_no_state_behind(
    redis_base, bundle_path, tmp_path, monkeypatch
) -> None:
    settings = job_settings(tmp_path, bundle_path, redis_url=f"{redis_base}/11")
    _clean_db(settings.redis_url)
    backend = CeleryBackend(settings)
    db = redis.Redis.from_url(settings.redis_url, decode_responses=True)
    items = [ImageItem(index=0, image_id=1, file_name="a.png", source="upload", path="a.png")]
    try:
        # Redis goes away once the job's state is written: neither can its chunks be sent nor
        # its state be deleted.
        def away(*_: object) -> None:
            raise JobBackendUnavailable("Redis does not answer")

        monkeypatch.setattr(backend, "dispatch_chunks", away)
        monkeypatch.setattr(backend.states, "delete", away)
        failed = backend.new_job_id()
        with pytest.raises(JobBackendUnavailable):
            backend.submit(failed, items, LabelOptions())
        assert not backend.store.job_dir(failed).exists()
        assert 0 < db.ttl(f"discoseg:job:{failed}") <= SUBMISSION_TTL_S  # it expires on its own
        monkeypatch.undo()

        queued = backend.new_job_id()
        backend.submit(queued, items, LabelOptions())  # no worker: its chunk waits
        assert db.ttl(f"discoseg:job:{queued}") == -1  # kept for as long as the job runs
        # A job that finished before its submission was confirmed keeps its result's expiry.
        finished = backend.new_job_id()
        backend.states.create(JobRecord(job_id=finished, state=JobState.QUEUED, total=1))
        assert backend.states.record_image(finished, 0, None) == JobState.SUCCEEDED
        backend.states.confirm(finished)
        assert 0 < db.ttl(f"discoseg:job:{finished}") <= settings.job_result_ttl_s + 1
    finally:
        _clean_db(settings.redis_url)
