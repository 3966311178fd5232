"""Label Studio: its brush RLE, its result objects (brush, polygon, rectangle, choices), its
labelling configs, task exports (JSON) in and pre-annotated tasks out.

The brush RLE is Label Studio's own (label_studio_sdk.converter.brush): the image as RGBA bytes,
row-major, run-length coded in a bit stream: a 32-bit value count, the word size less one (5
bits), four run-length field widths less one (4 bits each), then records of a repeat flag (1
bit), a field-width index (2 bits), the run length less one, and the value (8 bits) for a
repeated run, or that many values for a literal run. We write repeated runs only.
Coordinates of polygons and rectangles are percentages of the image's width and height.
"""

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import PurePosixPath

import numpy as np

from training.formats.labels import (
    ImageLabels,
    Instance,
    LabelSet,
    check_image_size,
    ordered_classes,
)
from training.formats.polygons import mask_polygons, polygons_mask

_WORD_BITS = 8
_RUN_FIELD_BITS = (3, 4, 8, 16)
_MAX_RUN = 1 << _RUN_FIELD_BITS[-1]
# Label Studio prefixes uploaded file names with 8 hex digits and a dash.
_UPLOAD_PREFIX = re.compile(r"^[0-9a-f]{8}-")
LABEL_TAGS = ("BrushLabels", "PolygonLabels", "RectangleLabels")
TAG_TAGS = ("Choices", "Taxonomy")
# The result types whose value lists label names under the type's own key.
NAMED_RESULTS = ("brushlabels", "polygonlabels", "rectanglelabels", "keypointlabels", "choices")


def encode_brush(mask: np.ndarray) -> list[int]:
    """Label Studio brush RLE (a list of byte values) of a bool[H, W] mask, painted opaque."""
    values = np.asarray(mask, dtype=bool).ravel()
    change = np.flatnonzero(values[1:] != values[:-1]) + 1
    starts = np.concatenate([[0], change])
    lengths = np.diff(np.concatenate([starts, [values.size]])) * 4  # 4 bytes (RGBA) a pixel
    header = f"{values.size * 4:032b}{_WORD_BITS - 1:05b}" + "".join(
        f"{bits - 1:04b}" for bits in _RUN_FIELD_BITS
    )
    parts = [header]
    for start, length in zip(starts.tolist(), lengths.tolist(), strict=True):
        value = 255 if values[start] else 0
        while length:
            run = min(length, _MAX_RUN)
            index = next(i for i, bits in enumerate(_RUN_FIELD_BITS) if run - 1 < 1 << bits)
            parts.append(f"1{index:02b}{run - 1:0{_RUN_FIELD_BITS[index]}b}{value:08b}")
            length -= run
    bits = "".join(parts)
    bits += "0" * (-len(bits) % 8)
    return list(int(bits[i : i + 8], 2).to_bytes(1, "big")[0] for i in range(0, len(bits), 8))


def decode_brush(rle: Iterable[int], height: int, width: int) -> np.ndarray:
    """bool[height, width] of a Label Studio brush RLE: pixels whose alpha is not 0."""
    data = np.unpackbits(np.asarray(list(rle), dtype=np.uint8))
    position = 0

    def read(count: int) -> int:
        nonlocal position
        if position + count > data.size:
            raise ValueError("the brush RLE ends early")
        value = 0
        for bit in data[position : position + count]:
            value = (value << 1) | int(bit)
        position += count
        return value

    total = read(32)
    if total != height * width * 4:
        raise ValueError(f"the brush RLE holds {total} values, the {width}x{height} image "
                         f"{height * width * 4}")
    word = read(5) + 1
    if word > _WORD_BITS:
        raise ValueError(f"the brush RLE has {word}-bit values; RGBA bytes have 8")
    widths = [read(4) + 1 for _ in range(4)]
    out = np.zeros(total, dtype=np.uint8)
    index = 0
    while index < total:
        repeated = read(1)
        end = min(total, index + 1 + read(widths[read(2)]))
        if repeated:
            out[index:end] = read(word)
        else:
            for i in range(index, end):
                out[i] = read(word)
        index = end
    return out.reshape(height, width, 4)[:, :, 3] > 0


@dataclass(frozen=True)
class ControlTag:
    """A labelling control of a project's config: BrushLabels etc. and the image it labels."""

    kind: str
    name: str
    to_name: str
    labels: tuple[str, ...]


