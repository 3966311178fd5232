"""The chunk task: thin. It takes a job id and a chunk index, and calls `run_chunk` with this
process's model runtime, state store and result store.

The model is loaded once per pool process, after the fork (when the process starts; with
`--pool solo` at the first chunk), so CUDA is never initialised in a process that forks. A
process that cannot load it reports why (worker health, shown by the API's /readyz) and records
the images of each chunk it gets as failed with that reason, so jobs finish instead of waiting
forever; it tries again at every chunk, so a repaired model volume needs no restart.

Redis away in the middle of a chunk: the chunk waits for it with exponential backoff (within
the soft time limit) and then runs again from its first unrecorded image. Its message is not
acknowledged meanwhile, so if the worker dies waiting, the broker delivers the chunk again;
out of time, the message is handed back to the queue.
"""

import contextlib
import logging
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from celery import Celery, shared_task
from celery.exceptions import Reject, SoftTimeLimitExceeded
from celery.signals import worker_process_init

from service.core.config import Settings
from service.jobs.chunks import ChunkContext, fail_chunk, run_chunk
from service.jobs.redis_state import RedisJobStates, redis_client
from service.jobs.state import JobBackendUnavailable, JobStates
from service.jobs.store import ResultStore
from service.runtime import ModelRuntime
from service.worker.app import CHUNK_TASK
from service.worker.health import HealthReporter

logger = logging.getLogger(__name__)

REDIS_RETRY_FIRST_S = 0.5
REDIS_RETRY_MAX_S = 10.0


class ModelUnavailable(RuntimeError):
    """This process could not load the model; the message says why."""


@dataclass
class _Process:
    """What a pool process keeps between chunks."""

    pid: int
    context: ChunkContext
    health: HealthReporter
    runtime: ModelRuntime | None = None


_process: _Process | None = None
_lock = threading.Lock()


def _this_process(app: Celery, node: str) -> _Process:
    """This process's stores and health reporter, created at first use (again after a fork)."""
    global _process
    with _lock:
        if _process is None or _process.pid != os.getpid():
            settings = app.discoseg_settings
            client = redis_client(settings.redis_url)
            context = ChunkContext(
                store=ResultStore(settings.job_store),
                states=RedisJobStates(client, settings.job_result_ttl_s),
                data_root=settings.data_root, max_image_pixels=settings.max_image_pixels,
            )
            _process = _Process(os.getpid(), context, HealthReporter(client, node))
        return _process


def load_model(app: Celery, node: str) -> ModelRuntime:
    """This process's model runtime, loaded at the first call and after a failed one; raises
    ModelUnavailable saying why it cannot be loaded."""
    process = _this_process(app, node)
    with _lock:
        if process.runtime is None:
            settings: Settings = app.discoseg_settings
            try:
                process.runtime = ModelRuntime.load(settings)
            # Whatever stops the load (a missing or corrupt bundle, the device, memory) leaves
            # this worker unable to run chunks: say so instead of crashing on every chunk.
            except Exception as error:
                problem = _model_problem(error, settings.model_path)
                logger.error("the model could not be loaded: %s", problem)
                process.health.report_model(problem)
                raise ModelUnavailable(problem) from error
            process.health.report_model(None)
        return process.runtime


def load_model_when_processes_start(app: Celery) -> None:
    """Load the model in every pool process as it starts (prefork), so a worker that cannot
    load it shows in /readyz before it receives a chunk."""

    def load(sender: str, **_: object) -> None:
        with contextlib.suppress(ModelUnavailable):  # reported; each chunk tries again
            load_model(app, sender)

    worker_process_init.connect(load, weak=False)


@shared_task(name=CHUNK_TASK, bind=True, acks_late=True, reject_on_worker_lost=True)
def run_chunk_task(self, job_id: str, chunk: int) -> int:
    node = self.request.hostname
    process = _this_process(self.app, node)
    while True:
        try:
            try:
                runtime = load_model(self.app, node)
            except ModelUnavailable as error:
                reason = f"the worker {node} could not load the model: {error}"
                return fail_chunk(process.context, job_id, chunk, reason)
            return run_chunk(process.context, runtime, job_id, chunk)
        except JobBackendUnavailable as error:
            _wait_for_states(process.context.states, error)


def _wait_for_states(states: JobStates, error: JobBackendUnavailable) -> None:
    """Return once the state store answers again, trying with exponential backoff; out of
    time (the soft time limit), hand the chunk's message back instead of acknowledging it."""
    logger.warning("%s; the chunk waits for it", error)
    delay = REDIS_RETRY_FIRST_S
    try:
        while True:
            time.sleep(delay)
            try:
                states.ping()
                return
            except JobBackendUnavailable:
                delay = min(2 * delay, REDIS_RETRY_MAX_S)
    except SoftTimeLimitExceeded:
        raise Reject(error, requeue=True) from None


def _model_problem(error: Exception, model_path: Path) -> str:
    """The first line of why the load failed, naming an absolute model path by its file name
    only (job errors never show where the server keeps files)."""
    lines = str(error).strip().splitlines()
    problem = lines[0] if lines else type(error).__name__
    for shown in {str(model_path), str(model_path.resolve())}:
        if Path(shown).is_absolute():
            problem = problem.replace(shown, model_path.name)
    return problem
