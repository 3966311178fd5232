"""The Celery backend: chunks are Celery tasks on Redis, run by `discoseg worker` processes.

The API only publishes (job id, chunk index) messages and reads state; workers share the result
store (a volume) and the Redis state. Every Redis or broker error is raised as
JobBackendUnavailable, so job routes answer 503 while the rest of the API keeps working, and
the next request after Redis is back simply works again.

Chunk task ids are `<job id>.<chunk>.<random>`, so the chunks the broker holds can be read off
its Redis keys (kombu's Redis transport: the queue's list, and the hash of messages delivered
and not yet acknowledged) when lost chunks are looked for (JobBackend.recover_lost_chunks).
"""

import json
import uuid
from collections.abc import Iterable

import redis
from kombu.exceptions import OperationalError
from kombu.transport.redis import Channel

from service.core.config import Settings
from service.jobs.backend import JobBackend
from service.jobs.record import is_job_id
from service.jobs.redis_state import RedisJobStates, redis_client
from service.jobs.state import JobBackendUnavailable
from service.jobs.store import ResultStore
from service.worker.app import CHUNK_QUEUE, CHUNK_TASK, create_celery_app
from service.worker.health import describe_workers, read_worker_health

# One fast try: a client waiting on a dead broker is worse than a 503 it can retry.
_PUBLISH_RETRY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.5, "interval_max": 1}


def chunk_task_id(job_id: str, chunk: int) -> str:
    return f"{job_id}.{chunk}.{uuid.uuid4().hex[:12]}"


def chunk_of_task_id(task_id: str) -> tuple[str, int] | None:
    """(job id, chunk) of a chunk_task_id; None for any other task id."""
    job_id, _, rest = task_id.partition(".")
    chunk = rest.partition(".")[0]
    return (job_id, int(chunk)) if is_job_id(job_id) and chunk.isdigit() else None


class CeleryBackend(JobBackend):
    name = "celery"

    def __init__(self, settings: Settings) -> None:
        if not settings.redis_url:
            raise ValueError("the Celery job backend needs DISCOSEG_REDIS_URL")
        self.client = redis_client(settings.redis_url)
        super().__init__(
            settings,
            RedisJobStates(self.client, settings.job_result_ttl_s),
            ResultStore(settings.job_store),
        )
        self.celery = create_celery_app(settings)

    def dispatch_chunks(self, job_id: str, chunks: Iterable[int]) -> None:
        try:
            for chunk in chunks:
                self.celery.send_task(
                    CHUNK_TASK, args=[job_id, chunk], queue=CHUNK_QUEUE,
                    task_id=chunk_task_id(job_id, chunk), retry=True,
                    retry_policy=_PUBLISH_RETRY,
                )
        except OperationalError as error:
            raise JobBackendUnavailable(f"the job queue does not answer: {error}") from error

    def chunks_held(self) -> set[tuple[str, int]]:
        try:
            with self.client.pipeline(transaction=True) as pipe:  # one snapshot of both
                pipe.lrange(CHUNK_QUEUE, 0, -1).hvals(Channel.unacked_key)
                queued, delivered = pipe.execute()
        except redis.RedisError as error:
            raise JobBackendUnavailable(f"Redis does not answer: {error}") from error
        messages = [json.loads(raw) for raw in queued]
        messages += [json.loads(raw)[0] for raw in delivered]  # [message, exchange, key]
        chunks = (chunk_of_task_id(str(m.get("headers", {}).get("id", ""))) for m in messages)
        return {chunk for chunk in chunks if chunk is not None}

    def queue_depth(self) -> int:
        try:
            return int(self.client.llen(CHUNK_QUEUE))
        except Exception as error:
            raise JobBackendUnavailable(f"Redis does not answer: {error}") from error

    def workers_check(self) -> str:
        try:
            return describe_workers(read_worker_health(self.client))
        except redis.RedisError as error:
            raise JobBackendUnavailable(f"Redis does not answer: {error}") from error

    def stop(self) -> None:
        super().stop()
        self.celery.close()
        self.client.close()