@dataclass(frozen=True)
class LabelConfig:
    """What a Label Studio labelling config asks for: its controls and the image field."""

    controls: tuple[ControlTag, ...]
    image_name: str
    image_value: str  # the task data key of the image, e.g. "image" for value="$image"

    def control(self, kind: str) -> ControlTag | None:
        return next((c for c in self.controls if c.kind == kind), None)

    @property
    def labels(self) -> tuple[str, ...]:
        return ordered_classes(label for c in self.controls for label in c.labels)


def parse_label_config(text: str) -> LabelConfig:
    """The controls and image of a labelling config (XML); ValueError when it has no image or no
    BrushLabels, PolygonLabels, RectangleLabels, Choices or Taxonomy control."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError as error:
        raise ValueError(f"the label config is not XML: {error}") from None
    images = [e for e in root.iter() if e.tag == "Image"]
    if not images:
        raise ValueError("the label config has no <Image> tag")
    image = images[0]
    controls = []
    for element in root.iter():
        if element.tag in LABEL_TAGS + TAG_TAGS:
            values = [e.get("value") for e in element.iter() if e.tag in ("Label", "Choice")]
            controls.append(ControlTag(
                kind=element.tag, name=element.get("name", element.tag.lower()),
                to_name=element.get("toName", image.get("name", "image")),
                labels=tuple(v for v in values if v),
            ))
    if not controls:
        raise ValueError(
            "the label config has none of " + ", ".join(LABEL_TAGS + TAG_TAGS)
        )
    return LabelConfig(
        controls=tuple(controls),
        image_name=image.get("name", "image"),
        image_value=image.get("value", "$image").lstrip("$"),
    )


def brush_result(
    control: ControlTag, label: str, mask: np.ndarray, result_id: str, score: float | None = None
) -> dict:
    """A `brushlabels` result of one mask."""
    height, width = mask.shape
    return _result(control, "brushlabels", result_id, width, height, score, {
        "format": "rle", "rle": encode_brush(mask), "brushlabels": [label],
    })


def polygon_results(
    control: ControlTag, label: str, mask: np.ndarray, result_id: str, score: float | None = None
) -> list[dict]:
    """`polygonlabels` results of one mask, one per part (holes are filled)."""
    height, width = mask.shape
    return [
        _result(control, "polygonlabels", f"{result_id}-{part}" if part else result_id, width,
                height, score, {
                    "points": [[round(100 * x / width, 4), round(100 * y / height, 4)]
                               for x, y in outline.tolist()],
                    "polygonlabels": [label], "closed": True,
                })
        for part, outline in enumerate(mask_polygons(mask))
    ]


def rectangle_result(
    control: ControlTag, label: str, box: Iterable[float], size: tuple[int, int], result_id: str,
    score: float | None = None,
) -> dict:
    """A `rectanglelabels` result of an x0, y0, x1, y1 pixel box; size is (H, W)."""
    height, width = size
    x0, y0, x1, y1 = box
    return _result(control, "rectanglelabels", result_id, width, height, score, {
        "x": 100 * x0 / width, "y": 100 * y0 / height, "width": 100 * (x1 - x0) / width,
        "height": 100 * (y1 - y0) / height, "rotation": 0, "rectanglelabels": [label],
    })


def _result(control: ControlTag, kind: str, result_id: str, width: int, height: int,
            score: float | None, value: dict) -> dict:
    result = {
        "id": result_id, "from_name": control.name, "to_name": control.to_name, "type": kind,
        "original_width": width, "original_height": height, "image_rotation": 0,
        "value": value,
    }
    if score is not None:
        result["score"] = round(float(score), 6)
    return result


def result_mask(result: dict, height: int, width: int) -> np.ndarray | None:
    """bool[height, width] of a brush or polygon result; None for other kinds."""
    value = result.get("value", {})
    if result.get("type") == "brushlabels" and "rle" in value:
        return decode_brush(value["rle"], height, width)
    if result.get("type") == "polygonlabels" and "points" in value:
        points = np.asarray(value["points"], dtype=np.float64).reshape(-1, 2)
        return polygons_mask([points * [width / 100, height / 100]], height, width)
    return None


def result_box(result: dict, height: int, width: int) -> tuple[float, ...] | None:
    """x0, y0, x1, y1 pixels of a rectangle result; None for other kinds."""
    value = result.get("value", {})
    if result.get("type") != "rectanglelabels" or not {"x", "y", "width", "height"} <= set(value):
        return None
    x0, y0 = value["x"] * width / 100, value["y"] * height / 100
    return (x0, y0, x0 + value["width"] * width / 100, y0 + value["height"] * height / 100)


def result_labels(result: dict) -> list[str]:
    """The label names a result carries (for Taxonomy, the leaf of each path); none for
    result types that carry no labels (text areas, ratings, ...)."""
    value = result.get("value", {})
    kind = result.get("type", "")
    if kind == "taxonomy":
        return [path[-1] for path in value.get("taxonomy", []) if path]
    return [str(v) for v in value.get(kind, [])] if kind in NAMED_RESULTS else []


def export_tasks(labels: LabelSet, config: LabelConfig | None = None,
                 model_version: str = "discoseg") -> list[dict]:
    """Label Studio tasks (import them into a project) with each image's instances as one
    prediction of brush masks; `data.image` is the image's file name."""
    config = config or default_config(labels.classes)
    brush = config.control("BrushLabels")
    tasks = []
    for image in labels.images:
        results = []
        for index, instance in enumerate(image.instances):
            mask = instance.mask()
            if mask is not None:
                results.append(brush_result(brush, instance.label, mask, f"{image.image_id}-"
                                            f"{index}", instance.score))
        scores = [i.score for i in image.instances if i.score is not None]
        tasks.append({
            "data": {config.image_value: image.file_name},
            "predictions": [{
                "model_version": model_version,
                "score": float(np.mean(scores)) if scores else 0.0,
                "result": results,
            }],
        })
    return tasks


