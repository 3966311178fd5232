"""Batch labeling jobs: POST /v1/jobs, GET /v1/jobs/{id}, GET /v1/jobs/{id}/result,
DELETE /v1/jobs/{id}.

A job labels many images, given as uploaded files (images and/or zip files) or as a COCO JSON
whose images lie under the server's data root, optionally with hints per image (tags or boxes:
from the COCO annotations, or from the `annotations` form field for uploads). Without hints it
runs the prediction network, with hints the conditional network (its top sample). The result is
a COCO annotation file with RLE masks and a score per annotation.

Routes are sync (staging copies files): FastAPI runs them on its thread pool. When the job
backend (Redis) is away they answer 503 with Retry-After; the rest of the API is unaffected.
"""

import io
import json
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, File, Form, Query, Request, Response, UploadFile

from models.thresholds import SCORE_THRESHOLD
from service.api.deps import SEED_LIMIT, AppSettings, error_responses
from service.core.config import Settings
from service.errors import ApiError
from service.jobs.backend import JobBackend, JobNotFinished
from service.jobs.record import JobRecord, JobSpec, LabelOptions, is_job_id
from service.jobs.staging import (
    StagingError,
    StagingLimits,
    Upload,
    parse_image_hints,
    resolve_under,
    stage_coco,
    stage_uploads,
)
from service.jobs.state import JobBackendUnavailable
from service.schemas import (
    ImageFailure,
    JobStatus,
    JsonFieldError,
    LabelStudioExport,
    Progress,
    parse_json,
)
from training.formats import (
    EXPORT_FORMATS,
    IMPORT_FORMATS,
    SINGLE_FILES,
    export_files,
    labels_from_coco,
    parse_labels,
    to_coco,
)
from training.formats.labelstudio import import_tasks

router = APIRouter(tags=["jobs"])

RETRY_AFTER_S = 5
JOB_ERRORS = error_responses(400, 401, 404, 409, 413, 422, 503)
ResultFormat = Literal[EXPORT_FORMATS]


def get_jobs(request: Request) -> JobBackend:
    backend = getattr(request.app.state, "jobs", None)
    if backend is None:
        raise ApiError(503, "the job backend is not started", code="jobs_unavailable",
                       headers={"Retry-After": str(RETRY_AFTER_S)})
    return backend


Jobs = Annotated[JobBackend, Depends(get_jobs)]


@contextmanager
def _backend_errors() -> Iterator[None]:
    try:
        yield
    except JobBackendUnavailable as error:
        raise ApiError(503, f"batch jobs are unavailable: {error}", code="jobs_unavailable",
                       headers={"Retry-After": str(RETRY_AFTER_S)}) from None
    except StagingError as error:
        raise ApiError(error.status, str(error), code=error.code) from None


def _as_coco(text: bytes, annotation_format: str, settings: Settings) -> str:
    """The COCO JSON of an annotation file in another format. Label Studio JSON goes through
    parse_json; images larger than DISCOSEG_MAX_IMAGE_PIXELS are refused before their masks
    are decoded; CSV image sizes are read under the data root, whose paths no file may leave."""
    data_root, max_pixels = settings.data_root, settings.max_image_pixels
    try:
        if annotation_format == "labelstudio":
            tasks = parse_json(LabelStudioExport, text, "coco", code="invalid_annotations")
            labels = import_tasks([task.model_dump(exclude_none=True) for task in tasks],
                                  max_pixels=max_pixels)
        else:
            labels = parse_labels(text, annotation_format, data_root, max_pixels=max_pixels)
        for image in labels.images:
            resolve_under(data_root, image.file_name)
    except (StagingError, JsonFieldError):
        raise
    except ValueError as error:
        message = f"the {annotation_format} file: {error}"
        raise StagingError("invalid_annotations", message, 422) from None
    return json.dumps(to_coco(labels))


def _status(request: Request, record: JobRecord, spec: JobSpec) -> JobStatus:
    failures = [
        ImageFailure(index=index, image_id=spec.items[index].image_id,
                     file_name=spec.items[index].file_name, error=error)
        for index, error in sorted(record.errors.items())
    ]
    finished = record.state in ("succeeded", "failed")
    return JobStatus(
        id=record.job_id, state=record.state.value,
        progress=Progress(done=record.done, total=record.total), errors=failures,
        created_at=record.created_at, started_at=record.started_at,
        finished_at=record.finished_at, fetched_at=record.fetched_at,
        expires_at=record.expires_at,
        result=str(request.url_for("job_result", job_id=record.job_id)) if finished else None,
    )


def _found(jobs: JobBackend, job_id: str) -> tuple[JobRecord, JobSpec]:
    found = jobs.status(job_id) if is_job_id(job_id) else None
    if found is None:
        raise ApiError(404, f"no job {job_id!r} (unknown, deleted or expired)")
    return found


