"""POST /v1/pseudo-labels: k annotation-consistent samples of the conditional network."""

from typing import Annotated

from fastapi import APIRouter, Form, Response

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
from service.runtime import diversity
from service.schemas import (
    BoxHints,
    PseudoLabelResponse,
    Sample,
    TagHints,
    encode_instances,
    parse_json,
)

router = APIRouter(tags=["pseudo-labels"])


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
    instances_per_tag: Annotated[
        int | None,
        Form(
            ge=1,
            description="given tags, the most instances of one tagged class in a sample "
            "(default: every instance the networks find)",
        ),
    ] = None,
    seed: Annotated[
        int | None,
        Form(ge=0, lt=SEED_LIMIT, description="the same seed gives the same samples"),
    ] = None,
) -> PseudoLabelResponse:
    """Sample k instance segmentations of the image from the conditional network, each
    consistent with the hints: give exactly one of `tags` (every tagged class gets one or more
    instances, no other class appears) or `boxes` (one instance per box, of the box's class,
    inside it)."""
    tags, boxes = tags or None, boxes or None  # an empty form field counts as absent
    if (tags is None) == (boxes is None):
        raise ApiError(422, "give exactly one of the form fields tags or boxes")
    check_k(k, settings)
    tag_list = None if tags is None else parse_json(TagHints, tags, "tags")
    box_list = None if boxes is None else parse_json(BoxHints, boxes, "boxes")
    if box_list is not None and len(box_list) > settings.max_boxes:
        raise ApiError(
            422, f"{len(box_list)} boxes given; at most {settings.max_boxes} are accepted"
        )
    try:
        hints = runtime.hints(
            image.shape[:2], tags=tag_list,
            boxes=None if box_list is None else [box.model_dump() for box in box_list],
        )
    except ValueError as error:
        raise ApiError(422, str(error), code="invalid_hints") from None

    def work() -> PseudoLabelResponse:
        samples = runtime.pseudo_labels(
            image, hints, k=k, seed=seed, instances_per_tag=instances_per_tag
        )
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
            diversity=diversity([sample.instances for sample in samples]),
        )

    result = await runtime.submit(
        work, operation="pseudo_labels", units=k * runtime.work_units(image)
    )
    response.headers[MODEL_HEADER] = runtime.version
    return result
