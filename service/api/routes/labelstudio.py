"""The Label Studio ML backend, mounted at /ls: give Label Studio http://HOST:PORT/ls as the
model URL. GET /ls/health, POST /ls/setup, POST /ls/predict, POST /ls/webhook."""

import json
import logging
import threading
import time
from typing import Annotated

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from service.api.deps import ERRORS, AppSettings, Model, json_body, json_body_docs
from service.errors import ApiError
from service.labelstudio import (
    ImageSource,
    TaskError,
    predict_task,
    prediction,
    same_origin,
    task_hints,
    task_image,
    task_operation,
)
from service.schemas import (
    LabelStudioEvent,
    LabelStudioHealth,
    LabelStudioPredictRequest,
    LabelStudioPredictResponse,
    LabelStudioSetupRequest,
    LabelStudioSetupResponse,
)
from training.formats.labelstudio import LabelConfig, parse_label_config

router = APIRouter(tags=["label-studio"])

MODEL_CLASS = "discoseg"
TRAINING_EVENTS = frozenset({
    "ANNOTATION_CREATED", "ANNOTATION_UPDATED", "ANNOTATIONS_CREATED", "ANNOTATION_DELETED",
    "ANNOTATIONS_DELETED", "START_TRAINING",
})
_events_lock = threading.Lock()
logger = logging.getLogger(__name__)


def _setup_tokens(request: Request) -> dict[str, str]:
    """Access tokens by project id, as /ls/setup gave them (kept for the process)."""
    state = request.app.state
    if getattr(state, "label_studio_tokens", None) is None:
        state.label_studio_tokens = {}
    return state.label_studio_tokens


def _project_id(project: str | None) -> str:
    return (project or "").split(".", 1)[0]


def _config(text: str) -> LabelConfig:
    try:
        return parse_label_config(text)
    except ValueError as error:
        raise ApiError(422, str(error), code="invalid_label_config") from None


@router.get("/health", response_model=LabelStudioHealth)
async def health(runtime: Model) -> LabelStudioHealth:
    """UP once the model is loaded (503 before)."""
    return LabelStudioHealth(status="UP", model_class=MODEL_CLASS, model_version=runtime.version)


@router.post("/setup", response_model=LabelStudioSetupResponse, responses=ERRORS,
             openapi_extra=json_body_docs(LabelStudioSetupRequest))
async def setup(
    request: Request, runtime: Model, settings: AppSettings,
    body: Annotated[LabelStudioSetupRequest, json_body(LabelStudioSetupRequest)],
) -> LabelStudioSetupResponse:
    """Records the project's access token, used to fetch its task images from the Label Studio
    of DISCOSEG_LABEL_STUDIO_URL; answers at once (the model is loaded). The `hostname` sent
    is never fetched from: a client could name any host."""
    if body.schema_ is not None:
        _config(body.schema_)
    if body.hostname and not same_origin(body.hostname, settings.label_studio_url):
        logger.warning(
            "/ls/setup of project %r names Label Studio at %r; task images are fetched only "
            "from DISCOSEG_LABEL_STUDIO_URL (%s)", body.project, body.hostname,
            settings.label_studio_url or "not set",
        )
    if body.access_token:
        _setup_tokens(request)[_project_id(body.project)] = body.access_token
    return LabelStudioSetupResponse(model_version=runtime.version)


@router.post("/predict", response_model=LabelStudioPredictResponse, responses=ERRORS,
             openapi_extra=json_body_docs(LabelStudioPredictRequest))
async def predict(
    request: Request, runtime: Model, settings: AppSettings,
    body: Annotated[LabelStudioPredictRequest, json_body(LabelStudioPredictRequest)],
) -> LabelStudioPredictResponse:
    """Predictions for each task, in task order: a list of predictions per task (K samples or
    refinement candidates best first given hints, else the prediction network's instances).
    A task that cannot be predicted gets no prediction and a warning."""
    config = _config(body.label_config)
    missing = [label for label in config.labels if label not in runtime.classes]
    warnings = []
    if missing:
        warnings.append(
            f"labels the model lacks (left out): {', '.join(missing)}; the model's classes: "
            f"{', '.join(runtime.classes)}"
        )
    known = [label for label in config.labels if label in runtime.classes]
    key = settings.label_studio_api_key
    source = ImageSource(
        settings.label_studio_url,
        _setup_tokens(request).get(_project_id(body.project))
        or (key.get_secret_value() if key else None),
    )
    context = body.params.context if body.params else None
    context = None if context is None else context.model_dump(exclude_none=True)
    results = []
    for task in (t.model_dump(exclude_none=True) for t in body.tasks):
        try:
            image = await run_in_threadpool(
                task_image, task, config, source, max_bytes=settings.max_upload_bytes,
                max_pixels=settings.max_image_pixels,
            )
            hints = task_hints(task, context, image.shape[:2])
            operation = task_operation(hints, known)

            def work(image=image, hints=hints) -> list[dict]:
                sets = predict_task(runtime, image, hints, known, settings.label_studio_k)
                return [prediction(s, config, runtime.classes, runtime.version) for s in sets]

            samples = 1 if operation == "segment" else settings.label_studio_k
            results.append(await runtime.submit(
                work, operation=operation, units=samples * runtime.work_units(image)
            ))
        except TaskError as error:
            warnings.append(f"task {task.get('id', '?')}: {error}")
            results.append([])
    return LabelStudioPredictResponse(
        results=results, model_version=runtime.version, warnings=warnings
    )


@router.post("/webhook", responses=ERRORS, openapi_extra=json_body_docs(LabelStudioEvent))
def webhook(
    settings: AppSettings, event: Annotated[LabelStudioEvent, json_body(LabelStudioEvent)]
) -> dict:
    """Records annotation events (JSON lines in DISCOSEG_LABEL_STUDIO_EVENTS) for training;
    other events are ignored."""
    action = event.action
    if action not in TRAINING_EVENTS:
        return {"status": "ignored", "action": action}
    path = settings.label_studio_events
    line = json.dumps({"received_at": time.time(), **event.model_dump()})
    with _events_lock:
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("a") as log:
            log.write(line + "\n")
    return {"status": "recorded", "action": action}
