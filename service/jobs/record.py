"""What a batch labeling job is: its spec (the images, their hints, the labeling options), its
states, and the status the API reports.

A job's spec is written once, at submission, to the result store; its state and progress live
in the job backend's state store (Redis for Celery, files for the embedded backend).
"""

import re
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Literal

from models.thresholds import SCORE_THRESHOLD

HintMode = Literal["none", "tags", "boxes"]
ImageSource = Literal["upload", "data_root"]

_JOB_ID = re.compile(r"^[0-9a-f]{32}$")


class JobState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"  # every image failed: nothing could be labeled
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobState.SUCCEEDED, JobState.FAILED, JobState.CANCELLED)


def is_job_id(value: str) -> bool:
    """Job ids are uuid4 hex strings; anything else is refused before it reaches a path or key."""
    return bool(_JOB_ID.match(value))


@dataclass(frozen=True)
class ImageItem:
    """One image of a job.

    path: relative to the job's input folder (source "upload") or to settings.data_root
        (source "data_root"); resolved and checked again where it is read.
    tags: class names present in the image, or None.
    boxes: [{"label": name, "bbox": [x0, y0, x1, y1] pixels}], or None.
    error: a problem found at staging (e.g. a hint with an unknown category id); the image is
        then recorded as failed without running the model.
    """

    index: int
    image_id: int
    file_name: str
    source: ImageSource
    path: str
    tags: list[str] | None = None
    boxes: list[dict] | None = None
    error: str | None = None


@dataclass(frozen=True)
class LabelOptions:
    hints: HintMode = "none"
    score_threshold: float = SCORE_THRESHOLD
    max_instances: int = 100
    seed: int = 0


@dataclass(frozen=True)
class JobSpec:
    job_id: str
    items: list[ImageItem]
    options: LabelOptions
    chunk_size: int
    created_at: float

    @property
    def total(self) -> int:
        return len(self.items)

    @property
    def num_chunks(self) -> int:
        return -(-self.total // self.chunk_size)

    def chunk(self, chunk_index: int) -> list[ImageItem]:
        """The images of chunk `chunk_index` (consecutive runs of chunk_size images)."""
        if not 0 <= chunk_index < self.num_chunks:
            raise ValueError(f"job {self.job_id} has no chunk {chunk_index}")
        start = chunk_index * self.chunk_size
        return self.items[start : start + self.chunk_size]

    def unfinished_chunks(self, done: set[int]) -> list[int]:
        """The chunks with an image whose index is not in `done`."""
        return [c for c in range(self.num_chunks)
                if any(item.index not in done for item in self.chunk(c))]

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> "JobSpec":
        return cls(
            job_id=values["job_id"],
            items=[ImageItem(**item) for item in values["items"]],
            options=LabelOptions(**values["options"]),
            chunk_size=int(values["chunk_size"]),
            created_at=float(values["created_at"]),
        )


@dataclass
class JobRecord:
    """State and progress of a job as its state store keeps them.

    done: images finished (labeled or failed), each counted once however often it ran.
    errors: image index -> why that image failed.
    expires_at: when the job and its results are deleted (None while it is not finished).
    active_at: the job's last sign of life: submitted, a chunk started, an image recorded or
        lost chunks dispatched again.
    redispatches: how often chunks of the job were found lost and dispatched again.
    """

    job_id: str
    state: JobState
    total: int
    done: int = 0
    errors: dict[int, str] = field(default_factory=dict)
    created_at: float = 0.0
    started_at: float | None = None
    finished_at: float | None = None
    fetched_at: float | None = None
    expires_at: float | None = None
    active_at: float = 0.0
    redispatches: int = 0
