"""Latency of the HTTP service against the bare model, on this machine.

Starts the real server (uvicorn in a subprocess on 127.0.0.1) and prints one JSON object:
- segment_overhead: p50 of POST /v1/segment over p50 of the direct prediction-network call on
  the same image in this process (goal <= 1.10); the two are timed alternately, so that load
  from other processes on a shared machine hits both alike; and segment_overhead_in_server:
  the mean request time over the mean time of the same model call measured inside the server
  (its /metrics), which takes the difference between the two processes out;
- throughput at concurrency C against sequential requests (requests per second);
- batch_speedup: one prediction call on C images against C calls of one image, in process:
  whether micro-batching concurrent /v1/segment requests could raise throughput on this device;
- pseudo_labels_ratio: p50 of /v1/pseudo-labels with k=K over k=1 (goal <= 1.3; the image's
  proposals are cached after the first call, so this is the cost of the samples).
Request counts are bounded; the server is stopped at the end.

Both processes run OpenMP with OMP_WAIT_POLICY=PASSIVE (unless set otherwise): the bench's
direct calls and the server alternate on the same cores, and OpenMP threads that spin-wait
after a call steal the cores from the other process (measured on 2 cores: HTTP p50 0.095 s
with spinning, 0.086 s without; a real client runs no torch beside the server).
"""

import argparse
import asyncio
import io
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # read when torch loads OpenMP: set first

import httpx
import numpy as np
import torch
from PIL import Image

from models.bundle import build_bundle, load_bundle, save_bundle
from models.images import as_image_tensor
from models.regions import describe_regions
from training.data.synthetic import CLASSES, render_scene


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def start_server(model: Path, port: int, threads: int) -> subprocess.Popen:
    env = os.environ | {
        "DISCOSEG_MODEL_PATH": str(model),
        "DISCOSEG_DEVICE": "cpu",
        "DISCOSEG_MAX_INFLIGHT": "64",
        "OMP_NUM_THREADS": str(threads),
    }
    command = [
        sys.executable, "-m", "uvicorn", "--factory", "service.main:create_app",
        "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning",
    ]
    server = subprocess.Popen(command, env=env)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the server exited with code {server.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    server.terminate()
    raise SystemExit("the server was not ready within 120 s")


def png(image: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def model_seconds(client: httpx.Client, base: str) -> float:
    """Total time the server's prediction network has spent on /v1/segment so far."""
    series = 'discoseg_model_duration_seconds_sum{operation="segment"} '
    for line in client.get(f"{base}/metrics").text.splitlines():
        if line.startswith(series):
            return float(line.removeprefix(series))
    return 0.0


def timed(call) -> float:
    start = time.perf_counter()
    call()
    return time.perf_counter() - start


async def throughput(url: str, files: dict, requests: int, concurrency: int) -> float:
    """Requests per second with `concurrency` clients sending `requests` in all."""
    queue = iter(range(requests))

    async def client_loop(client: httpx.AsyncClient) -> None:
        for _ in queue:
            response = await client.post(url, files=files)
            response.raise_for_status()

    async with httpx.AsyncClient(timeout=300) as client:
        start = time.perf_counter()
        await asyncio.gather(*(client_loop(client) for _ in range(concurrency)))
        return requests / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, help="bundle to serve (default: a fresh tiny one)")
    parser.add_argument("--size", type=int, default=256, help="side of the test image")
    parser.add_argument("--requests", type=int, default=15, help="timed requests per figure")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as folder:
        model = args.model
        if model is None:
            model = Path(folder) / "bench-model.pt"
            save_bundle(build_bundle(classes=list(CLASSES), preset="tiny"), model)
        bundle = load_bundle(model)
        scene = render_scene(np.random.default_rng(0), args.size)
        tensor = as_image_tensor(scene.image)
        proposals = bundle.propose(scene.image)  # the server caches them after the first call
        regions = describe_regions(tensor, proposals)
        files = {"image": ("scene.png", png(scene.image), "image/png")}
        tags = json.dumps(sorted({CLASSES[label - 1] for label in scene.labels}))

        def direct() -> None:
            with torch.inference_mode():
                bundle.segment(scene.image, proposer=lambda _: proposals)

        port = free_port()
        base = f"http://127.0.0.1:{port}"
        server = start_server(model, port, args.threads)
        try:
            with httpx.Client(timeout=300) as client:

                def segment() -> None:
                    client.post(f"{base}/v1/segment", files=files).raise_for_status()

                def pseudo_labels(k: int) -> None:
                    form = {"tags": tags, "k": str(k), "seed": "0"}
                    response = client.post(f"{base}/v1/pseudo-labels", files=files, data=form)
                    response.raise_for_status()

                direct(), segment(), pseudo_labels(1)  # warm-up, proposals cached
                model_before = model_seconds(client, base)
                paired = [(timed(direct), timed(segment)) for _ in range(args.requests)]
                model_in_server_s = (model_seconds(client, base) - model_before) / args.requests
                direct_s = statistics.median(d for d, _ in paired)
                http_s = statistics.median(h for _, h in paired)
                sequential_rps = args.requests / sum(h for _, h in paired)
                k1 = [timed(lambda: pseudo_labels(1)) for _ in range(args.requests)]
                kk = [timed(lambda k=args.k: pseudo_labels(k)) for _ in range(args.requests)]
            concurrent_rps = asyncio.run(
                throughput(f"{base}/v1/segment", files, 2 * args.requests, args.concurrency)
            )
        finally:
            server.terminate()
            server.wait(timeout=60)

        batch, batch_regions = [tensor] * args.concurrency, [regions] * args.concurrency
        with torch.inference_mode():
            one_by_one = min(
                timed(lambda: [bundle.prediction([tensor], [regions]) for _ in batch])
                for _ in "ab"
            )
            batched = min(timed(lambda: bundle.prediction(batch, batch_regions)) for _ in "ab")

    results = {
        "image_size": args.size,
        "requests": args.requests,
        "threads": args.threads,
        "cpu_count": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "segment_direct_p50_s": direct_s,
        "segment_http_p50_s": http_s,
        "segment_overhead": http_s / direct_s,
        # The same model call timed inside the server process, and HTTP around it (means):
        "segment_model_in_server_mean_s": model_in_server_s,
        "segment_http_mean_s": statistics.mean(h for _, h in paired),
        "segment_overhead_in_server": statistics.mean(h for _, h in paired) / model_in_server_s,
        "sequential_rps": sequential_rps,
        f"concurrency_{args.concurrency}_rps": concurrent_rps,
        "concurrency_gain": concurrent_rps / sequential_rps,
        f"batch_{args.concurrency}_s": batched,
        f"sequential_{args.concurrency}_s": one_by_one,
        "batch_speedup": one_by_one / batched,
        "pseudo_labels_k1_p50_s": statistics.median(k1),
        f"pseudo_labels_k{args.k}_p50_s": statistics.median(kk),
        "pseudo_labels_ratio": statistics.median(kk) / statistics.median(k1),
    }
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in results.items()}))


if __name__ == "__main__":
    main()
