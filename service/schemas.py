"""Request and response bodies of the HTTP API; masks travel as COCO RLE (pycocotools).

Client JSON (the `tags`, `boxes` and `annotations` form fields, the points, box and mask of a
refinement, COCO and Label Studio uploads, the bodies Label Studio posts to /ls) is read by one
validating parser, `parse_json`, into the models here: whatever is wrong with it (syntax, depth,
numbers beyond 64 bits, NaN, wrong types, NUL bytes in file names) becomes a JsonFieldError
naming the field, which the API answers with a 422.
"""

import json
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from models.rle import encode_mask, rle_box, rle_runs
from models.structures import InstanceSet
from models.working_frame import FramedInstances, framed

MODEL_FIELD = Field(
    description="the model version that produced the result: bundle file stem + short hash",
    examples=["model-3f2a9c1b7d4e"],
)


class RleMask(BaseModel):
    """A binary mask as COCO compressed RLE; decode with `pycocotools.mask.decode`."""

    size: list[int] = Field(description="[height, width] in pixels", min_length=2, max_length=2)
    counts: str = Field(description="compressed RLE counts (pycocotools' string form)")


class Instance(BaseModel):
    label: str = Field(description="class name")
    score: float = Field(description="confidence in [0, 1]")
    bbox: list[float] = Field(
        description="[x0, y0, x1, y1] in pixels", min_length=4, max_length=4
    )
    mask: RleMask


class SegmentResponse(BaseModel):
    model: str = MODEL_FIELD
    width: int
    height: int
    instances: list[Instance] = Field(description="best first")


class Sample(BaseModel):
    instances: list[Instance]
    score: float = Field(
        description=(
            "mean instance score of the sample (each instance's score is its class probability "
            "under the conditional network); 0 for a sample without instances"
        )
    )


class PseudoLabelResponse(BaseModel):
    model: str = MODEL_FIELD
    width: int
    height: int
    samples: list[Sample] = Field(
        description="at most k distinct samples of the conditional network, each consistent "
        "with the hints, the most frequent of 4k draws first"
    )
    diversity: float = Field(
        description="mean task loss Δ (in [0, 3]) over pairs of samples; 0 for one sample"
    )


class RefineResponse(BaseModel):
    model: str = MODEL_FIELD
    width: int
    height: int
    candidates: list[Instance] = Field(
        description="at most k distinct masks, best first; each holds every positive point, no "
        "negative point and lies inside the box (when given); score: the probability of its "
        "class under the conditional network"
    )


class Progress(BaseModel):
    done: int = Field(description="images finished (labeled or failed)")
    total: int


class ImageFailure(BaseModel):
    index: int = Field(description="position of the image in the job")
    image_id: int
    file_name: str
    error: str


class JobStatus(BaseModel):
    id: str
    state: Literal["queued", "running", "succeeded", "failed", "cancelled"]
    progress: Progress
    errors: list[ImageFailure] = Field(description="images that could not be labeled")
    created_at: float
    started_at: float | None = None
    finished_at: float | None = None
    fetched_at: float | None = Field(None, description="first download of the result")
    expires_at: float | None = Field(
        None, description="when the job and its result are deleted (unix time)"
    )
    result: str | None = Field(None, description="URL of the result, once the job finished")


class LabelStudioHealth(BaseModel):
    status: str = Field(examples=["UP"])
    model_class: str
    model_version: str


class LabelStudioSetupResponse(BaseModel):
    model_version: str


class LabelStudioPredictResponse(BaseModel):
    results: list[list[dict]] = Field(
        description="per task, its predictions best first: {result, score, model_version}"
    )
    model_version: str
    warnings: list[str] = Field(
        description="labels of the config the model lacks, tasks that could not be predicted"
    )


# Client JSON is read strictly (no "1" for 1, no true for 1) and without NaN or infinity.
_CLIENT_JSON = ConfigDict(strict=True, allow_inf_nan=False, extra="forbid")
# What other tools write (COCO files, Label Studio's requests and exports): fields not read here
# are ignored.
_EXPORT_JSON = ConfigDict(strict=True, allow_inf_nan=False, extra="ignore")

Int64 = Annotated[int, Field(ge=-(2**63), lt=2**63)]
Bbox = Annotated[list[float], Field(min_length=4, max_length=4)]


def _no_nul(text: str) -> str:
    if "\0" in text:
        raise ValueError("must not contain NUL bytes")
    return text


FileName = Annotated[str, Field(max_length=4096), AfterValidator(_no_nul)]


