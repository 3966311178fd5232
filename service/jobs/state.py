"""Job state stores: where a job's state and progress live.

Both stores make progress idempotent: an image is recorded by its index, so a chunk that runs
twice (re-delivered after its worker was lost) counts each image once, and the record whose
index completes the set moves the job to its final state. `FileJobStates` (embedded backend)
keeps one `state.json` per job folder; `RedisJobStates` (Celery backend) is in redis_state.py.
"""

import json
import threading
import time
from typing import Protocol

from service.jobs.model import JobRecord, JobState
from service.jobs.store import ResultStore, write_json_atomic

ACTIVE = (JobState.QUEUED, JobState.RUNNING)


class JobBackendUnavailable(RuntimeError):
    """The store behind the jobs (Redis) does not answer; the API says 503 and Retry-After."""


class JobStates(Protocol):
    def create(self, record: JobRecord) -> None: ...

    def get(self, job_id: str) -> JobRecord | None: ...

    def state(self, job_id: str) -> JobState | None: ...

    def mark_running(self, job_id: str) -> JobState | None:
        """queued -> running; returns the state after the call (None for an unknown job)."""

    def record_image(self, job_id: str, index: int, error: str | None) -> None:
        """Image `index` is finished (error: why it failed); finishes the job with its last."""

    def cancel(self, job_id: str) -> JobRecord | None:
        """queued/running -> cancelled; returns the record after the call."""

    def mark_fetched(self, job_id: str, expires_at: float) -> None:
        """Record the first fetch of the result and bring expiry forward to `expires_at`."""

    def delete(self, job_id: str) -> None: ...

    def ping(self) -> None:
        """Raise JobBackendUnavailable when the store does not answer."""


def final_state(total: int, failed: int) -> JobState:
    """A job fails only when no image could be labeled; single bad images never fail it."""
    return JobState.FAILED if failed >= total else JobState.SUCCEEDED


class FileJobStates:
    """`<job_store>/<id>/state.json`, guarded by a lock: the embedded backend runs in one
    process. Survives a restart: unfinished jobs are picked up again from these files."""

    def __init__(self, store: ResultStore, result_ttl_s: float) -> None:
        self.store = store
        self.result_ttl_s = result_ttl_s
        self._lock = threading.Lock()

    def create(self, record: JobRecord) -> None:
        with self._lock:
            self._write(record)

    def get(self, job_id: str) -> JobRecord | None:
        with self._lock:
            return self._read(job_id)

    def state(self, job_id: str) -> JobState | None:
        record = self.get(job_id)
        return None if record is None else record.state

    def mark_running(self, job_id: str) -> JobState | None:
        with self._lock:
            record = self._read(job_id)
            if record is None:
                return None
            if record.state == JobState.QUEUED:
                record.state, record.started_at = JobState.RUNNING, time.time()
                self._write(record)
            return record.state

    def record_image(self, job_id: str, index: int, error: str | None) -> None:
        with self._lock:
            record, done = self.load(job_id)
            if record is None:
                return
            done.add(index)
            record.errors.pop(index, None)
            if error is not None:
                record.errors[index] = error
            record.done = len(done)
            if record.state in ACTIVE and record.done >= record.total:
                record.state = final_state(record.total, len(record.errors))
                record.finished_at = time.time()
                record.expires_at = record.finished_at + self.result_ttl_s
            self._write(record, done)

    def cancel(self, job_id: str) -> JobRecord | None:
        with self._lock:
            record = self._read(job_id)
            if record is not None and record.state in ACTIVE:
                record.state, record.finished_at = JobState.CANCELLED, time.time()
                record.expires_at = record.finished_at + self.result_ttl_s
                self._write(record)
            return record

    def mark_fetched(self, job_id: str, expires_at: float) -> None:
        with self._lock:
            record = self._read(job_id)
            if record is not None and record.fetched_at is None:
                record.fetched_at = time.time()
                record.expires_at = min(record.expires_at or expires_at, expires_at)
                self._write(record)

    def delete(self, job_id: str) -> None:
        with self._lock:
            (self.store.job_dir(job_id) / "state.json").unlink(missing_ok=True)

    def ping(self) -> None:
        if not self.store.root.is_dir():
            raise JobBackendUnavailable(f"the job store {self.store.root} is not a folder")

    def load(self, job_id: str) -> tuple[JobRecord | None, set[int]]:
        """The job's record and the indices of its finished images."""
        path = self.store.job_dir(job_id) / "state.json"
        if not path.is_file():
            return None, set()
        values = json.loads(path.read_text())
        done = set(values.pop("done_indices"))
        values["state"] = JobState(values["state"])
        values["errors"] = {int(k): v for k, v in values["errors"].items()}
        return JobRecord(**values), done

    def _read(self, job_id: str) -> JobRecord | None:
        return self.load(job_id)[0]

    def _write(self, record: JobRecord, done: set[int] | None = None) -> None:
        values = {**record.__dict__, "state": str(record.state)}
        values["done_indices"] = sorted(done if done is not None else self.load(record.job_id)[1])
        write_json_atomic(self.store.job_dir(record.job_id) / "state.json", values)
