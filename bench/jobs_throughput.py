"""Batch-job throughput with 1 and with 2 Celery workers (real `discoseg worker` processes on a
local Redis): images/s from submission to the job's end, and the ratio 2 workers / 1 worker.

Each worker runs torch with --threads threads (default 1): a worker's OpenMP threads competing
with other processes for the same cores slow it far more than the work itself (measured: 8x
on a loaded 2-core machine with 2 threads), which would not measure Celery's scaling. Each run
is preceded by a warm-up job (single-image chunks) so every worker has loaded its model before
the clock starts.
Prints one JSON object. Uses one Redis database (default 12) and flushes only that one.
"""

import argparse
import io
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import redis
from PIL import Image

from models.bundle import build_bundle, save_bundle
from models.conditional import ConditionalConfig
from models.proposals import ProposalSettings
from service.core.config import Settings
from service.jobs.celery_backend import CeleryBackend
from service.jobs.record import LabelOptions
from service.jobs.staging import StagingLimits, Upload, stage_uploads
from training.data.synthetic import render_scene

REPO = Path(__file__).resolve().parents[1]


def png(seed: int, size: int) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(render_scene(np.random.default_rng(seed), size).image).save(buffer, "PNG")
    return buffer.getvalue()


def start_worker(settings: Settings, name: str, threads: int, log: Path) -> subprocess.Popen:
    env = {**os.environ, "DISCOSEG_REDIS_URL": settings.redis_url,
           "DISCOSEG_MODEL_PATH": str(settings.model_path),
           "DISCOSEG_JOB_STORE": str(settings.job_store), "DISCOSEG_DEVICE": "cpu",
           "OMP_NUM_THREADS": str(threads)}
    process = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "worker", "--name", f"{name}@%h",
         "--loglevel", "warning"],
        cwd=REPO, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
    )
    return process


def run_job(backend: CeleryBackend, images: list[bytes], options: LabelOptions) -> float:
    """Seconds from submission until the job finished."""
    job_id = backend.new_job_id()
    uploads = [Upload(f"{i}.png", io.BytesIO(data)) for i, data in enumerate(images)]
    items = stage_uploads(backend.store.input_dir(job_id), uploads, hints_mode=options.hints,
                          image_hints={}, limits=StagingLimits(len(images), 10**8, 10**10))
    start = time.perf_counter()
    backend.submit(job_id, items, options)
    while True:
        record = backend.states.get(job_id)
        if record.state.finished:
            elapsed = time.perf_counter() - start
            if record.state != "succeeded" or record.errors:
                raise RuntimeError(f"job {job_id} ended {record.state}: {record.errors}")
            return elapsed
        time.sleep(0.02)


def measure(settings: Settings, workers: int, threads: int, images: list[bytes],
            options: LabelOptions, folder: Path) -> float:
    redis.Redis.from_url(settings.redis_url).flushdb()
    processes = [start_worker(settings, f"bench{i}", threads, folder / f"worker{workers}-{i}.log")
                 for i in range(workers)]
    try:
        warm_up = CeleryBackend(settings.model_copy(update={"job_chunk_size": 1}))
        run_job(warm_up, images[: 2 * workers], options)
        warm_up.stop()
        backend = CeleryBackend(settings)
        elapsed = run_job(backend, images, options)
        backend.stop()
        return len(images) / elapsed
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/12")
    parser.add_argument("--images", type=int, default=24)
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--chunk-size", type=int, default=2)
    parser.add_argument("--score-threshold", type=float, default=0.0)
    parser.add_argument("--max-instances", type=int, default=10)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    args = parser.parse_args()

    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="discoseg-bench-jobs-") as tmp:
        folder = Path(tmp)
        model_path = folder / "model.pt"
        save_bundle(build_bundle(
            classes=["disc", "square", "triangle"], preset="tiny",
            conditional_config=ConditionalConfig(trunk_widths=(8, 16), hidden_channels=16),
            proposal_settings=ProposalSettings(max_proposals=40, work_size=64),
        ), model_path)
        settings = Settings(model_path=model_path, device="cpu", redis_url=args.redis_url,
                            job_store=folder / "jobs", job_chunk_size=args.chunk_size)
        images = [png(seed, args.size) for seed in range(args.images)]
        options = LabelOptions(score_threshold=args.score_threshold,
                               max_instances=args.max_instances)
        one = measure(settings, 1, args.threads, images, options, folder)
        two = measure(settings, 2, args.threads, images, options, folder)
        redis.Redis.from_url(args.redis_url).flushdb()
    print(json.dumps({
        "images": args.images, "image_size": args.size, "chunk_size": args.chunk_size,
        "cpu_cores": os.cpu_count(), "operation": "segment",
        "torch_threads_per_worker": args.threads,
        # Other load on the machine makes these numbers noisy: say how much there was.
        "load_average_1m_before_after": [round(load_before, 2), round(os.getloadavg()[0], 2)],
        "images_per_s_1_worker": round(one, 3), "images_per_s_2_workers": round(two, 3),
        "ratio_2_over_1": round(two / one, 3),
    }))


if __name__ == "__main__":
    main()
