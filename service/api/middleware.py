"""The app's request guards, pure ASGI so that they answer before a request body is read:

- SameOriginMiddleware: a browser request from a page of another origin is refused (403)
  unless DISCOSEG_CORS_ORIGINS allows that origin; without it any web page a user visits
  could make their browser submit work to a discoseg it can reach.
- ApiKeyMiddleware: with DISCOSEG_API_KEYS set, guarded paths need a key; checked from the
  headers, so an unauthenticated upload is refused without being spooled to disk.
- BodyLimitMiddleware: every route's body is bounded: refused at once when the declared
  Content-Length is too large, else as soon as the streamed body passes the limit.
"""

from collections.abc import Callable, Mapping
from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.api.deps import api_key_problem
from service.core.config import Settings
from service.errors import error_response


class SameOriginMiddleware:
    """Requests carrying an `Origin` header (browsers send it on cross-origin requests and on
    every POST) pass when the origin's host is the request's own `Host` or is in `allowed`.
    Requests without one (curl, SDKs, same-origin page loads) pass."""

    def __init__(self, app: ASGIApp, allowed: list[str]) -> None:
        self.app = app
        self.allowed = frozenset(origin.rstrip("/") for origin in allowed)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            headers = Headers(scope=scope)
            origin = headers.get("origin")
            if origin is not None and not self._allowed(origin, headers.get("host", "")):
                message = (f"cross-origin request from {origin[:200]!r} refused; "
                           "allow the origin with DISCOSEG_CORS_ORIGINS")
                await error_response(403, "cross_origin", message)(scope, receive, send)
                return
        await self.app(scope, receive, send)

    def _allowed(self, origin: str, host: str) -> bool:
        if origin in self.allowed:
            return True
        # The scheme is left out: behind a TLS-terminating proxy the page is https while the
        # app sees http; the host (and port) decide whether it is this service's own page.
        return origin != "null" and urlsplit(origin).netloc.lower() == host.lower()


class ApiKeyMiddleware:
    """With API keys in `settings`, requests to paths for which `guarded(path)` is true need
    `Authorization: Bearer <key>` (or Basic auth with the key as password); others get a JSON
    401 before their body is read."""

    def __init__(self, app: ASGIApp, settings: Settings, guarded: Callable[[str], bool]) -> None:
        self.app = app
        self.settings = settings
        self.guarded = guarded

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.settings.api_keys and self.guarded(scope["path"]):
            problem = api_key_problem(self.settings, Headers(scope=scope).get("authorization"))
            if problem is not None:
                response = error_response(401, "unauthorized", problem,
                                          headers={"WWW-Authenticate": "Bearer"})
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """Refuses bodies over `limits[path]` bytes (`default` for other paths) with a JSON 413."""

    def __init__(self, app: ASGIApp, limits: Mapping[str, int], default: int) -> None:
        self.app = app
        self.limits = dict(limits)
        self.default = default

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limits.get(scope["path"], self.default)
        message = f"the request body exceeds {limit} bytes"
        declared = Headers(scope=scope).get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            await error_response(413, "payload_too_large", message)(scope, receive, send)
            return
        received = 0

        async def receive_limited() -> Message:
            nonlocal received
            incoming = await receive()
            received += len(incoming.get("body", b""))
            if received > limit:
                # FastAPI passes HTTPExceptions raised while reading the body to the handlers.
                raise StarletteHTTPException(413, message)
            return incoming

        await self.app(scope, receive_limited, send)