@router.post("/jobs", status_code=202, response_model=JobStatus, responses=JOB_ERRORS)
def create_job(
    request: Request,
    response: Response,
    jobs: Jobs,
    settings: AppSettings,
    files: Annotated[
        list[UploadFile] | None,
        File(description="images (JPEG or MPO, PNG, WebP, BMP, TIFF) and/or zips"),
    ] = None,
    coco: Annotated[
        UploadFile | None,
        File(description="COCO JSON whose images' file_name lie under the server's data root "
                         "(or the annotation file of `annotation_format`)"),
    ] = None,
    annotation_format: Annotated[
        Literal[IMPORT_FORMATS],
        Form(description="what the `coco` file is: coco, csv (file,tags or "
                         "file,label,x0,y0,x1,y1), labelstudio (JSON export) or cvat (XML)"),
    ] = "coco",
    hints: Annotated[
        Literal["none", "tags", "boxes"],
        Form(description="none: prediction network; tags/boxes: conditional network with the "
                         "COCO annotations' (or the `annotations` field's) tags or boxes"),
    ] = "none",
    annotations: Annotated[
        str | None,
        Form(description='uploads only: JSON {"file name": {"tags": [names]} or '
                         '{"boxes": [{"label": name, "bbox": [x0, y0, x1, y1]}]}}'),
    ] = None,
    score_threshold: Annotated[
        float, Form(ge=0, le=1, allow_inf_nan=False)
    ] = SCORE_THRESHOLD,
    max_instances: Annotated[int, Form(ge=1, le=1000)] = 100,
    seed: Annotated[
        int, Form(ge=0, lt=SEED_LIMIT, description="sampling seed (hints only)")
    ] = 0,
) -> JobStatus:
    """Start a batch labeling job; poll GET /v1/jobs/{id} and fetch /v1/jobs/{id}/result."""
    if bool(files) == (coco is not None):
        raise ApiError(422, "give either `files` (images or zips) or `coco`, not both or none")
    if coco is not None and annotations:
        raise ApiError(422, "`annotations` is for uploads; a COCO job takes its own")
    options = LabelOptions(hints=hints, score_threshold=score_threshold,
                           max_instances=max_instances, seed=seed)
    job_id = jobs.new_job_id()
    with _backend_errors():
        jobs.ping()  # refuse before copying uploads when the backend is away
        try:
            if coco is not None:
                text = coco.file.read(settings.max_upload_bytes + 1)
                if len(text) > settings.max_upload_bytes:
                    raise ApiError(413, f"the COCO file exceeds {settings.max_upload_bytes} bytes")
                if annotation_format != "coco":
                    text = _as_coco(text, annotation_format, settings)
                items = stage_coco(text, settings.data_root, hints_mode=hints,
                                   max_files=settings.max_files_per_job)
            else:
                items = stage_uploads(
                    jobs.store.input_dir(job_id),
                    [Upload(f.filename or "upload", f.file) for f in files or []],
                    hints_mode=hints, image_hints=parse_image_hints(annotations),
                    limits=StagingLimits(settings.max_files_per_job, settings.max_upload_bytes,
                                         settings.max_job_bytes),
                )
        except BaseException:
            jobs.store.delete(job_id)
            raise
        record = jobs.submit(job_id, items, options)
        spec = jobs.store.read_spec(job_id)
    response.headers["Location"] = str(request.url_for("job_status", job_id=job_id))
    return _status(request, record, spec)


@router.get("/jobs/{job_id}", response_model=JobStatus, responses=JOB_ERRORS, name="job_status")
def job_status(request: Request, jobs: Jobs, job_id: str) -> JobStatus:
    """State, progress {done, total} and the images that failed."""
    with _backend_errors():
        record, spec = _found(jobs, job_id)
    return _status(request, record, spec)


@router.get(
    "/jobs/{job_id}/result",
    responses={200: {"content": {"application/zip": {}, "application/xml": {}}}, **JOB_ERRORS},
    name="job_result",
    response_model=None,
)
def job_result(
    jobs: Jobs,
    job_id: str,
    format: Annotated[
        ResultFormat,
        Query(description="coco (JSON, RLE masks); coco-polygons, labelstudio (tasks JSON), "
                          "cvat (XML); yolo-seg and voc-png as a zip"),
    ] = "coco",
) -> dict | Response:
    """The labels of a finished job (409 while it runs or if it was cancelled): a COCO
    annotation file, or the same labels in another format. The first download starts a shorter
    expiry (DISCOSEG_JOB_FETCHED_TTL_S)."""
    with _backend_errors():
        _found(jobs, job_id)
        try:
            result = jobs.result(job_id)
        except JobNotFinished as error:
            raise ApiError(409, str(error), code="job_not_finished") from None
    if result is None:
        raise ApiError(404, f"no job {job_id!r} (unknown, deleted or expired)")
    if format == "coco":
        return result
    files = export_files(labels_from_coco(result, f"job {job_id}"), format)
    if format in SINGLE_FILES:
        name, media_type = SINGLE_FILES[format]
        return Response(next(iter(files.values())), media_type=media_type,
                        headers={"Content-Disposition": f'attachment; filename="{name}"'})
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for relative, content in files.items():
            archive.writestr(relative, content)
    return Response(buffer.getvalue(), media_type="application/zip", headers={
        "Content-Disposition": f'attachment; filename="{job_id}-{format}.zip"'})


@router.delete(
    "/jobs/{job_id}", response_model=JobStatus, responses={204: {}, **JOB_ERRORS}
)
def cancel_job(request: Request, jobs: Jobs, job_id: str) -> JobStatus | Response:
    """Cancel a queued or running job (200, state "cancelled": chunks not yet run never run,
    its inputs are deleted); a finished or cancelled job is deleted with its result (204)."""
    with _backend_errors():
        record, spec = _found(jobs, job_id)
        record = jobs.cancel(job_id)
    if record is None:
        return Response(status_code=204)
    return _status(request, record, spec)
