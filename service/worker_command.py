"""`discoseg worker`: a Celery worker for batch labeling jobs, with the service's settings.

Pool: prefork (the default) with --concurrency child processes, each loading the model lazily at
its first chunk, after the fork: the parent never touches the model, so CUDA is never initialised
before a fork, and prefork is the pool that enforces the hard time limit and survives a child
crashing. One child per worker is the default: the model already uses every core (or the GPU);
scale out with more workers (`docker compose up --scale worker=N`). `--pool solo` runs chunks in
the worker process itself (no fork at all, no hard time limit).

While it runs, the worker keeps a health record in Redis (service/worker/health.py): its
heartbeat, and whether its pool processes could load the model; the API's /readyz reads it.
"""

from enum import StrEnum
from typing import Annotated

import typer


class Pool(StrEnum):
    prefork = "prefork"
    solo = "solo"


def worker(
    concurrency: Annotated[
        int, typer.Option("--concurrency", "-c", min=1, help="Chunks run at once (prefork).")
    ] = 1,
    pool: Annotated[Pool, typer.Option("--pool", help="Celery execution pool.")] = Pool.prefork,
    name: Annotated[
        str, typer.Option("--name", "-n", help="Worker node name (unique per host).")
    ] = "discoseg@%h",
    loglevel: Annotated[str, typer.Option("--loglevel", "-l", help="Log level.")] = "info",
) -> None:
    """Run batch-job chunks from the Redis queue at DISCOSEG_REDIS_URL."""
    # Imported here so that other subcommands do not pay for Celery and the settings.
    from service.core.config import InvalidSettings, load_settings
    from service.jobs.redis_state import redis_client
    from service.worker.app import CHUNK_QUEUE, create_celery_app
    from service.worker.health import beat_while_the_worker_runs
    from service.worker.tasks import load_model_when_processes_start
    from training.errors import fail

    try:
        settings = load_settings()
    except InvalidSettings as error:
        fail(str(error))
    if not settings.redis_url:
        fail("DISCOSEG_REDIS_URL is not set; a worker needs Redis")
    app = create_celery_app(settings)
    beat_while_the_worker_runs(redis_client(settings.redis_url))
    load_model_when_processes_start(app)
    app.worker_main([
        "worker", f"--pool={pool}", f"--concurrency={concurrency}", f"--hostname={name}",
        f"--loglevel={loglevel}", f"--queues={CHUNK_QUEUE}", "--without-gossip",
        "--without-mingle",
    ])

