"""POST /v1/pseudo-labels: k annotation-consistent samples of the conditional network."""

import json
from typing import Annotated

from fastapi import APIRouter, Form, Response

from service.api.deps import AppSettings, Model, UploadedImage
from service.api.routes.segment import ERRORS, MODEL_HEADER
from service.errors import ApiError
from service.runtime import diversity
from service.schemas import PseudoLabelResponse, Sample, encode_instances

router = APIRouter(tags=["pseudo-labels"])


def json_list(name: str, text: str) -> list:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise ApiError(422, f"{name} is not valid JSON: {error}") from None
    if not isinstance(value, list):
        raise ApiError(422, f"{name} must be a JSON list, got {type(value).__name__}")
    return value


def parse_tags(text: str) -> list[str]:
    tags = json_list("tags", text)
    if not all(isinstance(tag, str) for tag in tags):
        raise ApiError(422, 'tags must be a JSON list of class names, e.g. ["cat", "dog"]')
    return tags


def parse_boxes(text: str, max_boxes: int) -> list[dict]:
    boxes = json_list("boxes", text)
    if len(boxes) > max_boxes:
        raise ApiError(422, f"{len(boxes)} boxes given; at most {max_boxes} are accepted")
    for index, box in enumerate(boxes):
        if not isinstance(box, dict) or set(box) != {"label", "bbox"}:
            raise ApiError(
                422,
                f'box {index}: each box must be {{"label": name, "bbox": [x0, y0, x1, y1]}}, '
                f"got {json.dumps(box)[:200]}",
            )
        bbox = box["bbox"]
        if not isinstance(bbox, list) or not all(
            isinstance(v, int | float) and not isinstance(v, bool) for v in bbox
        ):
            raise ApiError(422, f"box {index}: bbox must be a list of 4 numbers, got {bbox!r}")
    return boxes


@router.post("/pseudo-labels", response_model=PseudoLabelResponse, responses=ERRORS)
async def pseudo_labels(
    runtime: Model,
    settings: AppSettings,
    image: UploadedImage,
    response: Response,
    tags: Annotated[
        str | None,
        Form(description='JSON list of the class names present, e.g. ["disc", "square"]'),
    ] = None,
    boxes: Annotated[
        str | None,
        Form(description='JSON list of {"label": class name, "bbox": [x0, y0, x1, y1]} pixels'),
    ] = None,
    k: Annotated[int, Form(ge=1, description="number of samples (at most DISCOSEG_MAX_K)")] = 10,
    seed: Annotated[
        int | None, Form(ge=0, lt=2**63, description="the same seed gives the same samples")
    ] = None,
) -> PseudoLabelResponse:
    """Sample k instance segmentations of the image from the conditional network, each
    consistent with the hints: give exactly one of `tags` (every tagged class gets an instance,
    no other class appears) or `boxes` (one instance per box, of the box's class, inside it)."""
    tags, boxes = tags or None, boxes or None  # an empty form field counts as absent
    if (tags is None) == (boxes is None):
        raise ApiError(422, "give exactly one of the form fields tags or boxes")
    if k > settings.max_k:
        raise ApiError(422, f"k must be at most {settings.max_k}, got {k}")
    try:
        hints = runtime.hints(
            image.shape[:2],
            tags=None if tags is None else parse_tags(tags),
            boxes=None if boxes is None else parse_boxes(boxes, settings.max_boxes),
        )
    except ValueError as error:
        raise ApiError(422, str(error), code="invalid_hints") from None

    def work() -> PseudoLabelResponse:
        samples = runtime.pseudo_labels(image, hints, k=k, seed=seed)
        return PseudoLabelResponse(
            model=runtime.version,
            width=image.shape[1],
            height=image.shape[0],
            samples=[
                Sample(
                    instances=encode_instances(sample, runtime.classes),
                    score=float(sample.scores.mean()) if len(sample) else 0.0,
                )
                for sample in samples
            ],
            diversity=diversity(samples),
        )

    result = await runtime.submit(work)
    response.headers[MODEL_HEADER] = runtime.version
    return result
