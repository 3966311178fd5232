"""The model runtime: one loaded bundle per process, shared by every request.

Model calls run in one dedicated worker thread, never on the event loop. A call is admitted
only while fewer than `max_inflight` calls are queued or running; beyond that `submit` raises
`Overloaded` at once (the API answers 503 + Retry-After) instead of queueing without bound.
Retry-After is the expected time until the calls queued and running are done, each expected
from its operation's measured seconds per unit of work (megapixels of the image's working copy
times samples: the networks see every image at most at the bundle's working size).
One thread, because on a CPU the networks already use every core through torch's intra-op
threads, and on a GPU calls serialise on the device anyway.

Segment proposals are cached by image content, boxes and proposal settings in a bounded LRU,
so that asking for more samples of the same image costs no second proposal pass.
"""

import asyncio
import hashlib
import math
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from pathlib import Path
from typing import TypeVar

import numpy as np
import torch

from models.annotations import Annotation, BoxAnnotation, boxes_from_records, tags_from_names
from models.bundle import ModelBundle, file_digest, load_bundle
from models.delta import delta_matrix
from models.devices import resolve_device
from models.proposals import proposal_key, propose
from models.refinement import PointPrompt, refine
from models.structures import InstanceSet
from models.thresholds import SCORE_THRESHOLD
from models.working_frame import FramedInstances, WorkingFrame
from service.core.config import Settings
from service.metrics import Metrics

T = TypeVar("T")

# Pseudo labels are the most frequent distinct outputs of this many draws per requested
# sample: on the demo's val images (k = 10, true tags) the first one's IoU per instance rose
# from 0.538 (a single draw) to 0.555 and the best of the k from 0.600 to 0.624.
DRAWS_PER_SAMPLE = 4


class Overloaded(RuntimeError):
    """Too many model calls queued or running; retry after `retry_after` seconds."""

    def __init__(self, limit: int, retry_after: int) -> None:
        super().__init__(f"the model is busy ({limit} calls queued or running); retry later")
        self.retry_after = retry_after


class CallEstimates:
    """Expected durations of model calls, and the calls queued or running.

    Per operation, seconds per unit of work is a running average of finished calls (an
    operation not seen yet borrows the mean of the others, or 1 s per unit). Not thread-safe:
    the runtime guards it with its lock.
    """

    def __init__(self) -> None:
        self._seconds_per_unit: dict[str, float] = {}
        self._calls: dict[int, tuple[str, float, float | None]] = {}  # operation, units, start
        self._next_id = 0

    def expected_s(self, operation: str, units: float) -> float:
        rates = self._seconds_per_unit
        default = sum(rates.values()) / len(rates) if rates else 1.0
        return rates.get(operation, default) * units

    def add(self, operation: str, units: float) -> int:
        """Register a queued call; returns its id."""
        self._next_id += 1
        self._calls[self._next_id] = (operation, units, None)
        return self._next_id

    def start(self, call: int, now: float) -> None:
        operation, units, _ = self._calls[call]
        self._calls[call] = (operation, units, now)

    def finish(self, call: int, now: float) -> None:
        """The call ended (or was dropped before it started); a run call updates its rate."""
        operation, units, started = self._calls.pop(call)
        if started is not None and units > 0:
            rate = (now - started) / units
            previous = self._seconds_per_unit.get(operation, rate)
            self._seconds_per_unit[operation] = 0.8 * previous + 0.2 * rate

    def remaining_s(self, now: float) -> float:
        """Expected seconds until every call queued or running is done."""
        total = 0.0
        for operation, units, started in self._calls.values():
            expected = self.expected_s(operation, units)
            total += expected if started is None else max(0.0, expected - (now - started))
        return total


class InconsistentHints(ValueError):
    """No segmentation consistent with the given tags or boxes exists among the proposals."""


def model_version(path: Path) -> str:
    """The bundle's file stem and the start of its SHA-256, e.g. `model-3f2a9c1b7d4e`."""
    return f"{Path(path).stem}-{file_digest(path)}"


