"""Job state and progress in Redis (Celery backend), shared by the API and every worker.

    discoseg:job:<id>         hash: state, total, created_at, started_at, finished_at, ...
    discoseg:job:<id>:done    set of finished image indices (so a re-run counts once)
    discoseg:job:<id>:errors  hash: image index -> error
    discoseg:job:<id>:starts  hash: chunk index -> how often a worker started it

State changes are Lua scripts, so two workers finishing the last images of a job at once, or a
cancel racing the last image, leave one consistent final state. A finished job's keys expire
on their own at `expires_at`. Every Redis error is raised as JobBackendUnavailable.
"""

import time
from collections.abc import Callable
from functools import wraps
from typing import ParamSpec, TypeVar

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from service.jobs.record import JobRecord, JobState
from service.jobs.state import JobBackendUnavailable

_PREFIX = "discoseg:job:"
# A job's state is created expiring: a submission that fails before its chunks are dispatched
# (and cannot delete it, Redis being away) leaves no hash behind for longer than this.
SUBMISSION_TTL_S = 3600

# Every script gets the job's keys (_keys: job, done, errors, starts) and expires them together.

# ARGV: index, error ("" for none), now, result ttl. Returns the final state when this call
# finished the job, else "".
_RECORD_IMAGE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return '' end
redis.call('HSET', KEYS[1], 'active_at', ARGV[3])
redis.call('SADD', KEYS[2], ARGV[1])
if ARGV[2] ~= '' then redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
else redis.call('HDEL', KEYS[3], ARGV[1]) end
local state = redis.call('HGET', KEYS[1], 'state')
local total = tonumber(redis.call('HGET', KEYS[1], 'total'))
if (state == 'queued' or state == 'running') and redis.call('SCARD', KEYS[2]) >= total then
  local final = 'succeeded'
  if redis.call('HLEN', KEYS[3]) >= total then final = 'failed' end
  local expires = tonumber(ARGV[3]) + tonumber(ARGV[4])
  redis.call('HSET', KEYS[1], 'state', final, 'finished_at', ARGV[3], 'expires_at', expires)
  for i = 1, #KEYS do redis.call('EXPIREAT', KEYS[i], math.ceil(expires)) end
  return final
end
return ''
"""

# ARGV: from-states (comma separated), to-state, time field, now, result ttl ("" when the new
# state is not final).
_TRANSITION = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return false end
if string.find(',' .. ARGV[1] .. ',', ',' .. state .. ',', 1, true) then
  redis.call('HSET', KEYS[1], 'state', ARGV[2], ARGV[3], ARGV[4])
  if ARGV[5] ~= '' then
    local expires = tonumber(ARGV[4]) + tonumber(ARGV[5])
    redis.call('HSET', KEYS[1], 'expires_at', expires)
    for i = 1, #KEYS do redis.call('EXPIREAT', KEYS[i], math.ceil(expires)) end
  end
  return ARGV[2]
end
return state
"""

# ARGV: now, expires_at.
_MARK_FETCHED = """
if redis.call('HEXISTS', KEYS[1], 'fetched_at') == 1 then return 0 end
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local expires = tonumber(ARGV[2])
local current = tonumber(redis.call('HGET', KEYS[1], 'expires_at'))
if current and current < expires then expires = current end
redis.call('HSET', KEYS[1], 'fetched_at', ARGV[1], 'expires_at', expires)
for i = 1, #KEYS do redis.call('EXPIREAT', KEYS[i], math.ceil(expires)) end
return 1
"""

# ARGV: chunk, now. Returns {state after the call ("" for an unknown job), starts of the chunk
# (0 for a job that is not queued or running)}.
_START_CHUNK = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return {'', 0} end
if state ~= 'queued' and state ~= 'running' then return {state, 0} end
if state == 'queued' then
  state = 'running'
  redis.call('HSET', KEYS[1], 'state', state, 'started_at', ARGV[2])
