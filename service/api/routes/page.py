"""GET /: the annotation-assist web page, and its script and style under /static.

The page is plain HTML, JavaScript and CSS in service/static (no build step, nothing fetched
from elsewhere); it calls the /v1 API from the browser, so it needs no API key itself.
"""

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles

STATIC_DIR = Path(__file__).resolve().parents[2] / "static"
STATIC_PREFIX = "/static"

router = APIRouter(tags=["page"], include_in_schema=False)


@router.get("/", response_class=FileResponse)
async def page() -> FileResponse:
    """The annotation-assist page."""
    # Revalidated on every load, so a redeployed service never pairs old HTML with new script.
    return FileResponse(STATIC_DIR / "index.html", headers={"Cache-Control": "no-cache"})


def static_files() -> StaticFiles:
    """The ASGI app serving service/static; mount it at STATIC_PREFIX."""
    return StaticFiles(directory=STATIC_DIR)