class BoxHint(BaseModel):
    """One element of the `boxes` form field (a JSON list of these)."""

    model_config = _CLIENT_JSON

    label: str = Field(description="class name")
    bbox: Bbox = Field(description="[x0, y0, x1, y1] in pixels inside the image")


TagHints = TypeAdapter(list[str])
BoxHints = TypeAdapter(list[BoxHint])


class ImageHints(BaseModel):
    """One image's entry of a job's `annotations` form field: its tags or its boxes."""

    model_config = _CLIENT_JSON

    tags: list[str] | None = None
    boxes: list[BoxHint] | None = None


JobAnnotations = TypeAdapter(dict[FileName, ImageHints])


class CocoImage(BaseModel):
    model_config = _EXPORT_JSON

    id: Int64
    file_name: FileName


class CocoCategory(BaseModel):
    model_config = _EXPORT_JSON

    id: Int64
    name: str


class CocoAnnotation(BaseModel):
    model_config = _EXPORT_JSON

    id: Int64 | None = None
    image_id: Int64
    category_id: Int64
    bbox: Bbox | None = Field(None, description="[x, y, width, height] in pixels")


class CocoImages(BaseModel):
    """The subset of a COCO annotation file a job without hints reads."""

    model_config = _EXPORT_JSON

    images: list[CocoImage] = Field(min_length=1)


class CocoFile(CocoImages):
    """The subset of a COCO annotation file a job with hints reads."""

    categories: list[CocoCategory]
    annotations: list[CocoAnnotation]


# Point refinement: the `positive`, `negative`, `box` and `mask` form fields of /v1/refine.
MAX_POINTS = 100
Point = Annotated[list[float], Field(min_length=2, max_length=2)]
PointHints = TypeAdapter(
    Annotated[list[Point], Field(max_length=MAX_POINTS)], config=_CLIENT_JSON
)
BoxPrompt = TypeAdapter(Bbox, config=_CLIENT_JSON)


class MaskHint(BaseModel):
    """The mask being corrected: COCO compressed RLE whose runs cover exactly [H, W]."""

    model_config = _CLIENT_JSON

    size: list[Annotated[int, Field(ge=1, lt=2**31)]] = Field(
        min_length=2, max_length=2, description="[height, width] in pixels"
    )
    counts: str = Field(description="compressed RLE counts (pycocotools' string form)")

    @model_validator(mode="after")
    def _runs_cover_the_size(self) -> "MaskHint":
        # pycocotools decodes runs that cover less than the size into uninitialised memory.
        runs = rle_runs(self.counts)
        height, width = self.size
        if sum(runs) != height * width:
            raise ValueError(
                f"the counts cover {sum(runs)} pixels, the size {height}x{width} {height * width}"
            )
        return self


# Label Studio ML backend requests (/ls) and exports (jobs' annotation_format "labelstudio").
LabelList = list[Annotated[str, Field(max_length=1000)]]


class LabelStudioValue(BaseModel):
    """A result's value: the fields of the kinds read here (percent coordinates)."""

    model_config = _EXPORT_JSON

    x: float | None = None
    y: float | None = None
    width: float | None = None
    height: float | None = None
    rle: list[Annotated[int, Field(ge=0, le=255)]] | None = Field(
        None, description="brush mask in Label Studio's RLE (bytes)"
    )
    points: list[Point] | None = None
    is_positive: bool | None = None
    brushlabels: LabelList | None = None
    polygonlabels: LabelList | None = None
    rectanglelabels: LabelList | None = None
    keypointlabels: LabelList | None = None
    choices: LabelList | None = None
    taxonomy: list[LabelList] | None = None


class LabelStudioResult(BaseModel):
    """One region or choice of an annotation, prediction or interactive context."""

    model_config = _EXPORT_JSON

    type: str | None = None
    value: LabelStudioValue | None = None
    original_width: int | None = Field(None, ge=1, lt=2**31)
    original_height: int | None = Field(None, ge=1, lt=2**31)
    score: float | None = None
    is_positive: bool | None = None


class LabelStudioAnnotation(BaseModel):
    model_config = _EXPORT_JSON

    result: list[LabelStudioResult] = []
    was_cancelled: bool = False


class LabelStudioTask(BaseModel):
    model_config = _EXPORT_JSON

    id: Int64 | None = None
    data: dict[str, Any] = Field(description="the task's data: the image URL under its key")
    annotations: list[LabelStudioAnnotation] = []


LabelStudioExport = TypeAdapter(list[LabelStudioTask])


class LabelStudioContext(BaseModel):
    """What the annotator did in an interactive session (clicks, rectangles, choices)."""

    model_config = _EXPORT_JSON

    result: list[LabelStudioResult] = []


