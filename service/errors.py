"""JSON errors for every failure: `{"error": {"code": "...", "message": "..."}}`.

Routes raise `ApiError` (or FastAPI's HTTPException); the library layers raise ValueError
subclasses, which are mapped here to 4xx statuses. Anything else is a bug: it is logged with its
traceback and answered with a 500 and a generic message, never the exception text.
"""

import logging
from http import HTTPStatus

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.imaging import ImageError
from service.runtime import InconsistentHints, Overloaded
from service.schemas import JsonFieldError

logger = logging.getLogger("service.errors")

_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "validation_error",
    429: "too_many_requests",
    503: "unavailable",
}


class ApiError(Exception):
    """An error answered as JSON with `status`, a machine-readable `code` and a message."""

    def __init__(
        self, status: int, message: str, *, code: str | None = None, headers: dict | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code or _CODES.get(status, "error")
        self.message = message
        self.headers = headers


def error_response(
    status: int, code: str, message: str, headers: dict | None = None
) -> JSONResponse:
    return JSONResponse(
        {"error": {"code": code, "message": message}}, status_code=status, headers=headers
    )


# pydantic's messages that do not say what to do.
_CLEARER = {"int_parsing_size": "the number has too many digits"}


def _validation_message(error: RequestValidationError) -> str:
    parts = []
    for item in error.errors():
        location = ".".join(str(p) for p in item.get("loc", ()) if p != "body")
        message = _CLEARER.get(item.get("type"), item.get("msg", "invalid"))
        parts.append(f"{location}: {message}" if location else message)
    return "; ".join(parts) or "invalid request"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, error: ApiError) -> JSONResponse:
        return error_response(error.status, error.code, error.message, error.headers)

    @app.exception_handler(ImageError)
    async def _image_error(request: Request, error: ImageError) -> JSONResponse:
        return error_response(error.status, error.code, str(error))

    @app.exception_handler(Overloaded)
    async def _overloaded(request: Request, error: Overloaded) -> JSONResponse:
        headers = {"Retry-After": str(error.retry_after)}
        return error_response(503, "overloaded", str(error), headers)

    @app.exception_handler(JsonFieldError)
    async def _json_field_error(request: Request, error: JsonFieldError) -> JSONResponse:
        return error_response(422, error.code, str(error))

    @app.exception_handler(InconsistentHints)
    async def _inconsistent(request: Request, error: InconsistentHints) -> JSONResponse:
        return error_response(422, "inconsistent_hints", str(error))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, error: StarletteHTTPException) -> JSONResponse:
        message = error.detail if isinstance(error.detail, str) else None
        if not message:
            message = HTTPStatus(error.status_code).phrase
        code = _CODES.get(error.status_code, "error")
        return error_response(error.status_code, code, message, getattr(error, "headers", None))

    @app.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, error: RequestValidationError) -> JSONResponse:
        return error_response(422, "validation_error", _validation_message(error))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, error: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s %s", request.method, request.url.path)
        return error_response(500, "internal_error", "internal server error")
