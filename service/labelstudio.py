"""The Label Studio ML backend's work: task images, the hints a task carries, and predictions
in Label Studio's result format (training.formats.labelstudio writes the results).

A task's image is its data field named by the config's <Image value="$...">: a data: URL, or a
URL of the Label Studio server at DISCOSEG_LABEL_STUDIO_URL (relative /data/... ones too),
fetched with the access token that /ls/setup gave for the project (or
DISCOSEG_LABEL_STUDIO_API_KEY). Other hosts are refused, the host a /ls/setup call names
included, so the backend fetches nothing a client or a labelling project could point it at
elsewhere.

Hints: the interactive context's (or else the task's last annotation's) rectangles are box
hints, its choices and taxonomy tags, its keypoints clicks (positive unless is_positive is
false). Given clicks the refinement candidates are the predictions; given boxes or tags the K
conditional samples; without hints the prediction network's instances (one prediction).
Tasks and contexts arrive as the dicts of service.schemas' validated Label Studio models, so
their values have the types read here.
"""

import base64
import binascii
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field

import numpy as np
import torch

from models.refinement import PointPrompt
from models.structures import InstanceSet, mask_boxes
from models.working_frame import FramedInstances, framed
from service.imaging import decode_image
from service.runtime import ModelRuntime
from training.formats.labelstudio import (
    LabelConfig,
    brush_result,
    polygon_results,
    rectangle_result,
    result_box,
    result_labels,
)

FETCH_TIMEOUT_S = 30
_DEFAULT_PORTS = {"http": 80, "https": 443}


class TaskError(ValueError):
    """A task that cannot be predicted (its image cannot be had, its hints are invalid)."""


@dataclass(frozen=True)
class ImageSource:
    """Where task images hosted by Label Studio are fetched from."""

    base_url: str | None
    token: str | None


def same_origin(url: str, other: str | None) -> bool:
    """Whether two URLs name the same scheme, host and port."""
    origin = _origin(url)
    return other is not None and origin is not None and origin == _origin(other)


def _origin(url: str) -> tuple[str, str | None, int | None] | None:
    parts = urllib.parse.urlsplit(url.strip())
    scheme = parts.scheme.lower()
    try:
        port = parts.port
    except ValueError:  # a port that is no number
        return None
    return scheme, parts.hostname, port or _DEFAULT_PORTS.get(scheme)


@dataclass
class TaskHints:
    boxes: list[dict] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    positive: list[list[float]] = field(default_factory=list)
    negative: list[list[float]] = field(default_factory=list)


def task_image(task: dict, config: LabelConfig, source: ImageSource, *, max_bytes: int,
               max_pixels: int) -> np.ndarray:
    """uint8[H, W, 3] of the task's image; TaskError naming why it cannot be had."""
    data = task.get("data") if isinstance(task.get("data"), dict) else {}
    url = data.get(config.image_value)
    if not isinstance(url, str) or not url:
        raise TaskError(f"the task has no image in data.{config.image_value}")
    if url.startswith("data:"):
        header, _, payload = url.partition(",")
        if ";base64" not in header:
            raise TaskError("a data: image URL must be base64")
        try:
            content = base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as error:
            raise TaskError(f"the data: image URL is not base64: {error}") from None
    else:
        content = _fetch(url, source, max_bytes)
    if len(content) > max_bytes:
        raise TaskError(f"the task's image exceeds {max_bytes} bytes")
    try:
        return decode_image(content, max_pixels=max_pixels)
    except ValueError as error:
        raise TaskError(f"the task's image: {error}") from None


def _fetch(url: str, source: ImageSource, max_bytes: int) -> bytes:
    if source.base_url is None:
        raise TaskError(
            f"cannot fetch {url}: Label Studio's URL is unknown (set DISCOSEG_LABEL_STUDIO_URL "
            "on the discoseg server)"
        )
    base = source.base_url.rstrip("/") + "/"
    absolute = urllib.parse.urljoin(base, url)
    if not absolute.startswith(base):
        raise TaskError(f"refusing to fetch {url}: only images on {base} are fetched")
    request = urllib.request.Request(absolute)
    if source.token:
        request.add_header("Authorization", f"Token {source.token}")
    try:
        with urllib.request.urlopen(request, timeout=FETCH_TIMEOUT_S) as response:
            return response.read(max_bytes + 1)
    except (urllib.error.URLError, OSError) as error:
        raise TaskError(f"cannot fetch {absolute}: {error}") from None


