"""The Celery app of discoseg's batch jobs, built from the service settings.

Reliability settings, and why:
- acks_late + task_reject_on_worker_lost: a chunk's message is acknowledged only after the
  chunk ran; if its worker is killed, the message is delivered again (chunks are idempotent).
- worker_prefetch_multiplier=1: a worker holds one chunk at a time, so a slow worker does not
  sit on chunks another worker could run, and a lost worker loses (delays) at most one.
- Redis has no broker-side acks: an unacknowledged message goes back to the queue once it has
  been out for `visibility_timeout` (settings.job_redelivery_timeout_s, default the chunk time
  limit + 60 s, which it must exceed, else a slow but alive chunk would run twice).
- the scan for messages to redeliver runs under a Redis lock; a worker killed inside the scan
  leaves the lock to expire (kombu's default 300 s, holding every redelivery up that long), so
  it expires after at most the visibility timeout, capped at _RESTORE_LOCK_MAX_S. A scan takes
  milliseconds; one outliving its lock could restore a message twice, and chunks are idempotent.
- time limits: the soft limit raises inside the chunk, which records its remaining images as
  failed so the job still finishes; the hard limit (prefork pool only) kills a stuck child.
- results: chunk tasks ignore their result; masks go to the result store, progress to Redis.
- pool processes load the model when they start: they are given _PROCESS_START_TIMEOUT_S to
  report alive instead of Celery's 4 s.
"""

from celery import Celery

from service.core.config import Settings

CHUNK_TASK = "discoseg.run_chunk"
CHUNK_QUEUE = "discoseg.chunks"
_SOFT_LIMIT_MARGIN = 0.9
_PROCESS_START_TIMEOUT_S = 300.0
_RESTORE_LOCK_MAX_S = 60


def create_celery_app(settings: Settings) -> Celery:
    if not settings.redis_url:
        raise ValueError("DISCOSEG_REDIS_URL is not set: Celery jobs need Redis")
    visibility = settings.redelivery_timeout_s
    hard_limit = settings.job_chunk_time_limit_s
    app = Celery("discoseg", broker=settings.redis_url, backend=settings.redis_url,
                 include=["service.worker.tasks"], set_as_current=False)
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        worker_proc_alive_timeout=_PROCESS_START_TIMEOUT_S,
        task_time_limit=hard_limit,
        task_soft_time_limit=max(1, int(hard_limit * _SOFT_LIMIT_MARGIN)),
        task_ignore_result=True,
        task_default_queue=CHUNK_QUEUE,
        task_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        broker_connection_timeout=2,
        broker_transport_options={
            "visibility_timeout": visibility,
            # Look for messages of lost workers often enough for the visibility timeout.
            "unacked_restore_interval": max(1, min(10, visibility // 4)),
            "unacked_restore_throttle": 1,
            "unacked_mutex_expire": min(visibility, _RESTORE_LOCK_MAX_S),
            "socket_connect_timeout": 2,
            "socket_timeout": 10,
        },
        worker_send_task_events=True,  # for flower
        task_send_sent_event=True,
    )
    app.discoseg_settings = settings
    return app
