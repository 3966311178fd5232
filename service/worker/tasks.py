"""The chunk task: thin. It takes a job id and a chunk index, and calls `run_chunk` with this
process's model runtime, state store and result store.

The runtime is loaded lazily, at the first chunk a process runs: with the prefork pool that is
in the child after the fork, so CUDA is never initialised in a process that forks.
"""

import os
import threading
from dataclasses import dataclass

from celery import Celery, shared_task

from service.jobs.chunks import ChunkContext, run_chunk
from service.jobs.redis_state import RedisJobStates, redis_client
from service.jobs.state import JobBackendUnavailable
from service.jobs.store import ResultStore
from service.runtime import ModelRuntime
from service.worker.app import CHUNK_TASK


@dataclass(frozen=True)
class WorkerResources:
    pid: int
    context: ChunkContext
    runtime: ModelRuntime


_resources: WorkerResources | None = None
_lock = threading.Lock()


def worker_resources(app: Celery) -> WorkerResources:
    """This process's runtime and stores, created at its first chunk (again after a fork)."""
    global _resources
    with _lock:
        if _resources is None or _resources.pid != os.getpid():
            settings = app.discoseg_settings
            store = ResultStore(settings.job_store)
            states = RedisJobStates(redis_client(settings.redis_url), settings.job_result_ttl_s)
            context = ChunkContext(store=store, states=states, data_root=settings.data_root,
                                   max_image_pixels=settings.max_image_pixels)
            _resources = WorkerResources(os.getpid(), context, ModelRuntime.load(settings))
        return _resources


@shared_task(
    name=CHUNK_TASK,
    bind=True,
    acks_late=True,
    reject_on_worker_lost=True,
    # Redis away mid-chunk: try the chunk again later rather than dropping its images.
    autoretry_for=(JobBackendUnavailable,),
    retry_backoff=True,
    max_retries=10,
)
def run_chunk_task(self, job_id: str, chunk: int) -> int:
    resources = worker_resources(self.app)
    return run_chunk(resources.context, resources.runtime, job_id, chunk)
