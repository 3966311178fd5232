"""The API documentation pages, /docs (Swagger UI) and /redoc, work without internet access:
they reference no other host, and every script, style sheet and icon they load is served by
the app itself."""

import re
from urllib.parse import urlsplit

import pytest
from fastapi.testclient import TestClient

DOC_PAGES = ("/docs", "/redoc")
# src/href attributes, and the JavaScript string literals of Swagger UI's set-up script
# (`url: '/openapi.json'`) and ReDoc's element (`spec-url="/openapi.json"`).
_REFERENCE = re.compile(r"""(?:src|href|url|spec-url)\s*[=:]\s*["']([^"']+)["']""")
_ABSOLUTE_URL = re.compile(r"""(?:https?:)?//[^\s"'<>)]+""")


def _references(html: str) -> list[str]:
    return [ref for ref in _REFERENCE.findall(html) if not ref.startswith(("data:", "#"))]


@pytest.mark.parametrize("path", DOC_PAGES)
def test_the_docs_page_names_no_other_host(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    own_host = urlsplit(str(response.url)).netloc
    other_hosts = [
        url for url in _ABSOLUTE_URL.findall(response.text) if urlsplit(url).netloc != own_host
    ]
    assert other_hosts == []


@pytest.mark.parametrize("path", DOC_PAGES)
def test_every_asset_the_docs_page_loads_is_served(client: TestClient, path: str) -> None:
    references = _references(client.get(path).text)
    scripts = [ref for ref in references if ref.endswith(".js")]
    assert scripts, "the page loads no script"
    assert "/openapi.json" in references
    for reference in references:
        response = client.get(reference)
        assert response.status_code == 200, reference
        assert response.content, reference
    expected_types = {".js": "javascript", ".css": "text/css", ".json": "application/json"}
    for suffix, media_type in expected_types.items():
        for reference in (ref for ref in references if ref.endswith(suffix)):
            assert media_type in client.get(reference).headers["content-type"], reference
