"""`discoseg worker`: a Celery worker for batch labeling jobs, with the service's settings.

Pool: prefork (the default) with --concurrency child processes, each loading the model lazily at
its first chunk, after the fork: the parent never touches the model, so CUDA is never initialised
before a fork, and prefork is the pool that enforces the hard time limit and survives a child
crashing. One child per worker is the default: the model already uses every core (or the GPU);
scale out with more workers (`docker compose up --scale worker=N`). `--pool solo` runs chunks in
the worker process itself (no fork at all, no hard time limit).
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
    from service.core.config import get_settings
    from service.worker.app import CHUNK_QUEUE, create_celery_app

    settings = get_settings()
    if not settings.redis_url:
        typer.echo("error: DISCOSEG_REDIS_URL is not set; a worker needs Redis", err=True)
        raise typer.Exit(code=2)
    app = create_celery_app(settings)
    app.worker_main([
        "worker", f"--pool={pool}", f"--concurrency={concurrency}", f"--hostname={name}",
        f"--loglevel={loglevel}", f"--queues={CHUNK_QUEUE}", "--without-gossip",
        "--without-mingle",
    ])
