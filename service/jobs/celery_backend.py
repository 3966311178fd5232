"""The Celery backend: chunks are Celery tasks on Redis, run by `discoseg worker` processes.

The API only publishes (job id, chunk index) messages and reads state; workers share the result
store (a volume) and the Redis state. Every Redis or broker error is raised as
JobBackendUnavailable, so job routes answer 503 while the rest of the API keeps working, and
the next request after Redis is back simply works again.
"""

from kombu.exceptions import OperationalError

from service.core.config import Settings
from service.jobs.backend import JobBackend
from service.jobs.model import JobSpec
from service.jobs.redis_state import RedisJobStates, redis_client
from service.jobs.state import JobBackendUnavailable
from service.jobs.store import ResultStore
from service.worker.app import CHUNK_QUEUE, CHUNK_TASK, create_celery_app

# One fast try: a client waiting on a dead broker is worse than a 503 it can retry.
_PUBLISH_RETRY = {"max_retries": 1, "interval_start": 0, "interval_step": 0.5, "interval_max": 1}


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

    def dispatch(self, spec: JobSpec) -> None:
        try:
            for chunk in range(spec.num_chunks):
                self.celery.send_task(
                    CHUNK_TASK, args=[spec.job_id, chunk], queue=CHUNK_QUEUE,
                    retry=True, retry_policy=_PUBLISH_RETRY,
                )
        except OperationalError as error:
            raise JobBackendUnavailable(f"the job queue does not answer: {error}") from error

    def queue_depth(self) -> int:
        try:
            return int(self.client.llen(CHUNK_QUEUE))
        except Exception as error:
            raise JobBackendUnavailable(f"Redis does not answer: {error}") from error

    def stop(self) -> None:
        super().stop()
        self.celery.close()
        self.client.close()
