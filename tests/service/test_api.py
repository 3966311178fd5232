"""The app around the model routes: model info, probes, metrics, API keys, JSON errors,
the in-flight bound (503 + Retry-After) and the lifespan."""

import base64
import json
import threading
import time

import anyio
import numpy as np
import pytest
from fastapi.testclient import TestClient

from service.api.deps import get_runtime
from service.main import create_app
from service.runtime import CallEstimates, ModelRuntime
from tests.service.conftest import API_KEY, CLASSES, encode, scene_image, upload


def test_models_names_the_bundle(client) -> None:
    response = client.get("/v1/models")
    assert response.status_code == 200
    body = response.json()
    assert body["model"].startswith("tiny-model-")
    assert body["classes"] == CLASSES
    assert body["preset"] == "tiny"
    assert body["device"] == "cpu"
    assert body["metadata"] == {
        "prediction_trained": False,
        "trained": False,
        "purpose": "tests",
        "initialisation": {"backbone_weights": None, "coco_weights": None},
    }
    assert body["proposal_settings"]["max_proposals"] == 40


def test_probes(client) -> None:
    assert client.get("/healthz").json() == {"status": "ok", "checks": {}}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"]["model"] == "ok"


class _Backend:
    def __init__(self, answer: object) -> None:
        self.answer = answer

    def ping(self) -> bool:
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


@pytest.mark.parametrize(
    ("backend", "status", "check"),
    [
        (_Backend(True), 200, "ok"),
        (_Backend(ConnectionError("redis is down")), 503, "ping failed: ConnectionError"),
        (_Backend(False), 503, "ping returned false"),
    ],
)
def test_readyz_pings_the_job_backend(make_client, backend, status, check) -> None:
    with make_client() as client:
        client.app.state.jobs = backend
        response = client.get("/readyz")
        assert response.status_code == status
        assert response.json()["checks"]["jobs"].startswith(check)


def test_without_a_model_v1_routes_and_readyz_are_503(make_settings) -> None:
    client = TestClient(create_app(make_settings()))  # no `with`: the lifespan never ran
    assert client.get("/readyz").status_code == 503
    response = client.get("/v1/models")
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "not_ready"
    assert client.get("/healthz").status_code == 200


def test_lifespan_loads_the_bundle_once(make_client) -> None:
    with make_client(shared_runtime=False) as client:
        runtime = client.app.state.runtime
        assert isinstance(runtime, ModelRuntime)
        assert client.get("/v1/models").json()["model"] == runtime.version
    assert client.app.state.runtime is None


def test_api_keys_guard_v1_routes_metrics_and_probe_details(make_client) -> None:
    with make_client(api_keys=[API_KEY]) as client:
        wrong = ({}, {"Authorization": "Bearer wrong-key-0123456789"}, {"Authorization": API_KEY})
        for headers in wrong:
            response = client.get("/v1/models", headers=headers)
            assert response.status_code == 401
            assert response.json()["error"]["code"] == "unauthorized"
            assert response.headers["www-authenticate"] == "Bearer"
        refused = client.post("/v1/segment", files=upload(encode(scene_image(0))))
        assert refused.status_code == 401
        good = {"Authorization": f"Bearer {API_KEY}"}
        assert client.get("/v1/models", headers=good).status_code == 200
        for open_path in ("/healthz", "/readyz", "/docs", "/openapi.json", "/"):
            assert client.get(open_path).status_code == 200, open_path
        # The probes' status is open, their details are not.
        assert client.get("/readyz").json() == {"status": "ready", "checks": {}}
        assert client.get("/readyz", headers=good).json()["checks"] == {"model": "ok",
                                                                          "jobs": "ok"}
        refused = client.get("/metrics")
        assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthorized"
        assert "discoseg_http_requests_total" in client.get("/metrics", headers=good).text


def test_weak_api_keys_are_refused_at_start(make_settings) -> None:
    with pytest.raises(ValueError, match="at least 16 characters"):
        make_settings(api_keys=["short"])


def test_routing_errors_are_json(client) -> None:
    missing = client.get("/v1/nothing-here")
    assert missing.status_code == 404
    assert missing.json() == {"error": {"code": "not_found", "message": "Not Found"}}
    wrong_method = client.get("/v1/segment")
    assert wrong_method.status_code == 405
    assert wrong_method.json()["error"]["code"] == "method_not_allowed"


