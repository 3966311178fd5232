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

Nothing is stuck: a chunk whose message the broker lost (Redis failing between a chunk's
delivery and its end) is found by `recover_lost_chunks` once its job shows no sign of life for
the redelivery timeout, and dispatched again; after MAX_REDISPATCHES losses its images are
recorded as failed, with the reason, so the job finishes.
"""

import logging
import threading
import time
import uuid
from collections.abc import Iterable

from prometheus_client import Gauge

from service.core.config import Settings
from service.jobs.chunks import ChunkContext, fail_images
from service.jobs.record import ImageItem, JobRecord, JobSpec, JobState, LabelOptions
from service.jobs.state import ACTIVE, JobBackendUnavailable, JobStates
from service.jobs.store import ResultStore

logger = logging.getLogger(__name__)

_ORPHAN_GRACE_S = 3600.0  # a job folder without a state record is a submission in progress
_GAUGE_INTERVAL_S = 5.0
_SWEEP_INTERVAL_S = 60.0
MAX_REDISPATCHES = 3


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
        self.context = ChunkContext(store=store, states=states, data_root=settings.data_root,
                                    max_image_pixels=settings.max_image_pixels)
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
            self.states.confirm(job_id)
        except BaseException:
            self._forget(job_id)
            raise
        logger.info("job %s submitted: %d images, hints %s", job_id, spec.total,
                    options.hints)
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
        """Cancel a queued or running job: its pending chunks do not run, a running chunk
        stops before its next image, and its inputs are deleted. A finished job (a cancelled
        one included) is deleted with its results instead, and None returned."""
        found = self.status(job_id)
        if found is None:
            return None
        if found[0].state in ACTIVE:
            record = self.states.cancel(job_id)
            if record is not None and record.state == JobState.CANCELLED:
                self.store.delete_inputs(job_id)
                logger.info("job %s cancelled", job_id)
                return record
        self._forget(job_id)
        logger.info("job %s deleted", job_id)
        return None

    def sweep(self) -> int:
        """Delete expired jobs and abandoned job folders; returns how many were deleted."""
        now, deleted = time.time(), 0
        for job_id in self.store.job_ids():
            record = self.states.get(job_id)
            job_dir = self.store.job_dir(job_id)
            spec_path = job_dir / "spec.json"
            try:
                age = now - (spec_path if spec_path.exists() else job_dir).stat().st_mtime
            except FileNotFoundError:  # deleted meanwhile
                continue
            expired = record is not None and record.expires_at is not None \
                and record.expires_at < now
            if expired or (record is None and age > _ORPHAN_GRACE_S):
                self._forget(job_id)
                deleted += 1
        return deleted

    def recover_lost_chunks(self) -> int:
        """Dispatch again the chunks of active jobs that are neither finished nor held by the
        executor (lost), once their job shows no sign of life for the redelivery timeout; a job
        that lost chunks MAX_REDISPATCHES times gets their images recorded as failed instead.
        Returns how many chunks were dispatched again or failed."""
        now, held, count = time.time(), None, 0
        for job_id in self.store.job_ids():
            record = self.states.get(job_id)
            if (record is None or record.state not in ACTIVE
                    or now - record.active_at < self.settings.redelivery_timeout_s):
                continue
            spec = self.store.read_spec(job_id)
            if spec is None:
                continue
            if held is None:  # before `done`: a chunk finishing in between is not "lost"
                held = self.chunks_held()
            done = self.states.done_indices(job_id)
            lost = [c for c in spec.unfinished_chunks(done) if (job_id, c) not in held]
            if not lost or not self.states.claim_redispatch(job_id, record.active_at):
                continue
            count += len(lost)
            if record.redispatches >= MAX_REDISPATCHES:
                reason = (f"the chunk holding this image was lost {record.redispatches + 1} "
                          "times (the job queue failed each time); submit the image again")
                items = [item for c in lost for item in spec.chunk(c) if item.index not in done]
                fail_images(self.context, job_id, items, reason)
            else:
                logger.warning("job %s: chunks %s were lost; dispatching them again", job_id, lost)
                self.dispatch_chunks(job_id, lost)
        return count

    def start(self, queue_depth: Gauge | None = None) -> None:
        """Start the maintenance thread: queue depth gauge, the expiry sweep and the recovery
        of lost chunks."""
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
        self.dispatch_chunks(spec.job_id, range(spec.num_chunks))

    def dispatch_chunks(self, job_id: str, chunks: Iterable[int]) -> None:
        raise NotImplementedError

    def chunks_held(self) -> set[tuple[str, int]]:
        """(job id, chunk) of every chunk waiting or running in the executor."""
        raise NotImplementedError

    def queue_depth(self) -> int:
        """Chunks waiting to run (not counting those running)."""
        raise NotImplementedError

    def workers_check(self) -> str | None:
        """"ok", or what keeps the workers from running chunks; None where chunks run in the
        API process itself."""
        return None

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
                    self.recover_lost_chunks()
                    next_sweep = time.monotonic() + _SWEEP_INTERVAL_S
            except JobBackendUnavailable as error:
                logger.warning("job maintenance skipped: %s", error)
            except Exception:
                logger.exception("job maintenance failed")
            self._stop.wait(_GAUGE_INTERVAL_S)