class MemoryProposalCache:
    """LRU of proposal masks, bounded by entry count and by bytes (masks are stored bit-packed)."""

    def __init__(self, max_entries: int, max_bytes: int) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._entries: OrderedDict[str, tuple[np.ndarray, tuple[int, ...]]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> torch.Tensor | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None:
                return None
            self._entries.move_to_end(key)
        packed, shape = entry
        count = math.prod(shape)
        return torch.from_numpy(np.unpackbits(packed, count=count).view(bool).reshape(shape))

    def put(self, key: str, proposals: torch.Tensor) -> None:
        packed = np.packbits(proposals.numpy().reshape(-1))
        if self.max_entries == 0 or packed.nbytes > self.max_bytes:
            return
        with self._lock:
            if key in self._entries:
                return
            self._entries[key] = (packed, tuple(proposals.shape))
            self._bytes += packed.nbytes
            while len(self._entries) > self.max_entries or self._bytes > self.max_bytes:
                _, (old, _) = self._entries.popitem(last=False)
                self._bytes -= old.nbytes


class ModelRuntime:
    """The loaded networks, their version, the bounded call queue and the proposal cache."""

    def __init__(
        self,
        bundle: ModelBundle,
        *,
        version: str,
        device: torch.device,
        max_inflight: int = 8,
        proposal_cache_size: int = 64,
        proposal_cache_bytes: int = 256 * 2**20,
        metrics: Metrics | None = None,
    ) -> None:
        self.bundle = bundle
        self.version = version
        self.device = device
        self.max_inflight = max_inflight
        self.metrics = metrics or Metrics()
        self.proposal_cache = MemoryProposalCache(proposal_cache_size, proposal_cache_bytes)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="discoseg-model")
        self._inflight = 0
        self._lock = threading.Lock()
        self._estimates = CallEstimates()

    @classmethod
    def load(cls, settings: Settings, metrics: Metrics | None = None) -> "ModelRuntime":
        """Load the bundle of `settings.model_path` onto `settings.device` and warm it up.

        Raises models.devices.DeviceError, FileNotFoundError or models.bundle.BundleError.
        """
        device = resolve_device(settings.device)
        bundle = load_bundle(settings.model_path, map_location=device)
        runtime = cls(
            bundle,
            version=model_version(settings.model_path),
            device=device,
            max_inflight=settings.max_inflight,
            proposal_cache_size=settings.proposal_cache_size,
            proposal_cache_bytes=settings.proposal_cache_mb * 2**20,
            metrics=metrics,
        )
        runtime.warm_up()
        return runtime

    @property
    def classes(self) -> list[str]:
        return self.bundle.classes

    @property
    def inflight(self) -> int:
        """Model calls queued or running."""
        return self._inflight

    def warm_up(self) -> None:
        """One small prediction, so the first request does not pay for lazy initialisation."""
        self.segment(np.zeros((64, 64, 3), dtype=np.uint8), score_threshold=1.0)

    async def submit(
        self, function: Callable[..., T], *args: object, operation: str, units: float
    ) -> T:
        """Run `function(*args)` on the model thread; raise Overloaded when the queue is full.

        operation, units: what the call is and how much work it is (e.g. `work_units`), from
        which its duration is expected for Retry-After.
        """
        with self._lock:
            if self._inflight >= self.max_inflight:
                retry_after = math.ceil(self._estimates.remaining_s(time.monotonic()))
                raise Overloaded(self.max_inflight, max(1, retry_after))
            self._inflight += 1
            self.metrics.model_calls_in_flight.set(self._inflight)
            call = self._estimates.add(operation, units)
        future = self._executor.submit(self._timed, call, function, *args)
        # Released when the call ends or is cancelled before it starts (client gone).
        future.add_done_callback(partial(self._release, call))
        return await asyncio.wrap_future(future)

    def _timed(self, call: int, function: Callable[..., T], *args: object) -> T:
        with self._lock:
            self._estimates.start(call, time.monotonic())
        return function(*args)

    def _release(self, call: int, _: Future) -> None:
        with self._lock:
            self._inflight -= 1
            self._estimates.finish(call, time.monotonic())
            self.metrics.model_calls_in_flight.set(self._inflight)

    def close(self) -> None:
        self._executor.shutdown(wait=True, cancel_futures=True)

    @torch.inference_mode()
    def segment(
        self,
        image: np.ndarray,
        *,
        score_threshold: float = SCORE_THRESHOLD,
        max_instances: int | None = None,
    ) -> InstanceSet:
        """Instances of the prediction network with score >= score_threshold, best first, at
        most `max_instances` (models.bundle.ModelBundle.segment; proposals cached).

        image: uint8[H, W, 3] RGB. Returns CPU tensors; boxes are the masks' tight boxes.
        """
        with self.metrics.time_model("segment"):
            instances = self.bundle.segment(
                image, score_threshold=score_threshold, proposer=self.proposals
            )
        return instances.subset(torch.arange(len(instances))[:max_instances])

    def frame(self, image: np.ndarray) -> WorkingFrame:
        """The working frame of an uint8[H, W, 3] image: the size the networks see it at."""
        return WorkingFrame.fit(image.shape[:2], self.bundle.working_size)

    def work_units(self, image: np.ndarray) -> float:
        """Megapixels of the image's working copy: what a model call's time grows with."""
        height, width = self.frame(image).size
        return height * width / 1e6

    def proposals(self, image: np.ndarray, boxes: np.ndarray | None = None) -> torch.Tensor:
        """BoolTensor[P, H, W] segment proposals (box-conditioned with boxes), cached."""
        settings = self.bundle.proposal_settings
        key = proposal_key(image, boxes, settings)
        cached = self.proposal_cache.get(key)
        self.metrics.proposal_cache.labels("miss" if cached is None else "hit").inc()
        if cached is not None:
            return cached
        with self.metrics.time_model("proposals"):
            masks = propose(image, boxes, settings=settings)
        self.proposal_cache.put(key, masks)
        return masks

    def hints(
        self,
        image_size: tuple[int, int],
        *,
        tags: list[str] | None = None,
        boxes: list[dict] | None = None,
    ) -> Annotation:
        """The annotation of class-name `tags` or `{"label", "bbox"}` `boxes` (exactly one).

        image_size: (H, W). Raises ValueError naming the problem (unknown class, with the known
        ones; a box outside the image or empty).
        """
        if (tags is None) == (boxes is None):
            raise ValueError("give exactly one of tags or boxes")
        if tags is not None:
            return tags_from_names(tags, self.classes)
        return boxes_from_records(boxes, self.classes, image_size)

    def pseudo_labels(
        self,
        image: np.ndarray,
        hints: Annotation | None = None,
        *,
        tags: list[str] | None = None,
        boxes: list[dict] | None = None,
        k: int = 10,
        seed: int | None = None,
        instances_per_tag: int | None = None,
    ) -> list[FramedInstances]:
        """At most k distinct samples of the conditional network, each consistent with the
        hints (an Annotation, or class-name `tags`, or `{"label", "bbox"}` `boxes`, in image
        pixels): the most frequent of DRAWS_PER_SAMPLE * k draws, the most frequent first.
        Given tags, each holds at most `instances_per_tag` instances of a tagged class (None:
        every one the networks find). The same seed gives the same samples; no seed, a random
        one. The network works on the image's working copy (`frame`); the samples' masks come
        at the image's size one at a time (models.working_frame).

        Raises ValueError for invalid hints and InconsistentHints (a ValueError) when no
        consistent segmentation exists among the proposals.
        """
        if hints is None:
            hints = self.hints(image.shape[:2], tags=tags, boxes=boxes)
        frame = self.frame(image)
        working, working_hints = frame.copy(image), frame.annotation(hints)
        box_array = (
            working_hints.boxes.numpy() if isinstance(working_hints, BoxAnnotation) else None
        )
        proposals = self.proposals(working, box_array)
        generator = torch.Generator().manual_seed(secrets.randbits(63) if seed is None else seed)
        with self.metrics.time_model("sample"):
            try:
                samples = self.bundle.pseudo_labels(
                    working,
                    proposals,
                    working_hints,
                    k,
                    generator,
                    draws=DRAWS_PER_SAMPLE * k,
                    instances_per_tag=instances_per_tag,
                )
            except ValueError as error:
                raise InconsistentHints(
                    f"no segmentation consistent with the hints was found: {error}"
                ) from error
        if isinstance(hints, BoxAnnotation):
            return [FramedInstances.of_boxes(sample, frame, hints) for sample in samples]
        return [FramedInstances(sample, frame) for sample in samples]

    def refine(
        self,
        image: np.ndarray,
        prompt: PointPrompt,
        *,
        k: int = 3,
        label: str | None = None,
        current_mask: np.ndarray | None = None,
        seed: int | None = None,
    ) -> FramedInstances:
        """At most k distinct masks consistent with the prompt's points and box, best first
        (models.refinement), from the conditional network's scores of the image's proposals
        (box-conditioned given a box). label: the object's class name, or None for each mask's
        best class; current_mask: bool[H, W], the mask being corrected. The prompt is in image
        pixels; the network works on the image's working copy (`frame`).

        Raises ValueError for an invalid prompt or label, and InconsistentHints (a ValueError)
        when no consistent mask exists.
        """
        prompt.validate(image.shape[:2])
        if current_mask is not None and current_mask.shape != image.shape[:2]:
            raise ValueError(
                f"the current mask is {current_mask.shape[1]}x{current_mask.shape[0]}, the "
                f"image {image.shape[1]}x{image.shape[0]}"
            )
        label_id = None if label is None else tags_from_names([label], self.classes).labels[0]
        frame = self.frame(image)
        working, working_prompt = frame.copy(image), frame.prompt(prompt)
        try:
            working_prompt.validate(frame.size)
        except ValueError as error:  # clicks apart in the image may share a working pixel
            height, width = frame.size
            raise InconsistentHints(
                f"at the model's working resolution ({width}x{height}): {error}"
            ) from None
        box_array = None if working_prompt.box is None else working_prompt.box[None].numpy()
        proposals = self.proposals(working, box_array)
        current = (
            None if current_mask is None
            else frame.mask(torch.from_numpy(current_mask.astype(bool)))
        )
        generator = torch.Generator().manual_seed(secrets.randbits(63) if seed is None else seed)
        with self.metrics.time_model("refine"):
            try:
                candidates = refine(
                    self.bundle.conditional, working, proposals, working_prompt, k,
                    label=label_id, current=current, generator=generator,
                )
            except ValueError as error:
                raise InconsistentHints(str(error)) from error
        return FramedInstances.of_prompt(candidates, frame, prompt)


def diversity(samples: list[InstanceSet]) -> float:
    """Mean task loss Δ over the pairs of samples (0 for fewer than two), at the resolution
    they were found at.

    Samples are often identical (given boxes the noise rarely changes which proposal wins a
    box); Δ is computed once per pair of distinct samples and weighted by their counts.
    """
    k = len(samples)
    if k < 2:
        return 0.0
    distinct: dict[bytes, int] = {}
    firsts: list[InstanceSet] = []
    groups = []
    for sample in samples:
        key = _sample_key(sample)
        if key not in distinct:
            distinct[key] = len(firsts)
            firsts.append(sample)
        groups.append(distinct[key])
    if len(firsts) == 1:
        return 0.0
    counts = torch.bincount(torch.tensor(groups)).double()
    total = (counts[:, None] * counts[None, :] * delta_matrix(firsts).double()).sum()
    return float(total / (k * (k - 1)))


def _sample_key(sample: InstanceSet) -> bytes:
    masks = np.packbits(sample.masks.numpy(), axis=-1)
    return hashlib.sha1(masks.tobytes() + sample.labels.numpy().tobytes()).digest()
