"""`discoseg serve`: bad bundles and devices end with one line and exit code 2; a good bundle
is served over HTTP."""

import os
import socket
import subprocess
import sys
import time

import httpx
import pytest
import torch
from typer.testing import CliRunner

from service.cli import app
from tests.service.conftest import encode, scene_image, wait_until_serving


def _serve(*args: str):
    return CliRunner().invoke(app, ["serve", *args])


def _one_error_line(result) -> str:
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert lines[0].startswith("error: ")
    return lines[0]


def test_missing_bundle_exits_2(tmp_path) -> None:
    line = _one_error_line(_serve("--model", str(tmp_path / "absent.pt")))
    assert "no model bundle at" in line


def test_corrupt_bundle_exits_2(tmp_path, bundle_path) -> None:
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(bundle_path.read_bytes()[:5000])
    line = _one_error_line(_serve("--model", str(corrupt)))
    assert "corrupt or truncated" in line


def test_unknown_device_exits_2(bundle_path) -> None:
    line = _one_error_line(_serve("--model", str(bundle_path), "--device", "tpu"))
    assert "device" in line


@pytest.mark.skipif(torch.cuda.is_available(), reason="asks for CUDA where there is none")
def test_cuda_without_cuda_exits_2(bundle_path) -> None:
    line = _one_error_line(_serve("--model", str(bundle_path), "--device", "cuda"))
    assert "no CUDA device" in line


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.mark.slow
def test_serves_the_bundle_over_http(bundle_path) -> None:
    port = _free_port()
    command = [sys.executable, "-m", "service.cli", "serve", "--model", str(bundle_path),
               "--port", str(port), "--device", "cpu", "--log-level", "warning"]
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        wait_until_serving(
            f"http://127.0.0.1:{port}", server, lambda: server.stdout.read().decode(), 60
        )
        response = httpx.get(f"http://127.0.0.1:{port}/v1/models", timeout=5)
        assert response.status_code == 200
        assert response.json()["model"].startswith("tiny-model-")
        assert httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=5).status_code == 200
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.mark.parametrize("command", [["serve"], ["worker"]])
@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("DISCOSEG_API_KEYS", "notjson", "DISCOSEG_API_KEYS is not valid JSON"),
        ("DISCOSEG_API_KEYS", '["short"]', "(DISCOSEG_API_KEYS): every API key must be"),
        ("DISCOSEG_MAX_K", "0", "max_k (DISCOSEG_MAX_K): Input should be greater than"),
    ],
)
def test_bad_settings_are_one_line_and_exit_2(command, variable, value, message) -> None:
    result = CliRunner().invoke(app, command, env={variable: value})
    line = _one_error_line(result)
    assert line.startswith("error: invalid settings: ") and message in line, line


@pytest.mark.slow
def test_serve_logs_start_up_and_jobs_at_info(bundle_path, tmp_path) -> None:
    port = _free_port()
    command = [sys.executable, "-m", "service.cli", "serve", "--model", str(bundle_path),
               "--port", str(port), "--device", "cpu"]
    env = {**os.environ, "DISCOSEG_JOB_STORE": str(tmp_path / "jobs"),
           "DISCOSEG_DATA_ROOT": str(tmp_path)}
    server = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    site = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        wait_until_serving(site, server, lambda: server.stdout.read().decode(), 180)
        files = [("files", ("scene.png", encode(scene_image(1)), "image/png")),
                 ("files", ("broken.png", b"not an image", "image/png"))]
        job_id = httpx.post(f"{site}/v1/jobs", files=files, timeout=30).json()["id"]
        while httpx.get(f"{site}/v1/jobs/{job_id}", timeout=5).json()["state"] != "succeeded":
            assert time.monotonic() < deadline + 120, "the job did not finish"
            time.sleep(0.2)
    finally:
        server.terminate()
        output = server.communicate(timeout=30)[0].decode()
    info = [line for line in output.splitlines() if line.startswith("INFO:")]
    expected = ["serving model tiny-model-", f"job {job_id} submitted: 2 images",
                f"job {job_id} image 1 'broken.png'", f"job {job_id} succeeded: 2 images, 1 failed"]
    for start in expected:
        assert any(start in line for line in info), (start, output)