def default_config(classes: Iterable[str]) -> LabelConfig:
    control = ControlTag("BrushLabels", "tag", "image", tuple(classes))
    return LabelConfig(controls=(control,), image_name="image", image_value="image")


def import_tasks(
    tasks: list, classes: Iterable[str] = (), *, max_pixels: int | None = None
) -> LabelSet:
    """The labels of a Label Studio JSON export (a list of tasks with `annotations`): brush and
    polygon results become masks, rectangles boxes, choices and taxonomy tags. Each task's last
    annotation that was not cancelled counts; sizes come from its results' original_width and
    original_height. `classes` come first in the class list, in their order.

    Raises ValueError naming the task that cannot be read (or whose image has more than
    `max_pixels` pixels).
    """
    if not isinstance(tasks, list):
        raise ValueError("a Label Studio export is a JSON list of tasks")
    images, names = [], list(classes)
    for position, task in enumerate(tasks):
        where = f"task {task.get('id', position) if isinstance(task, dict) else position}"
        if not isinstance(task, dict) or not isinstance(task.get("data"), dict):
            raise ValueError(f"{where}: not a Label Studio task (no data)")
        annotations = [a for a in task.get("annotations") or []
                       if isinstance(a, dict) and not a.get("was_cancelled")]
        results = annotations[-1].get("result", []) if annotations else []
        sized = [r for r in results if "original_width" in r and "original_height" in r]
        image_url = next((v for v in task["data"].values() if isinstance(v, str)), None)
        if image_url is None:
            raise ValueError(f"{where}: its data holds no image URL")
        if not sized:
            raise ValueError(f"{where}: no result gives the image size (original_width)")
        width, height = int(sized[0]["original_width"]), int(sized[0]["original_height"])
        check_image_size(where, width, height, max_pixels)
        instances, tags = [], []
        for result in results:
            found = result_labels(result)
            names.extend(found)
            mask = result_mask(result, height, width)
            box = result_box(result, height, width)
            for label in found:
                if mask is not None:
                    instances.append(Instance.from_mask(label, mask, result.get("score")))
                elif box is not None:
                    instances.append(Instance(label, bbox=box, score=result.get("score")))
                elif result.get("type") in ("choices", "taxonomy"):
                    tags.append(label)
        images.append(ImageLabels(
            image_id=int(task.get("id", position + 1)), file_name=file_name_of(image_url),
            width=width, height=height, instances=tuple(instances),
            tags=tuple(sorted(set(tags))),
        ))
    return LabelSet(classes=ordered_classes(names), images=tuple(images))


def file_name_of(url: str) -> str:
    """The image's file name in a task's data URL, without Label Studio's upload prefix."""
    name = PurePosixPath(url.split("?", 1)[0]).name
    return _UPLOAD_PREFIX.sub("", name)
