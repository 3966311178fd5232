"""POST /v1/refine: candidate masks of one object consistent with clicked points and a box."""

from typing import Annotated

import numpy as np
from fastapi import APIRouter, Form, Response

from models.refinement import PointPrompt
from models.rle import decode_mask
from service.api.deps import (
    ERRORS,
    MODEL_HEADER,
    SEED_LIMIT,
    AppSettings,
    Model,
    UploadedImage,
    check_k,
)
from service.errors import ApiError
from service.schemas import (
    MAX_POINTS,
    BoxPrompt,
    MaskHint,
    PointHints,
    RefineResponse,
    encode_instances,
    parse_json,
)

router = APIRouter(tags=["refine"])

_POINTS = f"JSON list of at most {MAX_POINTS} [x, y] pixels, e.g. [[120, 80], [131.5, 92]]"


def _current_mask(text: str, image_size: tuple[int, int]) -> np.ndarray:
    """bool[H, W] of the `mask` form field, a COCO RLE the size of the image."""
    rle = parse_json(MaskHint, text, "mask")
    if tuple(rle.size) != image_size:
        raise ApiError(
            422, f"mask size {rle.size} differs from the image's [height, width] "
            f"{list(image_size)}"
        )
    return decode_mask(rle.model_dump())


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
        int | None,
        Form(ge=0, lt=SEED_LIMIT, description="the same seed gives the same candidates"),
    ] = None,
) -> RefineResponse:
    """Up to k candidate masks of one object, best first, each consistent with the clicks:
    every `positive` point inside, no `negative` point inside, and inside `box` when given
    (at least one positive point or a box is needed). Scored by the conditional network."""
    # An empty form field counts as absent.
    label, mask = label or None, mask or None
    check_k(k, settings)
    image_size = image.shape[:2]
    points_in = parse_json(PointHints, positive, "positive") if positive else []
    points_out = parse_json(PointHints, negative, "negative") if negative else []
    box_around = parse_json(BoxPrompt, box, "box") if box else None
    try:
        prompt = PointPrompt.from_lists(points_in, points_out, box_around)
        prompt.validate(image_size)
        if label is not None and label not in runtime.classes:
            raise ValueError(
                f"unknown class {label!r}; known classes: {', '.join(runtime.classes)}"
            )
    except ValueError as error:
        raise ApiError(422, str(error), code="invalid_hints") from None
    current = None if mask is None else _current_mask(mask, image_size)

    def work() -> RefineResponse:
        candidates = runtime.refine(
            image, prompt, k=k, label=label, current_mask=current, seed=seed
        )
        return RefineResponse(
            model=runtime.version, width=image.shape[1], height=image.shape[0],
            candidates=encode_instances(candidates, runtime.classes),
        )

    result = await runtime.submit(work, operation="refine", units=k * runtime.work_units(image))
    response.headers[MODEL_HEADER] = runtime.version
    return result
