"""Probes and metrics, open without an API key: /healthz, /readyz, /metrics."""

import inspect
import logging

import anyio
from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

from service.api.deps import AppMetrics
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
    """200 when the model is loaded and the job backend (when there is one) answers its ping."""
    checks = {"model": "ok" if getattr(request.app.state, "runtime", None) else "not loaded"}
    jobs = getattr(request.app.state, "jobs", None)
    if jobs is not None:
        checks["jobs"] = await _ping(jobs)
    ready = all(v == "ok" for v in checks.values())
    body = Health(status="ready" if ready else "not ready", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


async def _ping(backend: object) -> str:
    """'ok', or why the backend's `ping()` (sync or async) failed or timed out."""
    try:
        with anyio.fail_after(PING_TIMEOUT_S):
            result = await anyio.to_thread.run_sync(backend.ping, abandon_on_cancel=True)
            if inspect.isawaitable(result):
                result = await result
    except TimeoutError:
        return f"no answer within {PING_TIMEOUT_S:g} s"
    except Exception as error:  # any failure of the backend means "not ready", not a 500
        logger.warning("job backend ping failed: %s", error)
        return f"ping failed: {type(error).__name__}: {error}"
    return "ok" if result is not False else "ping returned false"


@router.get("/metrics", response_class=Response)
async def metrics(metrics: AppMetrics) -> Response:
    """Prometheus text exposition."""
    body, content_type = metrics.render()
    return Response(body, media_type=content_type)
