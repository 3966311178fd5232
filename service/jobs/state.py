"""Job state stores: where a job's state and progress live.

Both stores make progress idempotent: an image is recorded by its index, so a chunk that runs
twice (re-delivered after its worker was lost) counts each image once, and the record whose
index completes the set moves the job to its final state. `FileJobStates` (embedded backend)
keeps one `state.json` per job folder; `RedisJobStates` (Celery backend) is in redis_state.py.
"""

import json
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from service.jobs.record import JobRecord, JobState
from service.jobs.store import ResultStore, write_json_atomic

ACTIVE = (JobState.QUEUED, JobState.RUNNING)


class JobBackendUnavailable(RuntimeError):
    """The store behind the jobs (Redis) does not answer; the API says 503 and Retry-After."""


class JobStates(Protocol):
    def create(self, record: JobRecord) -> None:
        """A job being submitted: its state is kept until `confirm`, or for a while only."""

    def confirm(self, job_id: str) -> None:
        """The job's chunks were dispatched: keep its state until it finishes. A submission
        that fails before this leaves nothing behind, even when the store could not be
        told to delete the job then (Redis away)."""

    def get(self, job_id: str) -> JobRecord | None: ...

    def state(self, job_id: str) -> JobState | None: ...

    def start_chunk(self, job_id: str, chunk: int) -> tuple[JobState | None, int]:
        """A worker starts chunk `chunk`: queued -> running, and the job shows a sign of life.
        Returns the state after the call (None for an unknown job) and how often this chunk
        has been started, this time included."""

    def record_image(self, job_id: str, index: int, error: str | None) -> JobState | None:
        """Image `index` is finished (error: why it failed); finishes the job with its last.
        Returns the job's final state when this call finished it, else None."""

    def done_indices(self, job_id: str) -> set[int]:
        """The indices of the job's finished images."""

    def claim_redispatch(self, job_id: str, active_at: float) -> bool:
        """Claim the handling of the job's lost chunks (dispatching them again, or failing
        them): counted in `redispatches` and as a sign of life. Refused (False) when the job
        showed a sign of life after `active_at`, e.g. another API process claimed it first."""

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
            record.active_at = record.active_at or record.created_at
            self._write(_FileState(record))

    def confirm(self, job_id: str) -> None:
        """Nothing to do: the state file lives in the job's folder, which a failed submission
        deletes."""

    def get(self, job_id: str) -> JobRecord | None:
        with self._lock:
            found = self._read(job_id)
            return None if found is None else found.record

    def state(self, job_id: str) -> JobState | None:
        record = self.get(job_id)
        return None if record is None else record.state

    def start_chunk(self, job_id: str, chunk: int) -> tuple[JobState | None, int]:
        with self._lock:
            found = self._read(job_id)
            if found is None:
                return None, 0
            record, now = found.record, time.time()
            if record.state not in ACTIVE:
                return record.state, 0
            if record.state == JobState.QUEUED:
                record.state, record.started_at = JobState.RUNNING, now
            found.chunk_starts[chunk] = found.chunk_starts.get(chunk, 0) + 1
            record.active_at = now
            self._write(found)
            return record.state, found.chunk_starts[chunk]

    def record_image(self, job_id: str, index: int, error: str | None) -> JobState | None:
        with self._lock:
            found = self._read(job_id)
            if found is None:
                return None
            record = found.record
            found.done.add(index)
            record.errors.pop(index, None)
            if error is not None:
                record.errors[index] = error
            record.done = len(found.done)
            record.active_at = time.time()
            finished = record.state in ACTIVE and record.done >= record.total
            if finished:
                record.state = final_state(record.total, len(record.errors))
                record.finished_at = record.active_at
                record.expires_at = record.finished_at + self.result_ttl_s
            self._write(found)
            return record.state if finished else None

    def done_indices(self, job_id: str) -> set[int]:
        with self._lock:
            found = self._read(job_id)
            return set() if found is None else set(found.done)

    def claim_redispatch(self, job_id: str, active_at: float) -> bool:
        with self._lock:
            found = self._read(job_id)
            if found is None or found.record.active_at > active_at:
                return False
            found.record.redispatches += 1
            found.record.active_at = time.time()
            self._write(found)
            return True

    def cancel(self, job_id: str) -> JobRecord | None:
        with self._lock:
            found = self._read(job_id)
            if found is None:
                return None
            record = found.record
            if record.state in ACTIVE:
                record.state, record.finished_at = JobState.CANCELLED, time.time()
                record.expires_at = record.finished_at + self.result_ttl_s
                self._write(found)
            return record

    def mark_fetched(self, job_id: str, expires_at: float) -> None:
        with self._lock:
            found = self._read(job_id)
            if found is not None and found.record.fetched_at is None:
                record = found.record
                record.fetched_at = time.time()
                record.expires_at = min(record.expires_at or expires_at, expires_at)
                self._write(found)

    def delete(self, job_id: str) -> None:
        with self._lock:
            self._path(job_id).unlink(missing_ok=True)

    def ping(self) -> None:
        if not self.store.root.is_dir():
            raise JobBackendUnavailable(f"the job store {self.store.root} is not a folder")

    def _path(self, job_id: str) -> Path:
        return self.store.job_dir(job_id) / "state.json"

    def _read(self, job_id: str) -> "_FileState | None":
        path = self._path(job_id)
        if not path.is_file():
            return None
        values = json.loads(path.read_text())
        done = set(values.pop("done_indices"))
        starts = {int(k): v for k, v in values.pop("chunk_starts", {}).items()}
        values["state"] = JobState(values["state"])
        values["errors"] = {int(k): v for k, v in values["errors"].items()}
        return _FileState(JobRecord(**values), done, starts)

    def _write(self, found: "_FileState") -> None:
        values = {**found.record.__dict__, "state": str(found.record.state),
                  "done_indices": sorted(found.done), "chunk_starts": found.chunk_starts}
        write_json_atomic(self._path(found.record.job_id), values)


@dataclass
class _FileState:
    """What one state.json holds."""

    record: JobRecord
    done: set[int] = field(default_factory=set)
    chunk_starts: dict[int, int] = field(default_factory=dict)
