"""Worker health in Redis, which the API's /readyz reads.

    discoseg:worker:<node>   hash: seen_at (the worker's heartbeat) and model ("ok", or why the
                             model could not be loaded); expires HEALTH_TTL_S after the last
                             write

A worker's main process beats every HEARTBEAT_INTERVAL_S while it runs and deletes its key at a
warm shutdown; its pool processes, which load the model, write `model`. A worker that vanishes
(killed, host lost) drops out when its key expires. Reports are best effort: a Redis error is
logged and never stops a worker.
"""

import logging
import threading
import time
from dataclasses import dataclass

import redis
from celery.signals import worker_ready, worker_shutdown

KEY_PREFIX = "discoseg:worker:"
HEARTBEAT_INTERVAL_S = 5.0
HEALTH_TTL_S = 20
MODEL_OK = "ok"

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerHealth:
    """node: the Celery node name; model: "ok", a problem, or None before any pool process of
    the worker tried to load it."""

    node: str
    model: str | None


class HealthReporter:
    """Writes one worker's health record."""

    def __init__(self, client: redis.Redis, node: str) -> None:
        self.client = client
        self.key = f"{KEY_PREFIX}{node}"

    def beat(self) -> None:
        self._write({"seen_at": time.time()})

    def report_model(self, problem: str | None) -> None:
        """The model loaded (problem None) or could not be loaded, and why."""
        self._write({"model": MODEL_OK if problem is None else problem})

    def forget(self) -> None:
        try:
            self.client.delete(self.key)
        except redis.RedisError as error:
            logger.warning("worker health not removed: %s", error)

    def _write(self, fields: dict) -> None:
        try:
            with self.client.pipeline() as pipe:
                pipe.hset(self.key, mapping=fields).expire(self.key, HEALTH_TTL_S).execute()
        except redis.RedisError as error:
            logger.warning("worker health not reported: %s", error)


class Heartbeat:
    """A daemon thread that calls `reporter.beat()` every HEARTBEAT_INTERVAL_S until stopped."""

    def __init__(self, reporter: HealthReporter) -> None:
        self.reporter = reporter
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="discoseg-heartbeat", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop beating and remove the record: the worker leaves."""
        self._stop.set()
        self._thread.join(timeout=HEARTBEAT_INTERVAL_S * 2)
        self.reporter.forget()

    def _run(self) -> None:
        while not self._stop.is_set():
            self.reporter.beat()
            self._stop.wait(HEARTBEAT_INTERVAL_S)


def beat_while_the_worker_runs(client: redis.Redis) -> None:
    """In a `discoseg worker` process: beat from when the worker consumes chunks until it
    shuts down (Celery's worker_ready and worker_shutdown signals)."""
    heartbeats: list[Heartbeat] = []

    def start(sender, **_: object) -> None:
        heartbeat = Heartbeat(HealthReporter(client, sender.hostname))
        heartbeat.start()
        heartbeats.append(heartbeat)

    def stop(**_: object) -> None:
        while heartbeats:
            heartbeats.pop().stop()

    worker_ready.connect(start, weak=False)
    worker_shutdown.connect(stop, weak=False)


def read_worker_health(client: redis.Redis) -> list[WorkerHealth]:
    """The health of every live worker, by node name (raises redis.RedisError). `client`
    decodes responses (service.jobs.redis_state.redis_client)."""
    keys = sorted(client.scan_iter(match=f"{KEY_PREFIX}*", count=100))
    with client.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.hgetall(key)
        records = pipe.execute()
    return [
        WorkerHealth(node=key.removeprefix(KEY_PREFIX), model=fields.get("model"))
        for key, fields in zip(keys, records, strict=True)
        if fields  # expired between the scan and the read
    ]


def describe_workers(workers: list[WorkerHealth]) -> str:
    """"ok" when a worker is alive and none of them failed to load the model; else what is
    wrong, naming the workers."""
    if not workers:
        return "no live worker: batch jobs wait in the queue until one starts"
    broken = [w for w in workers if w.model not in (None, MODEL_OK)]
    if broken:
        return "; ".join(f"worker {w.node} cannot load the model: {w.model}" for w in broken)
    return "ok"

