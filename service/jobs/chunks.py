"""Running one chunk of a job: the work both backends share.

A chunk labels its images one after another and records each image as soon as it is done, so
progress moves within a chunk and a chunk interrupted anywhere (worker killed, time limit) can
simply run again: it rewrites its own outcome files and the state store counts each image once.
A bad image (unreadable, too large, a hint naming an unknown class) becomes that image's error
and the chunk goes on; a chunk that is cancelled stops before its next image.
"""

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from service.imaging import decode_image
from service.jobs.model import ImageItem, JobSpec, JobState
from service.jobs.staging import image_path
from service.jobs.state import JobBackendUnavailable, JobStates
from service.jobs.store import ResultStore
from training.data.coco import encode_mask

logger = logging.getLogger(__name__)


class LabelingRuntime(Protocol):
    """What a chunk needs of service.runtime.ModelRuntime."""

    @property
    def classes(self) -> list[str]: ...

    def segment(self, image: np.ndarray, *, score_threshold: float, max_instances: int): ...

    def pseudo_labels(
        self, image: np.ndarray, *, tags: list[str] | None = None,
        boxes: list[dict] | None = None, k: int, seed: int | None,
    ) -> list: ...


@dataclass(frozen=True)
class ChunkContext:
    """Where a chunk reads and writes: the same for every chunk of a process."""

    store: ResultStore
    states: JobStates
    data_root: Path
    max_image_pixels: int


def run_chunk(context: ChunkContext, runtime: LabelingRuntime, job_id: str, chunk: int) -> int:
    """Label the images of chunk `chunk` of job `job_id`; returns how many were processed.

    A job that is unknown (expired, deleted) or finished runs nothing. An exception that is not
    an image's own fault (e.g. the soft time limit) records the chunk's remaining images as
    failed, so the job still finishes, and is raised again.
    """
    spec = context.store.read_spec(job_id)
    state = context.states.mark_running(job_id)
    if spec is None or state != JobState.RUNNING:
        return 0
    context.store.write_categories(job_id, list(runtime.classes))
    items = spec.chunk(chunk)
    for position, item in enumerate(items):
        if context.states.state(job_id) != JobState.RUNNING:
            return position
        try:
            _label_image(context, runtime, spec, item)
        except JobBackendUnavailable:
            raise  # nothing can be recorded; the chunk's message is delivered again
        except Exception as error:
            reason = f"the chunk was interrupted: {type(error).__name__}: {error}"
            for rest in items[position:]:
                _record_error(context, job_id, rest, reason)
            raise
    return len(items)


def _label_image(
    context: ChunkContext, runtime: LabelingRuntime, spec: JobSpec, item: ImageItem
) -> None:
    if item.error is not None:
        _record_error(context, spec.job_id, item, item.error)
        return
    options = spec.options
    try:
        path = image_path(item, context.store.input_dir(spec.job_id), context.data_root)
        image = decode_image(path.read_bytes(), max_pixels=context.max_image_pixels)
        if options.hints == "none":
            instances = runtime.segment(
                image, score_threshold=options.score_threshold,
                max_instances=options.max_instances,
            )
        else:
            hints = {"tags": item.tags} if options.hints == "tags" else {"boxes": item.boxes}
            # The top sample of the conditional network is the image's labels.
            instances = runtime.pseudo_labels(image, k=1, seed=options.seed, **hints)[0]
    except (ValueError, OSError) as error:  # this image's fault: record it, go on
        _record_error(context, spec.job_id, item, str(error) or type(error).__name__)
        return
    annotations = coco_annotations(instances, item.image_id)
    context.store.write_labels(spec.job_id, item, image.shape[:2], annotations)
    context.states.record_image(spec.job_id, item.index, None)


def _record_error(context: ChunkContext, job_id: str, item: ImageItem, error: str) -> None:
    logger.info("job %s image %d (%s): %s", job_id, item.index, item.file_name, error)
    context.store.write_error(job_id, item, error)
    context.states.record_image(job_id, item.index, error)


def coco_annotations(instances, image_id: int) -> list[dict]:
    """COCO annotations (RLE masks, a score each, no ids) of one image's instances: a
    runtime Prediction (numpy) or an InstanceSet (tensors)."""
    masks = np.asarray(instances.masks, dtype=bool)  # (N, H, W)
    labels = instances.labels.tolist()
    scores = instances.scores.tolist()
    return [
        {"image_id": image_id, "category_id": int(label), "score": float(score), "iscrowd": 0,
         **encode_mask(mask)}
        for mask, label, score in zip(masks, labels, scores, strict=True)
    ]
