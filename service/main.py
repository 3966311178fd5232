"""The FastAPI app. `create_app()` builds it; nothing is built at import.

The model is loaded once per process, in the app's lifespan (or handed in already loaded, as
`discoseg serve` does), and shared by every request through `app.state.runtime`.

Run with `discoseg serve --model BUNDLE`, or `uvicorn --factory service.main:create_app`
(settings from DISCOSEG_* environment variables).
"""

from collections.abc import AsyncIterator, Iterable
from contextlib import AsyncExitStack, asynccontextmanager

import anyio
from fastapi import Depends, FastAPI
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.deps import require_api_key
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
from service.errors import error_response, install_error_handlers
from service.jobs import create_backend
from service.metrics import Metrics, MetricsMiddleware
from service.runtime import ModelRuntime

# Room for the form fields and multipart framing that travel with an image.
FORM_ALLOWANCE_BYTES = 1 << 20
UPLOAD_PATHS = ("/v1/segment", "/v1/pseudo-labels", "/v1/refine")


class UploadLimitMiddleware:
    """Refuses bodies over `limit` bytes on `paths` with a JSON 413: at once when the declared
    Content-Length is too large, else as soon as the streamed body passes the limit, so an
    oversized upload is never read to its end."""

    def __init__(self, app: ASGIApp, paths: Iterable[str], limit: int) -> None:
        self.app = app
        self.paths = frozenset(paths)
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        message = f"the request body exceeds {self.limit} bytes"
        declared = dict(scope["headers"]).get(b"content-length", b"")
        if declared.isdigit() and int(declared) > self.limit:
            await error_response(413, "payload_too_large", message)(scope, receive, send)
            return
        received = 0

        async def receive_limited() -> Message:
            nonlocal received
            incoming = await receive()
            received += len(incoming.get("body", b""))
            if received > self.limit:
                # FastAPI passes HTTPExceptions raised while reading the body to the handlers.
                raise StarletteHTTPException(413, message)
            return incoming

        await self.app(scope, receive_limited, send)


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
            yield

    app = FastAPI(
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

    # Every /v1 route needs an API key when DISCOSEG_API_KEYS is set; probes and docs do not.
    v1 = {"prefix": "/v1", "dependencies": [Depends(require_api_key)]}
    app.include_router(segment.router, **v1)
    app.include_router(pseudo_labels.router, **v1)
    app.include_router(refine.router, **v1)
    app.include_router(models.router, **v1)
    app.include_router(jobs.router, **v1)
    # Label Studio sends Basic auth (its ML backend settings) or nothing: see require_api_key.
    app.include_router(labelstudio.router, prefix="/ls", dependencies=[Depends(require_api_key)])
    app.include_router(health.router)
    app.include_router(page.router)
    app.mount(page.STATIC_PREFIX, page.static_files(), name="static")

    app.add_middleware(
        UploadLimitMiddleware,
        paths=UPLOAD_PATHS,
        limit=settings.max_upload_bytes + FORM_ALLOWANCE_BYTES,
    )
    app.add_middleware(MetricsMiddleware, metrics=app.state.metrics)  # outermost: counts all
    return app
