"""Running one chunk of a job: the work both backends share.

A chunk labels its images one after another and records each image as soon as it is done, so
progress moves within a chunk and a chunk interrupted anywhere (worker killed, time limit,
Redis away) can simply run again: it skips the images already recorded, rewrites the outcome
files of the others, and the state store counts each image once.
A bad image (unreadable, too large, a hint naming an unknown class) becomes that image's error
and the chunk goes on; a chunk that is cancelled stops before its next image.
"""

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from models.structures import InstanceSet
from models.working_frame import FramedInstances, framed
from service.imaging import decode_image
from service.jobs.record import ImageItem, JobState, LabelOptions
from service.jobs.staging import image_path
from service.jobs.state import JobBackendUnavailable, JobStates
from service.jobs.store import ResultStore
from training.data.coco import coco_mask_fields

logger = logging.getLogger(__name__)

MAX_CHUNK_STARTS = 5


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
    """Label the images of chunk `chunk` of job `job_id` that are not finished yet; returns how
    many were processed.

    A job that is unknown (expired, deleted) or finished runs nothing. A chunk started more
    than MAX_CHUNK_STARTS times (its worker was lost each time: killed, out of memory) records
    its images as failed instead of running them again. An exception that is not an image's
    own fault (e.g. the soft time limit) records the chunk's remaining images as failed, so the
    job still finishes, and is raised again. JobBackendUnavailable is raised as it is: nothing
    can be recorded, the chunk must run again.
    """
    started = _start(context, job_id, chunk)
    if started is None:
        return 0
    options, items, starts = started
    if starts > MAX_CHUNK_STARTS:
        reason = (f"the chunk holding this image was started {starts - 1} times and never "
                  "finished: its worker was lost each time (killed, or out of memory)")
        return fail_images(context, job_id, items, reason)
    context.store.write_categories(job_id, list(runtime.classes))
    for position, item in enumerate(items):
        if context.states.state(job_id) != JobState.RUNNING:
            return position
        try:
            _label_image(context, runtime, job_id, options, item)
        except JobBackendUnavailable:
            raise  # nothing can be recorded: the chunk runs again once the store answers
        except Exception as error:
            reason = f"the chunk was interrupted: {type(error).__name__}: {error}"
            fail_images(context, job_id, items[position:], reason)
            raise
    return len(items)


def fail_chunk(context: ChunkContext, job_id: str, chunk: int, reason: str) -> int:
    """Record the unfinished images of a chunk that cannot run as failed with `reason`."""
    started = _start(context, job_id, chunk)
    return 0 if started is None else fail_images(context, job_id, started[1], reason)


def fail_images(context: ChunkContext, job_id: str, items: list[ImageItem], reason: str) -> int:
    """Record `items` as failed with `reason`; returns how many."""
    for item in items:
        _record_error(context, job_id, item, reason)
    return len(items)


def _start(
    context: ChunkContext, job_id: str, chunk: int
) -> tuple[LabelOptions, list[ImageItem], int] | None:
    """Start the chunk: the job's options, the chunk's images not finished yet and how often
    the chunk was started (this start included); None when the job is unknown or no longer
    running."""
    spec = context.store.read_spec(job_id)
    if spec is None:
        return None
    state, starts = context.states.start_chunk(job_id, chunk)
    if state != JobState.RUNNING:
        return None
    done = context.states.done_indices(job_id)
    return spec.options, [item for item in spec.chunk(chunk) if item.index not in done], starts


def _label_image(
    context: ChunkContext, runtime: LabelingRuntime, job_id: str, options: LabelOptions,
    item: ImageItem,
) -> None:
    if item.error is not None:
        _record_error(context, job_id, item, item.error)
        return
    try:
        path = image_path(item, context.store.input_dir(job_id), context.data_root)
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
    except OSError as error:  # this image's fault: record it, go on
        _record_error(context, job_id, item, f"{error.strerror or error}: {item.file_name}")
        return
    except ValueError as error:
        _record_error(context, job_id, item, str(error) or type(error).__name__)
        return
    annotations = coco_annotations(instances, item.image_id)
    context.store.write_labels(job_id, item, image.shape[:2], annotations)
    _record(context, job_id, item.index, None)


def _record_error(context: ChunkContext, job_id: str, item: ImageItem, error: str) -> None:
    error = _without_server_folders(context, error)
    # repr: client file names may hold line breaks that would forge log lines.
    logger.info("job %s image %d %r: %r", job_id, item.index, item.file_name, error)
    context.store.write_error(job_id, item, error)
    _record(context, job_id, item.index, error)


def _record(context: ChunkContext, job_id: str, index: int, error: str | None) -> None:
    final = context.states.record_image(job_id, index, error)
    record = None if final is None else context.states.get(job_id)
    if record is not None:
        logger.info("job %s %s: %d images, %d failed", job_id, final, record.total,
                    len(record.errors))


def _without_server_folders(context: ChunkContext, message: str) -> str:
    """`message` with the data root and the job store removed from the paths it names: job
    errors name images as the client knows them, never where the server keeps them."""
    for folder in (context.data_root, context.store.root):
        message = message.replace(f"{Path(folder).resolve()}{os.sep}", "")
        message = message.replace(f"{Path(folder)}{os.sep}", "")
    return message


def coco_annotations(instances: InstanceSet | FramedInstances, image_id: int) -> list[dict]:
    """COCO annotations (RLE masks, a score each, no ids) of one image's instances, at the
    image's size, one mask at a time."""
    instances = framed(instances)
    masks = instances.masks(column_major=True)
    labels = instances.labels.tolist()
    scores = instances.scores.tolist()
    return [
        {"image_id": image_id, "category_id": int(label), "score": float(score), "iscrowd": 0,
         **coco_mask_fields(mask.numpy())}
        for mask, label, score in zip(masks, labels, scores, strict=True)
    ]