def task_hints(task: dict, context: dict | None, size: tuple[int, int]) -> TaskHints:
    """The hints of the interactive context, else of the task's last annotation."""
    results = (context or {}).get("result") if isinstance(context, dict) else None
    if not results:
        annotations = [a for a in task.get("annotations") or []
                       if isinstance(a, dict) and not a.get("was_cancelled")]
        results = annotations[-1].get("result", []) if annotations else []
    height, width = size
    hints = TaskHints()
    for result in results if isinstance(results, list) else []:
        if not isinstance(result, dict):
            continue
        labels = result_labels(result)
        kind = result.get("type")
        if kind == "rectanglelabels":
            box = result_box(result, height, width)
            hints.boxes.extend({"label": label, "bbox": _clip(box, size)} for label in labels)
        elif kind in ("choices", "taxonomy"):
            hints.tags.extend(labels)
        elif kind in ("keypointlabels", "keypoint"):
            value = result.get("value", {})
            point = [value.get("x", 0) * width / 100, value.get("y", 0) * height / 100]
            positive = result.get("is_positive", value.get("is_positive", True))
            (hints.positive if positive else hints.negative).append(point)
    return hints


def _clip(box: tuple[float, ...], size: tuple[int, int]) -> list[float]:
    height, width = size
    x0, y0, x1, y1 = box
    return [max(0.0, x0), max(0.0, y0), min(float(width), x1), min(float(height), y1)]


def task_operation(hints: TaskHints, known: list[str]) -> str:
    """The runtime call that predicts a task with these hints: "refine" given clicks,
    "pseudo_labels" given boxes or tags of `known` labels, else "segment"."""
    if hints.positive or hints.negative:
        return "refine"
    if any(b["label"] in known for b in hints.boxes) or any(t in known for t in hints.tags):
        return "pseudo_labels"
    return "segment"


def predict_task(runtime: ModelRuntime, image: np.ndarray, hints: TaskHints, known: list[str],
                 k: int) -> list[InstanceSet | FramedInstances]:
    """The predictions of one task, best first; TaskError for hints that cannot be used.

    known: the hint labels the model has (others were reported and are dropped here).
    """
    operation = task_operation(hints, known)
    boxes = [b for b in hints.boxes if b["label"] in known]
    tags = sorted({t for t in hints.tags if t in known})
    try:
        if operation == "refine":
            box = boxes[0]["bbox"] if len(boxes) == 1 else None
            label = boxes[0]["label"] if len(boxes) == 1 else (tags[0] if len(tags) == 1 else None)
            prompt = PointPrompt.from_lists(hints.positive, hints.negative, box)
            candidates = runtime.refine(image, prompt, k=k, label=label, seed=0)
            # Each candidate is one prediction: alternatives for the one object.
            return [candidates.subset(torch.tensor([i])) for i in range(len(candidates))]
        if operation == "pseudo_labels":
            hint = {"boxes": boxes} if boxes else {"tags": tags}
            return runtime.pseudo_labels(image, k=k, seed=0, **hint)
    except ValueError as error:
        raise TaskError(str(error)) from None
    return [runtime.segment(image)]


def prediction(instances: InstanceSet | FramedInstances, config: LabelConfig,
               classes: list[str], model_version: str) -> dict:
    """One Label Studio prediction: each instance as a brush mask (BrushLabels), polygons
    (PolygonLabels) and/or a rectangle (RectangleLabels only), by the config's controls, at the
    image's size; a class the config does not list is left out. score: the mean instance
    score."""
    brush, polygon = config.control("BrushLabels"), config.control("PolygonLabels")
    rectangle = config.control("RectangleLabels")
    instances = framed(instances)
    results: list[dict] = []
    scores = []
    rows = zip(instances.masks(), instances.labels.tolist(), instances.scores.tolist(),
               strict=True)
    for index, (mask_tensor, label_id, score) in enumerate(rows):
        label = classes[label_id - 1]
        result_id = f"discoseg-{index}"
        mask = mask_tensor.numpy()
        emitted = False
        if brush is not None and label in brush.labels:
            results.append(brush_result(brush, label, mask, result_id, score))
            emitted = True
        if polygon is not None and label in polygon.labels:
            results.extend(polygon_results(polygon, label, mask, f"{result_id}-p", score))
            emitted = True
        if brush is None and polygon is None and rectangle is not None \
                and label in rectangle.labels:
            box = mask_boxes(mask_tensor[None])[0].tolist()
            results.append(rectangle_result(rectangle, label, box, mask.shape, result_id, score))
            emitted = True
        if emitted:
            scores.append(score)
    return {
        "result": results,
        "score": round(float(np.mean(scores)), 6) if scores else 0.0,
        "model_version": model_version,
    }
