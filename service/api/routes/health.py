"""Probes and metrics: /healthz, /readyz, /metrics.

The probes' status is open; with DISCOSEG_API_KEYS set, /readyz shows its checks (which may
quote backend errors) only to a request with a key, and /metrics needs one
(service.main.guarded_by_api_key).
"""

import inspect
import logging
from collections.abc import Callable

import anyio
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from service.api.deps import AppMetrics, is_authorized
from service.schemas import Health

router = APIRouter(tags=["health"])
logger = logging.getLogger(__name__)
PING_TIMEOUT_S = 2.0


@router.get("/healthz", response_model=Health)
async def healthz() -> Health:
    """The process is alive (it answers); says nothing about the model."""
    return Health(status="ok")


@router.get("/readyz", response_model=Health, responses={503: {"model": Health}})
async def readyz(request: Request) -> JSONResponse:
    """"ready" (200) when the model is loaded and the job backend (when there is one) answers
    its ping; "degraded" (200) when this API serves but batch jobs cannot progress (no live
    worker, or workers that cannot load the model); else "not ready" (503)."""
    checks = {"model": "ok" if getattr(request.app.state, "runtime", None) else "not loaded"}
    jobs = getattr(request.app.state, "jobs", None)
    if jobs is not None:
        checks["jobs"] = await _ping(jobs)
        workers = await _workers(jobs) if checks["jobs"] == "ok" else None
        if workers is not None:
            checks["workers"] = workers
    serving = checks["model"] == "ok" and checks.get("jobs", "ok") == "ok"
    degraded = checks.get("workers", "ok") != "ok"
    status = "ready" if serving and not degraded else "degraded" if serving else "not ready"
    body = Health(status=status, checks=checks if is_authorized(request) else {})
    return JSONResponse(body.model_dump(), status_code=200 if serving else 503)


async def _ping(backend: object) -> str:
    """'ok', or why the backend's `ping()` (sync or async) failed or timed out."""
    try:
        result = await _call(backend.ping)
    except Exception as error:  # any failure of the backend means "not ready", not a 500
        return _failure("ping", error)
    return "ok" if result is not False else "ping returned false"


async def _workers(backend: object) -> str | None:
    """The backend's `workers_check()`: 'ok' or what keeps workers from running chunks; None
    where there are no workers (chunks run in this process)."""
    check = getattr(backend, "workers_check", None)
    if check is None:
        return None
    try:
        return await _call(check)
    except Exception as error:
        return _failure("workers check", error)


async def _call(function: Callable[[], object]) -> object:
    """`function()` (sync, or returning an awaitable) on a thread, within PING_TIMEOUT_S."""
    with anyio.fail_after(PING_TIMEOUT_S):
        result = await anyio.to_thread.run_sync(function, abandon_on_cancel=True)
        return await result if inspect.isawaitable(result) else result


def _failure(what: str, error: Exception) -> str:
    if isinstance(error, TimeoutError):
        return f"no answer within {PING_TIMEOUT_S:g} s"
    logger.warning("job backend %s failed: %s", what, error)
    return f"{what} failed: {type(error).__name__}: {error}"


@router.get("/metrics", response_class=Response)
async def metrics(metrics: AppMetrics) -> Response:
    """Prometheus text exposition."""
    body, content_type = metrics.render()
    return Response(body, media_type=content_type)
