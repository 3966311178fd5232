"""The FastAPI app. `create_app()` builds it; nothing is built at import.

The model is loaded once per process, in the app's lifespan (or handed in already loaded, as
`discoseg serve` does), and shared by every request through `app.state.runtime`.

Run with `discoseg serve --model BUNDLE`, or `uvicorn --factory service.main:create_app`
(settings from DISCOSEG_* environment variables).
"""

import logging
import math
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager

import anyio
from fastapi import Depends, FastAPI
from fastapi.middleware.cors import CORSMiddleware
from fastapi_offline import FastAPIOffline

from service.api.deps import MODEL_HEADER, api_key_scheme
from service.api.middleware import ApiKeyMiddleware, BodyLimitMiddleware, SameOriginMiddleware
from service.api.routes import (
    health,
    jobs,
    labelstudio,
    models,
    page,
    pseudo_labels,
    refine,
    segment,
)
from service.core.config import Settings, get_settings
from service.errors import install_error_handlers
from service.jobs import create_backend
from service.metrics import Metrics, MetricsMiddleware
from service.runtime import ModelRuntime

logger = logging.getLogger(__name__)

# Room for the form fields and multipart framing that travel with the files; the whole body
# of a route without files.
FORM_ALLOWANCE_BYTES = 1 << 20


def guarded_by_api_key(path: str) -> bool:
    """The API, the Label Studio backend and the metrics need a key when DISCOSEG_API_KEYS is
    set; the page, the probes' status and the docs do not."""
    return path.startswith(("/v1/", "/ls/")) or path == "/metrics"


def create_app(settings: Settings | None = None, *, runtime: ModelRuntime | None = None) -> FastAPI:
    """The service app for `settings` (default: from the environment).

    runtime: an already loaded model to serve (it stays open when the app stops); by default
    the lifespan loads `settings.model_path` and closes it on shutdown.
    """
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            if app.state.runtime is None:
                loaded = await anyio.to_thread.run_sync(
                    ModelRuntime.load, settings, app.state.metrics
                )
                stack.callback(loaded.close)
                stack.callback(setattr, app.state, "runtime", None)
                app.state.runtime = loaded
            # Batch jobs: start the job backend here and set app.state.jobs (an object with
            # ping(); /readyz calls it), registering its shutdown on `stack`.
            backend = create_backend(settings, lambda: app.state.runtime)
            await anyio.to_thread.run_sync(backend.start, app.state.metrics.job_queue_depth)
            stack.callback(backend.stop)
            stack.callback(setattr, app.state, "jobs", None)
            app.state.jobs = backend
            served = app.state.runtime
            logger.info("serving model %s on %s; batch jobs on the %s backend",
                        served.version, served.device, backend.name)
            yield

    # FastAPIOffline serves Swagger UI (/docs) and ReDoc (/redoc) from files in its package
    # (under /static-offline-docs), not from a CDN: the docs work on a machine without internet.
    app = FastAPIOffline(
        title="discoseg",
        summary="Weakly supervised instance segmentation: segment images, or sample instance "
        "masks consistent with given tags or boxes (pseudo labels).",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.metrics = runtime.metrics if runtime is not None else Metrics()
    app.state.runtime = runtime
    app.state.jobs = None
    install_error_handlers(app)

    v1 = {"prefix": "/v1", "dependencies": [Depends(api_key_scheme)]}
    app.include_router(segment.router, **v1)
    app.include_router(pseudo_labels.router, **v1)
    app.include_router(refine.router, **v1)
    app.include_router(models.router, **v1)
    app.include_router(jobs.router, **v1)
    # Label Studio authenticates with Basic auth (its ML backend settings), the key as password.
    app.include_router(labelstudio.router, prefix="/ls", dependencies=[Depends(api_key_scheme)])
    app.include_router(health.router)
    app.include_router(page.router)
    app.mount(page.STATIC_PREFIX, page.static_files(), name="static")

    # Added innermost first: a request meets the metrics, CORS, the origin check, the API key
    # check and then the body limit.
    upload_limit = settings.max_upload_bytes + FORM_ALLOWANCE_BYTES
    # Label Studio posts JSON tasks, whose image may travel inline as a base64 data: URL.
    label_studio_limit = math.ceil(settings.max_upload_bytes * 4 / 3) + FORM_ALLOWANCE_BYTES
    app.add_middleware(
        BodyLimitMiddleware,
        limits={"/v1/segment": upload_limit, "/v1/pseudo-labels": upload_limit,
                "/v1/refine": upload_limit,
                "/v1/jobs": settings.max_job_bytes + FORM_ALLOWANCE_BYTES,
                "/ls/predict": label_studio_limit, "/ls/webhook": label_studio_limit},
        default=FORM_ALLOWANCE_BYTES,
    )
    app.add_middleware(ApiKeyMiddleware, settings=settings, guarded=guarded_by_api_key)
    app.add_middleware(SameOriginMiddleware, allowed=settings.cors_origins)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware, allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE"], allow_headers=["Authorization"],
            expose_headers=["Location", "Retry-After", MODEL_HEADER],
        )
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)  # outermost: counts all
    return app
