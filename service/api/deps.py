"""Typed dependencies of the routes and what they share: settings, the model runtime, API
keys, the uploaded image, JSON bodies, the seed rule."""

import base64
import binascii
import secrets
from typing import Annotated, Any

import numpy as np
from fastapi import Depends, File, Request, UploadFile
from fastapi.security import HTTPBearer
from fastapi.security.utils import get_authorization_scheme_param
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from service.core.config import Settings
from service.errors import ApiError
from service.imaging import decode_image
from service.metrics import Metrics
from service.runtime import ModelRuntime
from service.schemas import ErrorResponse, parse_json

# Declares the scheme in OpenAPI; service.api.middleware.ApiKeyMiddleware checks the key, from
# the headers, before any body is read.
api_key_scheme = HTTPBearer(auto_error=False, description="one of DISCOSEG_API_KEYS, when set")

# Sampling seeds, on every route that takes one: what torch.Generator.manual_seed accepts.
SEED_LIMIT = 2**63
# The response header that names the model version behind a result.
MODEL_HEADER = "X-Discoseg-Model"


def error_responses(*statuses: int) -> dict[int, dict]:
    """The OpenAPI `responses` of a route's error statuses: each an ErrorResponse body."""
    return {status: {"model": ErrorResponse} for status in statuses}


# The error statuses of the routes that run the model on an uploaded image.
ERRORS = error_responses(400, 401, 413, 415, 422, 503)


def get_app_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_runtime(request: Request) -> ModelRuntime:
    runtime = getattr(request.app.state, "runtime", None)
    if runtime is None:
        raise ApiError(503, "the model is not loaded yet", code="not_ready")
    return runtime


def get_metrics(request: Request) -> Metrics:
    return request.app.state.metrics


AppSettings = Annotated[Settings, Depends(get_app_settings)]
Model = Annotated[ModelRuntime, Depends(get_runtime)]
AppMetrics = Annotated[Metrics, Depends(get_metrics)]


def check_k(k: int, settings: Settings) -> None:
    """A 422 when k exceeds DISCOSEG_MAX_K, worded as the validation of k's lower bound
    (`Form(ge=1)`) words a k below 1."""
    if k > settings.max_k:
        raise ApiError(422, f"k: Input should be less than or equal to {settings.max_k}")


def api_key_problem(settings: Settings, authorization: str | None) -> str | None:
    """None when a request with this `Authorization` header may pass: no DISCOSEG_API_KEYS,
    `Bearer <one of them>`, or Basic auth whose password is one of them (how Label Studio
    authenticates to an ML backend); else why not."""
    if not settings.api_keys:
        return None
    offered = _offered_key(authorization)
    if offered is None:
        return "missing API key: send Authorization: Bearer <key>"
    # Compare with every key, so the time taken does not tell which one nearly matched.
    matches = [secrets.compare_digest(offered.encode(), k.get_secret_value().encode())
               for k in settings.api_keys]
    return None if any(matches) else "invalid API key"


def _offered_key(authorization: str | None) -> str | None:
    """The key of `Bearer <key>`, or the password of `Basic base64(user:password)`, or None."""
    scheme, value = get_authorization_scheme_param(authorization)
    if scheme.lower() == "bearer":
        return value or None
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value, validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    return decoded.partition(":")[2] or None


def is_authorized(request: Request) -> bool:
    """Whether the request may see what DISCOSEG_API_KEYS guards."""
    settings = request.app.state.settings
    return api_key_problem(settings, request.headers.get("authorization")) is None


async def read_image(
    settings: AppSettings,
    image: Annotated[UploadFile, File(description="JPEG (MPO), PNG, WebP, BMP or TIFF image")],
) -> np.ndarray:
    """The uploaded image as uint8[H, W, 3] RGB; 4xx errors for anything unusable."""
    if image.size is not None and image.size > settings.max_upload_bytes:
        raise ApiError(
            413, f"the upload is {image.size} bytes; at most {settings.max_upload_bytes} accepted"
        )
    data = await image.read(settings.max_upload_bytes + 1)
    if len(data) > settings.max_upload_bytes:
        raise ApiError(413, f"the upload exceeds {settings.max_upload_bytes} bytes")
    # Decoding a large image takes long enough to stall other requests: not on the event loop.
    return await run_in_threadpool(decode_image, data, max_pixels=settings.max_image_pixels)


UploadedImage = Annotated[np.ndarray, Depends(read_image)]


def json_body(schema: type[BaseModel]) -> Any:
    """`Depends` of the request's JSON body validated as `schema` by `parse_json` (a 422 naming
    the place inside the body otherwise): strict, without NaN, depth and numbers bounded, which
    FastAPI's own body parsing is not."""

    async def read(request: Request) -> BaseModel:
        return parse_json(schema, await request.body(), "body")

    return Depends(read)


def json_body_docs(schema: type[BaseModel]) -> dict:
    """The `openapi_extra` documenting a body that `json_body` reads (the route has no body
    parameter for FastAPI to describe); the schema's $defs are inlined, as the document's
    components do not hold them."""
    document = schema.model_json_schema(by_alias=True)
    definitions = document.pop("$defs", {})

    def inline(node: Any) -> Any:
        if isinstance(node, dict):
            if "$ref" in node:
                return inline(definitions[node["$ref"].rsplit("/", 1)[1]])
            return {key: inline(value) for key, value in node.items()}
        if isinstance(node, list):
            return [inline(value) for value in node]
        return node

    content = {"application/json": {"schema": inline(document)}}
    return {"requestBody": {"required": True, "content": content}}