class LabelStudioParams(BaseModel):
    model_config = _EXPORT_JSON

    context: LabelStudioContext | None = Field(None, description="interactive pre-annotation")


class LabelStudioPredictRequest(BaseModel):
    model_config = _EXPORT_JSON

    tasks: list[LabelStudioTask] = Field(description="Label Studio tasks (data, annotations)")
    label_config: str = Field(description="the project's labelling config (XML)")
    project: str | None = Field(None, description="'{project id}.{created timestamp}'")
    params: LabelStudioParams | None = None


class LabelStudioSetupRequest(BaseModel):
    """What Label Studio sends when a project connects the backend."""

    model_config = _EXPORT_JSON

    project: str | None = Field(None, description="'{project id}.{created timestamp}'")
    schema_: str | None = Field(None, alias="schema", description="the labelling config")
    hostname: str | None = Field(
        None, max_length=2048, description="Label Studio's URL, for task images"
    )
    access_token: str | None = Field(None, max_length=4096)


class LabelStudioEvent(BaseModel):
    """A webhook event; recorded whole (its other fields are any JSON but NaN and infinity)."""

    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="allow")

    action: str | None = Field(None, examples=["ANNOTATION_CREATED"])

    @model_validator(mode="after")
    def _finite_numbers(self) -> "LabelStudioEvent":
        try:
            json.dumps(self.model_extra, allow_nan=False)
        except ValueError:
            raise ValueError("NaN and infinity are not JSON numbers") from None
        return self


class JsonFieldError(ValueError):
    """Client JSON that cannot be used. field: the form field or file; code: the error code
    the API answers with (a 422)."""

    def __init__(self, field: str, message: str, code: str = "validation_error") -> None:
        super().__init__(message)
        self.field = field
        self.code = code


M = TypeVar("M")


def parse_json(
    schema: type[M] | TypeAdapter, data: str | bytes, field: str,
    code: str = "validation_error",
) -> M:
    """`data` (client JSON of `field`) validated as `schema` (a model or a TypeAdapter);
    raises JsonFieldError naming the field and the place inside it."""
    adapter = schema if isinstance(schema, TypeAdapter) else TypeAdapter(schema)
    try:
        return adapter.validate_json(data)
    except ValidationError as error:
        problems = [f"{field}{_json_path(e['loc'])}: {_readable(e['msg'])}"
                    for e in error.errors()]
        shown = "; ".join(problems[:3]) + ("; ..." if len(problems) > 3 else "")
        raise JsonFieldError(field, shown, code) from None


def _json_path(location: tuple) -> str:
    """A location inside JSON as `[3].bbox[1]` or `['a.png'].tags`."""
    parts = []
    for part in location:
        if isinstance(part, int):
            parts.append(f"[{part}]")
        elif str(part).isidentifier():
            parts.append(f".{part}")
        else:
            parts.append(f"[{str(part)!r}]")
    return "".join(parts)


def _readable(message: str) -> str:
    message = message.removeprefix("Value error, ")
    if "number out of range" in message:
        message += " (a number with too many digits)"
    return message


class ModelInfo(BaseModel):
    model: str = MODEL_FIELD
    classes: list[str]
    preset: str = Field(description="size preset of the prediction network")
    device: str
    proposal_settings: dict
    metadata: dict = Field(description="training metadata recorded in the bundle")


class Health(BaseModel):
    status: str = Field(description='/healthz: "ok"; /readyz: "ready", "degraded" or "not ready"')
    checks: dict[str, str] = Field(
        default_factory=dict, description="each check's result (with DISCOSEG_API_KEYS set: "
        "to requests with a key only)"
    )


class ErrorDetail(BaseModel):
    code: str = Field(description="machine-readable error kind", examples=["validation_error"])
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail


def encode_instances(
    instances: InstanceSet | FramedInstances, classes: list[str]
) -> list[Instance]:
    """Response instances (class ids 1..C name `classes`) at the image's size, one mask at a
    time; each bbox is the tight box of its mask."""
    instances = framed(instances)
    rows = zip(
        instances.masks(), instances.labels.tolist(), instances.scores.tolist(), strict=True
    )
    encoded = []
    for mask, label, score in rows:
        rle = encode_mask(mask.numpy())
        x, y, width, height = rle_box(rle)
        encoded.append(
            Instance(
                label=classes[label - 1],
                score=round(score, 6),
                bbox=[round(v, 2) for v in (x, y, x + width, y + height)],
                mask=RleMask(**rle),
            )
        )
    return encoded
