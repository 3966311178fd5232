"""POST /v1/refine: candidate masks of one object consistent with clicked points and a box."""

import json
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Form, Response
from pycocotools import mask as mask_utils

from models.refinement import PointPrompt
from service.api.deps import AppSettings, Model, UploadedImage
from service.api.routes.pseudo_labels import json_list
from service.api.routes.segment import ERRORS, MODEL_HEADER
from service.errors import ApiError
from service.schemas import RefineResponse, encode_instances

router = APIRouter(tags=["refine"])

MAX_POINTS = 100
_POINTS = 'JSON list of [x, y] pixels, e.g. [[120, 80], [131.5, 92]]'


def parse_points(name: str, text: str | None) -> list[list[float]]:
    points = json_list(name, text) if text else []
    if len(points) > MAX_POINTS:
        raise ApiError(422, f"{len(points)} {name} points given; at most {MAX_POINTS} accepted")
    for index, point in enumerate(points):
        if not (isinstance(point, list) and len(point) == 2 and all(_is_number(v) for v in point)):
            raise ApiError(422, f"{name} point {index}: expected [x, y] numbers, got {point!r}")
    return points


def parse_box(text: str | None) -> list[float] | None:
    if not text:
        return None
    box = json_list("box", text)
    if len(box) != 4 or not all(_is_number(v) for v in box):
        raise ApiError(422, f"box must be [x0, y0, x1, y1] numbers, got {box!r}")
    return box


def parse_mask(text: str | None, image_size: tuple[int, int]) -> np.ndarray | None:
    """bool[H, W] of a COCO RLE `{"size": [H, W], "counts": str}` JSON object."""
    if not text:
        return None
    try:
        rle = json.loads(text)
    except json.JSONDecodeError as error:
        raise ApiError(422, f"mask is not valid JSON: {error}") from None
    if not (isinstance(rle, dict) and isinstance(rle.get("counts"), str)
            and isinstance(rle.get("size"), list)):
        raise ApiError(422, 'mask must be a COCO RLE {"size": [height, width], "counts": "..."}')
    if rle["size"] != list(image_size):
        raise ApiError(
            422, f"mask size {rle['size']} differs from the image's [height, width] "
            f"{list(image_size)}"
        )
    try:
        mask = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()})
    except Exception as error:  # pycocotools raises several types for malformed counts
        raise ApiError(422, f"mask counts cannot be decoded: {error}") from None
    if mask.shape != image_size:
        raise ApiError(422, "mask counts do not cover the image")
    return mask.astype(bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@router.post("/refine", response_model=RefineResponse, responses=ERRORS)
async def refine(
    runtime: Model,
    settings: AppSettings,
    image: UploadedImage,
    response: Response,
    positive: Annotated[
        str | None, Form(description=f"points inside the object: {_POINTS}")
    ] = None,
    negative: Annotated[
        str | None, Form(description=f"points outside the object: {_POINTS}")
    ] = None,
    box: Annotated[
        str | None, Form(description="JSON [x0, y0, x1, y1] pixels around the object")
    ] = None,
    label: Annotated[
        str | None, Form(description="the object's class; default: each mask's best class")
    ] = None,
    mask: Annotated[
        str | None,
        Form(description='the current mask being corrected, COCO RLE JSON {"size", "counts"}'),
    ] = None,
    k: Annotated[int, Form(ge=1, description="candidates (at most DISCOSEG_MAX_K)")] = 3,
    seed: Annotated[
        int | None, Form(ge=0, lt=2**63, description="the same seed gives the same candidates")
    ] = None,
) -> RefineResponse:
    """Up to k candidate masks of one object, best first, each consistent with the clicks:
    every `positive` point inside, no `negative` point inside, and inside `box` when given
    (at least one positive point or a box is needed). Scored by the conditional network."""
    label = label or None  # an empty form field counts as absent
    if k > settings.max_k:
        raise ApiError(422, f"k must be at most {settings.max_k}, got {k}")
    image_size = image.shape[:2]
    try:
        prompt = PointPrompt.from_lists(
            parse_points("positive", positive), parse_points("negative", negative),
            parse_box(box),
        )
        prompt.validate(image_size)
        if label is not None and label not in runtime.classes:
            raise ValueError(
                f"unknown class {label!r}; known classes: {', '.join(runtime.classes)}"
            )
    except ValueError as error:
        raise ApiError(422, str(error), code="invalid_hints") from None
    current = parse_mask(mask, image_size)

    def work() -> RefineResponse:
        candidates = runtime.refine(
            image, prompt, k=k, label=label, current_mask=current, seed=seed
        )
        return RefineResponse(
            model=runtime.version, width=image.shape[1], height=image.shape[0],
            candidates=encode_instances(candidates, runtime.classes),
        )

    result = await runtime.submit(work)
    response.headers[MODEL_HEADER] = runtime.version
    return result
