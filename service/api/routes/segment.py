"""POST /v1/segment: the prediction network's instances of an uploaded image."""

from typing import Annotated, Literal

from fastapi import APIRouter, Form, Query, Response

from models.thresholds import SCORE_THRESHOLD
from service.api.deps import ERRORS, MODEL_HEADER, Model, UploadedImage
from service.errors import ApiError
from service.imaging import overlay_png
from service.schemas import SegmentResponse, encode_instances

router = APIRouter(tags=["segment"])

_THRESHOLD = "keep instances with at least this score (form field or query parameter)"
_MAX = "keep at most this many instances, best first (form field or query parameter)"


def _one_of(name: str, form: float | None, query: float | None, default: float | None):
    if form is not None and query is not None and form != query:
        raise ApiError(422, f"{name} was given twice, as form field and query parameter")
    return form if form is not None else query if query is not None else default


@router.post(
    "/segment",
    response_model=SegmentResponse,
    responses={
        200: {"content": {"image/png": {}}, "description": "JSON, or with format=png an overlay"},
        **ERRORS,
    },
)
async def segment(
    runtime: Model,
    image: UploadedImage,
    response: Response,
    format: Annotated[
        Literal["json", "png"], Query(description="json: instances; png: overlay image")
    ] = "json",
    score_threshold_form: Annotated[
        float | None,
        Form(alias="score_threshold", ge=0, le=1, allow_inf_nan=False, description=_THRESHOLD),
    ] = None,
    score_threshold_query: Annotated[
        float | None,
        Query(alias="score_threshold", ge=0, le=1, allow_inf_nan=False, description=_THRESHOLD),
    ] = None,
    max_instances_form: Annotated[
        int | None, Form(alias="max_instances", ge=1, le=100, description=_MAX)
    ] = None,
    max_instances_query: Annotated[
        int | None, Query(alias="max_instances", ge=1, le=100, description=_MAX)
    ] = None,
) -> SegmentResponse | Response:
    """Segment every instance the prediction network (Mask R-CNN) finds: class, score, box and
    mask (COCO RLE) per instance, or with `format=png` the image with the instances drawn."""
    threshold = _one_of(
        "score_threshold", score_threshold_form, score_threshold_query, SCORE_THRESHOLD
    )
    limit = _one_of("max_instances", max_instances_form, max_instances_query, None)
    limit = None if limit is None else int(limit)

    def work() -> SegmentResponse | bytes:
        instances = runtime.segment(image, score_threshold=threshold, max_instances=limit)
        if format == "png":
            return overlay_png(
                image, instances.masks.numpy(), instances.labels.numpy(), instances.boxes.numpy()
            )
        return SegmentResponse(
            model=runtime.version,
            width=image.shape[1],
            height=image.shape[0],
            instances=encode_instances(instances, runtime.classes),
        )

    result = await runtime.submit(work, operation="segment", units=runtime.work_units(image))
    headers = {MODEL_HEADER: runtime.version}
    if isinstance(result, bytes):
        return Response(result, media_type="image/png", headers=headers)
    response.headers.update(headers)
    return result