end
redis.call('HSET', KEYS[1], 'active_at', ARGV[2])
return {state, redis.call('HINCRBY', KEYS[4], ARGV[1], 1)}
"""

# A job that finished already (its chunks ran at once) keeps the expiry of its result.
_CONFIRM = """
local state = redis.call('HGET', KEYS[1], 'state')
if state == 'queued' or state == 'running' then redis.call('PERSIST', KEYS[1]) end
return 1
"""

# ARGV: now, the active_at the claim was decided on.
_CLAIM_REDISPATCH = """
local active_at = tonumber(redis.call('HGET', KEYS[1], 'active_at'))
if not active_at or active_at > tonumber(ARGV[2]) then return 0 end
redis.call('HINCRBY', KEYS[1], 'redispatches', 1)
redis.call('HSET', KEYS[1], 'active_at', ARGV[1])
return 1
"""


def redis_client(url: str) -> redis.Redis:
    """A client that fails fast (about a second) when Redis is away, so routes can say 503."""
    return redis.Redis.from_url(
        url,
        socket_connect_timeout=1.0,
        socket_timeout=5.0,
        retry=Retry(NoBackoff(), 1),
        health_check_interval=10,
        decode_responses=True,
    )


P = ParamSpec("P")
R = TypeVar("R")


def _unavailable_on_redis_error(method: Callable[P, R]) -> Callable[P, R]:
    @wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except redis.RedisError as error:
            raise JobBackendUnavailable(f"Redis does not answer: {error}") from error

    return wrapper


class RedisJobStates:
    def __init__(self, client: redis.Redis, result_ttl_s: float) -> None:
        self.client = client
        self.result_ttl_s = result_ttl_s
        self._record_image = client.register_script(_RECORD_IMAGE)
        self._transition = client.register_script(_TRANSITION)
        self._mark_fetched = client.register_script(_MARK_FETCHED)
        self._start_chunk = client.register_script(_START_CHUNK)
        self._claim_redispatch = client.register_script(_CLAIM_REDISPATCH)
        self._confirm = client.register_script(_CONFIRM)

    @staticmethod
    def _keys(job_id: str) -> list[str]:
        job = f"{_PREFIX}{job_id}"
        return [job, f"{job}:done", f"{job}:errors", f"{job}:starts"]

    @_unavailable_on_redis_error
    def create(self, record: JobRecord) -> None:
        fields = {"state": str(record.state), "total": record.total,
                  "created_at": record.created_at,
                  "active_at": record.active_at or record.created_at}
        key = self._keys(record.job_id)[0]
        with self.client.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=fields).expire(key, SUBMISSION_TTL_S)
            pipe.execute()

    @_unavailable_on_redis_error
    def confirm(self, job_id: str) -> None:
        self._confirm(keys=self._keys(job_id)[:1])

    @_unavailable_on_redis_error
    def get(self, job_id: str) -> JobRecord | None:
        job_key, done_key, errors_key, _ = self._keys(job_id)
        with self.client.pipeline(transaction=True) as pipe:
            pipe.hgetall(job_key).scard(done_key).hgetall(errors_key)
            fields, done, errors = pipe.execute()
        if not fields:
            return None

        def optional(name: str) -> float | None:
            return float(fields[name]) if name in fields else None

        return JobRecord(
            job_id=job_id,
            state=JobState(fields["state"]),
            total=int(fields["total"]),
            done=int(done),
            errors={int(k): v for k, v in errors.items()},
            created_at=float(fields["created_at"]),
            started_at=optional("started_at"),
            finished_at=optional("finished_at"),
            fetched_at=optional("fetched_at"),
            expires_at=optional("expires_at"),
            active_at=optional("active_at") or float(fields["created_at"]),
            redispatches=int(fields.get("redispatches", 0)),
        )

    @_unavailable_on_redis_error
    def state(self, job_id: str) -> JobState | None:
        value = self.client.hget(self._keys(job_id)[0], "state")
        return None if value is None else JobState(value)

    @_unavailable_on_redis_error
    def start_chunk(self, job_id: str, chunk: int) -> tuple[JobState | None, int]:
        state, starts = self._start_chunk(keys=self._keys(job_id), args=[chunk, time.time()])
        return (JobState(state) if state else None), int(starts)

    @_unavailable_on_redis_error
    def record_image(self, job_id: str, index: int, error: str | None) -> JobState | None:
        final = self._record_image(
            keys=self._keys(job_id), args=[index, error or "", time.time(), self.result_ttl_s]
        )
        return JobState(final) if final else None

    @_unavailable_on_redis_error
    def done_indices(self, job_id: str) -> set[int]:
        return {int(index) for index in self.client.smembers(self._keys(job_id)[1])}

    @_unavailable_on_redis_error
    def claim_redispatch(self, job_id: str, active_at: float) -> bool:
        claimed = self._claim_redispatch(keys=self._keys(job_id), args=[time.time(), active_at])
        return bool(claimed)

    def cancel(self, job_id: str) -> JobRecord | None:
        self._cancel(job_id)
        return self.get(job_id)

    @_unavailable_on_redis_error
    def _cancel(self, job_id: str) -> None:
        self._transition(
            keys=self._keys(job_id),
            args=["queued,running", "cancelled", "finished_at", time.time(), self.result_ttl_s],
        )

    @_unavailable_on_redis_error
    def mark_fetched(self, job_id: str, expires_at: float) -> None:
        self._mark_fetched(keys=self._keys(job_id), args=[time.time(), expires_at])

    @_unavailable_on_redis_error
    def delete(self, job_id: str) -> None:
        self.client.delete(*self._keys(job_id))

    @_unavailable_on_redis_error
    def ping(self) -> None:
        self.client.ping()
