"""The embedded job backend: no service besides the API process.

Chunks run one at a time on a thread of the API process (the model already uses every core;
a second chunk in parallel would only compete with the first). State lives in files under
settings.job_store (FileJobStates), next to the results, so nothing is lost when the process
dies: at start, unfinished jobs are picked up again and their unfinished chunks run again.
Cancelled jobs' pending chunks are skipped when their turn comes.
"""

import logging
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor

from prometheus_client import Gauge

from service.core.config import Settings
from service.jobs.backend import JobBackend
from service.jobs.chunks import LabelingRuntime, run_chunk
from service.jobs.state import ACTIVE, FileJobStates
from service.jobs.store import ResultStore

logger = logging.getLogger(__name__)


class EmbeddedBackend(JobBackend):
    name = "embedded"

    def __init__(self, settings: Settings, runtime: Callable[[], LabelingRuntime]) -> None:
        store = ResultStore(settings.job_store)
        store.root.mkdir(parents=True, exist_ok=True)
        super().__init__(settings, FileJobStates(store, settings.job_result_ttl_s), store)
        self.runtime = runtime
        self._executor: ThreadPoolExecutor | None = None
        self._waiting: Counter[tuple[str, int]] = Counter()
        self._running: Counter[tuple[str, int]] = Counter()
        self._lock = threading.Lock()

    def start(self, queue_depth: Gauge | None = None) -> None:
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="discoseg-jobs")
        for job_id in self.store.job_ids():
            record = self.states.get(job_id)
            spec = self.store.read_spec(job_id)
            if record is None or spec is None or record.state not in ACTIVE:
                continue
            unfinished = spec.unfinished_chunks(self.states.done_indices(job_id))
            logger.info("resuming job %s: %d chunk(s) left", job_id, len(unfinished))
            self.dispatch_chunks(job_id, unfinished)
        super().start(queue_depth)

    def stop(self) -> None:
        super().stop()
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=True)
            self._executor = None

    def dispatch_chunks(self, job_id: str, chunks: Iterable[int]) -> None:
        if self._executor is None:
            raise RuntimeError("the embedded job backend is not started")
        for chunk in chunks:
            with self._lock:
                self._waiting[(job_id, chunk)] += 1
            self._executor.submit(self._run, job_id, chunk)

    def chunks_held(self) -> set[tuple[str, int]]:
        with self._lock:
            return set(self._waiting) | set(self._running)

    def queue_depth(self) -> int:
        with self._lock:
            return self._waiting.total()

    def _run(self, job_id: str, chunk: int) -> None:
        key = (job_id, chunk)
        with self._lock:
            self._waiting -= Counter([key])
            self._running[key] += 1
        try:
            run_chunk(self.context, self.runtime(), job_id, chunk)
        except Exception:
            logger.exception("job %s chunk %d failed", job_id, chunk)
        finally:
            with self._lock:
                self._running -= Counter([key])
