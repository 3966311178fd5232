"""Batch labeling jobs: staging, chunking, the result store and the two job backends."""

from collections.abc import Callable

from service.core.config import Settings
from service.jobs.backend import JobBackend
from service.jobs.celery_backend import CeleryBackend
from service.jobs.chunks import LabelingRuntime
from service.jobs.embedded import EmbeddedBackend


def create_backend(
    settings: Settings, runtime: Callable[[], LabelingRuntime] | None = None
) -> JobBackend:
    """Celery + Redis when settings.redis_url is set; else the embedded backend, which runs
    chunks with `runtime()` (the API's loaded ModelRuntime) and needs no other service."""
    if settings.redis_url:
        return CeleryBackend(settings)
    if runtime is None:
        raise ValueError("the embedded job backend needs the model runtime")
    return EmbeddedBackend(settings, runtime)
