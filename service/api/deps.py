"""Typed dependencies of the routes: settings, the model runtime, API keys, the uploaded image."""

import base64
import binascii
import secrets
from typing import Annotated

import numpy as np
from fastapi import Depends, File, Request, UploadFile
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from service.core.config import Settings
from service.errors import ApiError
from service.imaging import decode_image
from service.metrics import Metrics
from service.runtime import ModelRuntime

_bearer = HTTPBearer(auto_error=False, description="one of DISCOSEG_API_KEYS, when set")


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


def _basic_password(request: Request) -> str | None:
    """The password of `Authorization: Basic ...` (how Label Studio authenticates to an ML
    backend), or None."""
    scheme, _, value = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    return decoded.partition(":")[2]


def require_api_key(
    settings: AppSettings,
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """With DISCOSEG_API_KEYS set, a request needs `Authorization: Bearer <one of them>` (or
    Basic auth whose password is one of them)."""
    if not settings.api_keys:
        return
    password = _basic_password(request)
    if password is not None:
        offered = password.encode()
    elif credentials is None or credentials.scheme.lower() != "bearer":
        raise ApiError(
            401, "missing API key: send Authorization: Bearer <key>",
            headers={"WWW-Authenticate": "Bearer"},
        )
    else:
        offered = credentials.credentials.encode()
    # Compare with every key, so the time taken does not tell which one nearly matched.
    matches = [secrets.compare_digest(offered, k.get_secret_value().encode())
               for k in settings.api_keys]
    if not any(matches):
        raise ApiError(401, "invalid API key", headers={"WWW-Authenticate": "Bearer"})


async def read_image(
    settings: AppSettings,
    image: Annotated[UploadFile, File(description="JPEG, PNG, WebP or BMP image")],
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
