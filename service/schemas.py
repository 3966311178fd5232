"""Request and response bodies of the HTTP API; masks travel as COCO RLE (pycocotools)."""

import numpy as np
from pycocotools import mask as mask_utils
from pydantic import BaseModel, Field

from models.structures import InstanceSet

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
        description="k samples of the conditional network, each consistent with the hints"
    )
    diversity: float = Field(
        description="mean task loss Δ (in [0, 3]) over pairs of samples; 0 when k = 1"
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


class LabelStudioHealth(BaseModel):
    status: str = Field(examples=["UP"])
    model_class: str
    model_version: str


class LabelStudioSetupRequest(BaseModel):
    """What Label Studio sends when a project connects the backend."""

    project: str | None = Field(None, description="'{project id}.{created timestamp}'")
    schema_: str | None = Field(None, alias="schema", description="the labelling config")
    hostname: str | None = Field(None, description="Label Studio's URL, for task images")
    access_token: str | None = None
    extra_params: dict | None = None


class LabelStudioSetupResponse(BaseModel):
    model_version: str


class LabelStudioPredictRequest(BaseModel):
    tasks: list[dict] = Field(description="Label Studio tasks (data, annotations, ...)")
    label_config: str = Field(description="the project's labelling config (XML)")
    project: str | None = None
    params: dict | None = Field(None, description="login, password, context (interactive)")


class LabelStudioPredictResponse(BaseModel):
    results: list[list[dict]] = Field(
        description="per task, its predictions best first: {result, score, model_version}"
    )
    model_version: str
    warnings: list[str] = Field(
        description="labels of the config the model lacks, tasks that could not be predicted"
    )


class BoxHint(BaseModel):
    """One element of the `boxes` form field (a JSON list of these)."""

    label: str = Field(description="class name")
    bbox: list[float] = Field(
        description="[x0, y0, x1, y1] in pixels inside the image", min_length=4, max_length=4
    )


class ModelInfo(BaseModel):
    model: str = MODEL_FIELD
    classes: list[str]
    preset: str = Field(description="size preset of the prediction network")
    device: str
    proposal_settings: dict
    metadata: dict = Field(description="training metadata recorded in the bundle")


class Health(BaseModel):
    status: str
    checks: dict[str, str] = Field(default_factory=dict)


class ErrorDetail(BaseModel):
    code: str = Field(description="machine-readable error kind", examples=["validation_error"])
    message: str


class ErrorResponse(BaseModel):
    error: ErrorDetail


def encode_instances(instances: InstanceSet, classes: list[str]) -> list[Instance]:
    """Response instances of an InstanceSet (class ids 1..C name `classes`); each bbox is the
    tight box of its mask."""
    if len(instances) == 0:
        return []
    masks = instances.masks.cpu().numpy()  # (N, H, W)
    rles = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    rows = zip(
        rles, instances.labels.tolist(), instances.scores.tolist(), instances.boxes.tolist(),
        strict=True,
    )
    return [
        Instance(
            label=classes[label - 1],
            score=round(score, 6),
            bbox=[round(v, 2) for v in box],
            mask=RleMask(size=[int(v) for v in rle["size"]], counts=rle["counts"].decode("ascii")),
        )
        for rle, label, score, box in rows
    ]
