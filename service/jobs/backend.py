"""The job backend: what the API asks of batch jobs, whichever way chunks are executed.

`JobBackend` holds what both backends share (the result store, the state store, submission,
status, results, cancel, expiry); `EmbeddedBackend` (embedded.py) runs chunks on a thread of
the API process, `CeleryBackend` (celery_backend.py) sends them to Celery workers through
Redis. `service.jobs.create_backend(settings)` picks one: Celery when settings.redis_url is set.

Result lifetime: a finished job (its state and its result files) is kept for job_result_ttl_s
after it finished. The first successful result download marks it fetched and brings its expiry
forward to at most job_fetched_ttl_s later, so a client may download again (a dropped
connection) but results do not pile up. Expired jobs answer 404 and a background sweep deletes
their files.
"""

import logging
import threading
import time
import uuid

from prometheus_client import Gauge

from service.core.config import Settings
from service.jobs.model import ImageItem, JobRecord, JobSpec, JobState, LabelOptions
from service.jobs.state import ACTIVE, JobBackendUnavailable, JobStates
from service.jobs.store import ResultStore

logger = logging.getLogger(__name__)

_ORPHAN_GRACE_S = 3600.0  # a job folder without a state record is a submission in progress
_GAUGE_INTERVAL_S = 5.0
_SWEEP_INTERVAL_S = 60.0


class JobNotFinished(RuntimeError):
    def __init__(self, record: JobRecord) -> None:
        super().__init__(f"job {record.job_id} is {record.state}; its result is not ready")
        self.record = record


class JobBackend:
    """Shared part of both backends; subclasses say how chunks are executed."""

    name = "base"

    def __init__(self, settings: Settings, states: JobStates, store: ResultStore) -> None:
        self.settings = settings
        self.states = states
        self.store = store
        self._stop = threading.Event()
        self._maintenance: threading.Thread | None = None

    @staticmethod
    def new_job_id() -> str:
        return uuid.uuid4().hex

    def submit(self, job_id: str, items: list[ImageItem], options: LabelOptions) -> JobRecord:
        """Queue a job whose inputs are staged under store.input_dir(job_id). On failure the
        job's files are removed and the error is raised."""
        spec = JobSpec(job_id=job_id, items=items, options=options,
                       chunk_size=self.settings.job_chunk_size, created_at=time.time())
        record = JobRecord(job_id=job_id, state=JobState.QUEUED, total=spec.total,
                           created_at=spec.created_at)
        try:
            self.store.write_spec(spec)
            self.states.create(record)
            self.dispatch(spec)
        except BaseException:
            self._forget(job_id)
            raise
        return record

    def status(self, job_id: str) -> tuple[JobRecord, JobSpec] | None:
        """The job's record and spec; None for an unknown or expired job."""
        record = self.states.get(job_id)
        if record is None or (record.expires_at is not None and record.expires_at < time.time()):
            return None
        spec = self.store.read_spec(job_id)
        return None if spec is None else (record, spec)

    def result(self, job_id: str) -> dict | None:
        """The COCO result of a succeeded or failed job (None: unknown); marks it fetched.
        Raises JobNotFinished while it runs and for a cancelled job."""
        found = self.status(job_id)
        if found is None:
            return None
        record, _ = found
        if record.state in ACTIVE or record.state == JobState.CANCELLED:
            raise JobNotFinished(record)
        result = self.store.coco_result(job_id)
        self.states.mark_fetched(job_id, time.time() + self.settings.job_fetched_ttl_s)
        return result

    def cancel(self, job_id: str) -> JobRecord | None:
        """Cancel a queued or running job: its pending chunks do not run and a running chunk
        stops before its next image. A finished job is deleted with its results instead."""
        if self.status(job_id) is None:
            return None
        record = self.states.cancel(job_id)
        if record is not None and record.state != JobState.CANCELLED:
            self._forget(job_id)
        return record

    def sweep(self) -> int:
        """Delete expired jobs and abandoned job folders; returns how many were deleted."""
        now, deleted = time.time(), 0
        for job_id in self.store.job_ids():
            record = self.states.get(job_id)
            spec_path = self.store.job_dir(job_id) / "spec.json"
            age = now - (spec_path.stat().st_mtime if spec_path.exists() else now)
            expired = record is not None and record.expires_at is not None \
                and record.expires_at < now
            if expired or (record is None and age > _ORPHAN_GRACE_S):
                self._forget(job_id)
                deleted += 1
        return deleted

    def start(self, queue_depth: Gauge | None = None) -> None:
        """Start the maintenance thread: queue depth gauge and the expiry sweep."""
        self._stop.clear()
        self._maintenance = threading.Thread(
            target=self._maintain, args=(queue_depth,), name=f"discoseg-jobs-{self.name}",
            daemon=True,
        )
        self._maintenance.start()

    def stop(self) -> None:
        self._stop.set()
        if self._maintenance is not None:
            self._maintenance.join(timeout=10)
            self._maintenance = None

    def ping(self) -> None:
        """Raise JobBackendUnavailable when jobs cannot be taken now."""
        self.states.ping()

    def dispatch(self, spec: JobSpec) -> None:
        raise NotImplementedError

    def queue_depth(self) -> int:
        """Chunks waiting to run (not counting those running)."""
        raise NotImplementedError

    def _forget(self, job_id: str) -> None:
        try:
            self.states.delete(job_id)
        finally:
            self.store.delete(job_id)

    def _maintain(self, queue_depth: Gauge | None) -> None:
        next_sweep = 0.0
        while not self._stop.is_set():
            try:
                if queue_depth is not None:
                    queue_depth.set(self.queue_depth())
                if time.monotonic() >= next_sweep:
                    self.sweep()
                    next_sweep = time.monotonic() + _SWEEP_INTERVAL_S
            except JobBackendUnavailable as error:
                logger.warning("job maintenance skipped: %s", error)
            except Exception:
                logger.exception("job maintenance failed")
            self._stop.wait(_GAUGE_INTERVAL_S)