def test_unexpected_errors_are_a_generic_json_500(make_client) -> None:
    def broken_runtime() -> ModelRuntime:
        raise RuntimeError("secret internal detail")

    with make_client() as client:
        client.app.dependency_overrides[get_runtime] = broken_runtime
        response = client.get("/v1/models")
        assert response.status_code == 500
        assert response.json() == {
            "error": {"code": "internal_error", "message": "internal server error"}
        }


def test_metrics_count_requests_by_route_and_status(client) -> None:
    client.post("/v1/segment", files=upload(b"not an image"))
    client.post("/v1/segment", files=upload(encode(scene_image(0))))
    text = client.get("/metrics").text
    for series in (
        'discoseg_http_requests_total{method="POST",route="/v1/segment",status="400"}',
        'discoseg_http_requests_total{method="POST",route="/v1/segment",status="200"}',
        'discoseg_http_request_duration_seconds_bucket{le="0.005",method="POST",'
        'route="/v1/segment",status="200"}',
        'discoseg_model_duration_seconds_count{operation="segment"}',
        "discoseg_http_requests_in_flight 1.0",  # the /metrics request itself
        "discoseg_model_calls_in_flight 0.0",
        "discoseg_job_queue_depth",
    ):
        assert series in text, series


def test_calls_beyond_the_inflight_bound_get_503_with_retry_after(
    runtime, make_settings
) -> None:
    bounded = ModelRuntime(
        runtime.bundle, version=runtime.version, device=runtime.device, max_inflight=1
    )
    release = threading.Event()
    real_segment = bounded.segment

    def blocked_segment(*args, **kwargs):
        assert release.wait(timeout=30)
        return real_segment(*args, **kwargs)

    bounded.segment = blocked_segment
    data = encode(scene_image(0))
    results = {}
    with TestClient(create_app(make_settings(), runtime=bounded)) as client:
        first = threading.Thread(
            target=lambda: results.update(first=client.post("/v1/segment", files=upload(data)))
        )
        first.start()
        deadline = time.monotonic() + 10
        while bounded.inflight < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert bounded.inflight == 1
        for path, form in (("/v1/segment", {}), ("/v1/pseudo-labels", {"tags": "[]"}),
                           ("/v1/refine", {"positive": "[[5, 5]]"})):
            refused = client.post(path, files=upload(data), data=form)
            assert refused.status_code == 503
            assert refused.json()["error"]["code"] == "overloaded"
            assert int(refused.headers["retry-after"]) >= 1
        task = {"data": {"image": "data:image/png;base64," + base64.b64encode(data).decode()}}
        config = ('<View><Image name="image" value="$image"/><BrushLabels name="tag" '
                  'toName="image"><Label value="disc"/></BrushLabels></View>')
        refused = client.post("/ls/predict", json={"tasks": [task], "label_config": config})
        assert refused.status_code == 503 and int(refused.headers["retry-after"]) >= 1
        release.set()
        first.join(timeout=30)
        assert results["first"].status_code == 200
        assert bounded.inflight == 0
        assert client.post("/v1/segment", files=upload(data)).status_code == 200
    bounded.close()


def test_hints_no_proposal_can_satisfy_are_422(client) -> None:
    flat = np.full((32, 32, 3), 128, dtype=np.uint8)  # one region: one proposal at most
    response = client.post(
        "/v1/pseudo-labels", files=upload(encode(flat)), data={"tags": '["disc", "square"]'}
    )
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "inconsistent_hints"


def test_openapi_documents_the_routes(client) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("/v1/segment", "/v1/pseudo-labels", "/v1/refine", "/v1/models", "/healthz",
                 "/readyz", "/ls/predict"):
        assert path in paths


def test_api_key_is_checked_before_the_body_is_read(make_settings) -> None:
    """The app answers an unauthenticated 1 GiB upload without asking for a single byte."""
    app = create_app(make_settings(api_keys=[API_KEY]))
    scope = {"type": "http", "method": "POST", "path": "/v1/jobs", "raw_path": b"/v1/jobs",
             "query_string": b"", "root_path": "", "scheme": "http", "http_version": "1.1",
             "server": ("test", 80), "client": ("test", 1),
             "headers": [(b"host", b"test"), (b"content-length", str(1 << 30).encode()),
                         (b"content-type", b"multipart/form-data; boundary=b")]}
    sent = []

    async def receive() -> dict:
        raise AssertionError("the body was read")

    async def send(message: dict) -> None:
        sent.append(message)

    anyio.run(app, scope, receive, send)
    assert sent[0]["status"] == 401
    assert json.loads(sent[1]["body"])["error"]["code"] == "unauthorized"


def test_every_route_has_a_body_limit(make_client) -> None:
    with make_client(max_job_bytes=1000) as client:
        too_big = client.request("GET", "/v1/models", content=bytes(2 << 20))
        assert too_big.status_code == 413 and too_big.json()["error"]["code"] == \
            "payload_too_large"
        job = client.post("/v1/jobs", files={"files": ("a.png", bytes(3 << 20), "image/png")})
        assert job.status_code == 413 and job.json()["error"]["code"] == "payload_too_large"


def test_cross_origin_requests_are_refused_unless_allowed(make_client) -> None:
    data = encode(scene_image(0))
    with make_client() as client:
        for origin in ("https://evil.example", "null", "http://testserver.evil.example"):
            refused = client.post("/v1/segment", files=upload(data), headers={"Origin": origin})
            assert refused.status_code == 403, origin
            assert refused.json()["error"]["code"] == "cross_origin"
            assert "access-control-allow-origin" not in refused.headers
        # The service's own page (its origin is the Host the request was sent to) and
        # clients that send no Origin (curl, SDKs) pass.
        own = client.post("/v1/segment", files=upload(data),
                          headers={"Origin": "http://testserver"})
        assert own.status_code == 200
        assert client.post("/v1/segment", files=upload(data)).status_code == 200
    allowed = "https://labeling.example"
    with make_client(cors_origins=[allowed], api_keys=[API_KEY]) as client:
        preflight = client.options("/v1/jobs", headers={
            "Origin": allowed, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization"})
        assert preflight.status_code == 200
        assert preflight.headers["access-control-allow-origin"] == allowed
        response = client.get("/v1/models", headers={
            "Origin": allowed, "Authorization": f"Bearer {API_KEY}"})
        assert response.status_code == 200
        assert response.headers["access-control-allow-origin"] == allowed
        other = client.get("/v1/models", headers={
            "Origin": "https://evil.example", "Authorization": f"Bearer {API_KEY}"})
        assert other.status_code == 403


def test_readyz_is_degraded_while_no_worker_can_run_jobs(make_client) -> None:
    class _Workers:
        def __init__(self, check: str) -> None:
            self.check = check

        def ping(self) -> None:
            return None

        def workers_check(self) -> str:
            return self.check

    with make_client(api_keys=[API_KEY]) as client:
        key = {"Authorization": f"Bearer {API_KEY}"}
        client.app.state.jobs = _Workers("worker w@h cannot load the model: no model bundle")
        degraded = client.get("/readyz", headers=key)
        assert degraded.status_code == 200
        assert degraded.json() == {"status": "degraded", "checks": {
            "model": "ok", "jobs": "ok",
            "workers": "worker w@h cannot load the model: no model bundle"}}
        assert client.get("/readyz").json() == {"status": "degraded", "checks": {}}
        client.app.state.jobs = _Workers("ok")
        assert client.get("/readyz", headers=key).json()["status"] == "ready"


def test_retry_after_is_the_expected_time_of_the_queued_work() -> None:
    estimates = CallEstimates()
    assert estimates.expected_s("segment", 2.0) == 2.0  # nothing measured: 1 s per unit
    first = estimates.add("segment", 1.0)
    estimates.start(first, now=100.0)
    estimates.finish(first, now=100.5)  # 0.5 s per megapixel
    heavy = estimates.add("pseudo_labels", 8.0)
    estimates.start(heavy, now=200.0)
    estimates.finish(heavy, now=216.0)  # 2 s per megapixel-sample
    assert estimates.expected_s("segment", 4.0) == pytest.approx(2.0)
    assert estimates.expected_s("pseudo_labels", 8.0) == pytest.approx(16.0)
    assert estimates.expected_s("unseen", 1.0) == pytest.approx(1.25)  # the mean rate
    running = estimates.add("pseudo_labels", 8.0)
    estimates.start(running, now=300.0)
    estimates.add("segment", 1.0)
    estimates.add("pseudo_labels", 8.0)
    # 16 s running for 4 s: 12 left; then 0.5 s and 16 s queued.
    assert estimates.remaining_s(now=304.0) == pytest.approx(28.5)
    estimates.finish(running, now=310.0)
    assert estimates.remaining_s(now=310.0) == pytest.approx(0.5 + 8 * (0.8 * 2 + 0.2 * 1.25))
