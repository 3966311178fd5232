"""The annotation-assist page at GET /: the served files (TestClient), and the whole annotation
flow in headless Chromium against the real app served by uvicorn.

Chromium is driven through the DevTools protocol over `--remote-debugging-pipe` (JSON messages
ending in NUL on file descriptors 3 and 4), so the test needs no Python package beyond the
project's. `.ci/install-browser` installs Chromium; without one the browser test is skipped.
"""

import base64
import json
import os
import re
import select
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from pathlib import Path

import httpx
import numpy as np
import pytest
import uvicorn
from fastapi.testclient import TestClient
from pycocotools import mask as mask_utils
from scipy import ndimage

from service.api.routes.page import STATIC_DIR
from service.core.config import Settings
from service.main import create_app
from service.runtime import ModelRuntime
from tests.service.conftest import API_KEY, CLASSES, IMAGE_SIZE, encode, scene_image

PAGE_FILES = ("index.html", "app.js", "style.css")
BROWSERS = ("chromium", "chromium-browser", "google-chrome")


# ---- the served files ----


def test_the_page_is_served_at_the_root(client: TestClient) -> None:
    response = client.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["cache-control"] == "no-cache"
    html = response.text
    for element_id in ("image-file", "api-key", "tags", "k", "seed", "suggest", "segment",
                       "accept", "canvas", "samples", "error"):
        assert f'id="{element_id}"' in html, element_id
    assert re.search(r'id="k"[^>]*min="1"[^>]*max="32"[^>]*value="10"', html)


def test_every_file_the_page_references_is_served(client: TestClient) -> None:
    html = client.get("/").text
    references = re.findall(r'(?:src|href)="([^"]+)"', html)
    assets = [ref for ref in references if not ref.startswith("data:")]
    assert sorted(assets) == ["/static/app.js", "/static/style.css"]
    kinds = {"/static/app.js": "javascript", "/static/style.css": "text/css"}
    for asset in assets:
        response = client.get(asset)
        assert response.status_code == 200, asset
        assert kinds[asset] in response.headers["content-type"]
        assert response.content == (STATIC_DIR / asset.removeprefix("/static/")).read_bytes()


@pytest.mark.parametrize("path", ["/static/missing.js", "/static/../main.py", "/static/"])
def test_unknown_static_paths_are_json_404s(client: TestClient, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "not_found"


def test_the_page_needs_no_api_key_but_the_api_still_does(
    make_client: Callable[..., AbstractContextManager[TestClient]],
) -> None:
    with make_client(api_keys=[API_KEY]) as client:
        assert client.get("/").status_code == 200
        assert client.get("/static/app.js").status_code == 200
        assert client.get("/v1/models").status_code == 401


def test_the_page_is_not_part_of_the_api_schema(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert "/" not in paths
    assert not any(path.startswith("/static") for path in paths)


@pytest.mark.parametrize("name", PAGE_FILES)
def test_the_page_fetches_nothing_from_elsewhere(name: str) -> None:
    text = (STATIC_DIR / name).read_text()
    # Absolute or protocol-relative URLs, CSS imports, and url() other than data: URLs.
    assert not re.findall(r"(?:[a-z][a-z0-9+.-]*:)?//[a-z0-9-]+(?:\.[a-z0-9-]+)+", text, re.I)
    assert "@import" not in text
    assert not re.findall(r"url\(\s*['\"]?(?!data:)", text)


# ---- the annotation flow in a real browser ----


def find_browser() -> str | None:
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


class DevTools:
    """A headless Chromium and a DevTools protocol session on one of its pages."""

    def __init__(self, executable: str, workdir: Path) -> None:
        command_read, command_write = os.pipe()
        reply_read, reply_write = os.pipe()

        def connect_pipes() -> None:  # in the child: Chromium expects the pipe on fds 3 and 4
            os.dup2(command_read, 3)
            os.dup2(reply_write, 4)

        self.log_path = workdir / "chromium.log"
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [
                    executable, "--headless", "--no-sandbox", "--disable-gpu",
                    "--disable-dev-shm-usage", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update",
                    "--disable-sync", "--disable-extensions", "--hide-scrollbars",
                    "--window-size=1280,900", f"--user-data-dir={workdir / 'profile'}",
                    "--remote-debugging-pipe", "about:blank",
                ],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                pass_fds=(3, 4), preexec_fn=connect_pipes,
            )
        os.close(command_read)
        os.close(reply_write)
        self._commands = os.fdopen(command_write, "wb")
        self._replies = reply_read
        self._buffer = b""
        self._last_id = 0
        self.events: list[dict] = []
        self.session: str | None = None
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self.session = self.call("Target.attachToTarget", targetId=target, flatten=True)[
            "sessionId"
        ]
        for domain in ("Page", "Runtime", "DOM"):
            self.call(f"{domain}.enable")

    def _message(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError("no DevTools message in time")
            if select.select([self._replies], [], [], remaining)[0]:
                chunk = os.read(self._replies, 1 << 20)
                if not chunk:
                    raise ConnectionError(
                        f"Chromium closed the DevTools pipe; log: {self.log_path.read_text()}"
                    )
                self._buffer += chunk
        message, _, self._buffer = self._buffer.partition(b"\0")
        return json.loads(message)

    def call(self, method: str, *, browser: bool = False, timeout: float = 30, **params) -> dict:
        """The result of a command on the page (or, with browser=True, the browser)."""
        self._last_id += 1
        message: dict = {"id": self._last_id, "method": method, "params": params}
        if self.session and not browser:
            message["sessionId"] = self.session
        self._commands.write(json.dumps(message).encode() + b"\0")
        self._commands.flush()
        deadline = time.monotonic() + timeout
        while True:
            reply = self._message(deadline)
            if reply.get("id") != self._last_id:
                self.events.append(reply)
            elif "error" in reply:
                raise RuntimeError(f"{method}: {reply['error']}")
            else:
                return reply["result"]

    def close(self) -> None:
        with suppress(ConnectionError, TimeoutError, RuntimeError, OSError):
            self.call("Browser.close", browser=True, timeout=5)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._commands.close()
        os.close(self._replies)


class Page:
    """What an annotator does: click, drag, type, pick files; and what the test reads back."""

    def __init__(self, devtools: DevTools) -> None:
        self.devtools = devtools

    def evaluate(self, expression: str) -> object:
        result = self.devtools.call(
            "Runtime.evaluate", expression=expression, awaitPromise=True, returnByValue=True
        )
        if "exceptionDetails" in result:
            raise AssertionError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60) -> object:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if value := self.evaluate(expression):
                return value
            time.sleep(0.05)
        shown = self.evaluate(
            "JSON.stringify({error: document.getElementById('error').textContent, "
            "status: document.getElementById('status').textContent})"
        )
        raise AssertionError(f"timed out waiting for {expression}; the page shows {shown}")

    def goto(self, url: str) -> None:
        self.devtools.call("Page.navigate", url=url)
        self.wait_for(
            "document.readyState === 'complete' && location.href.startsWith("
            + json.dumps(url) + ")"
        )

    def center(self, selector: str) -> tuple[float, float]:
        box = self.evaluate(
            f"(() => {{ const r = document.querySelector({json.dumps(selector)})"
            ".getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()"
        )
        return box[0], box[1]

    def mouse(
        self, kind: str, x: float, y: float, buttons: int = 1, modifiers: int = 0
    ) -> None:
        """modifiers: the DevTools bit mask (8: Shift)."""
        self.devtools.call(
            "Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", buttons=buttons,
            clickCount=1, modifiers=modifiers,
        )

    def click(self, selector: str) -> None:
        x, y = self.center(selector)
        self.mouse("mousePressed", x, y)
        self.mouse("mouseReleased", x, y, buttons=0)

    def canvas_point(self, fx: float, fy: float) -> tuple[float, float]:
        """The viewport position of a point given as fractions of the canvas's drawn area."""
        left, top, width, height = self.evaluate(
            "(() => { const c = document.getElementById('canvas'); "
            "const r = c.getBoundingClientRect(); "
            "return [r.x + c.clientLeft, r.y + c.clientTop, c.clientWidth, c.clientHeight]; })()"
        )
        return left + fx * width, top + fy * height

    def click_on_canvas(self, fx: float, fy: float, *, shift: bool = False) -> None:
        x, y = self.canvas_point(fx, fy)
        self.mouse("mousePressed", x, y, modifiers=8 if shift else 0)
        self.mouse("mouseReleased", x, y, buttons=0, modifiers=8 if shift else 0)

    def drag_on_canvas(self, start: tuple[float, float], end: tuple[float, float]) -> None:
        """A drag between two points given as fractions of the canvas's drawn area."""
        points = [self.canvas_point(fx, fy) for fx, fy in (start, end)]
        self.mouse("mousePressed", *points[0])
        for step in range(1, 6):
            fraction = step / 5
            x = points[0][0] + fraction * (points[1][0] - points[0][0])
            y = points[0][1] + fraction * (points[1][1] - points[0][1])
            self.mouse("mouseMoved", x, y)
        self.mouse("mouseReleased", *points[1], buttons=0)

    def type_into(self, selector: str, text: str) -> None:
        """Types `text` into an empty field, then leaves it (which fires `change`)."""
        self.evaluate(f"document.querySelector({json.dumps(selector)}).focus()")
        self.devtools.call("Input.insertText", text=text)
        self.evaluate(f"document.querySelector({json.dumps(selector)}).blur()")

    def fill(self, selector: str, value: str) -> None:
        self.evaluate(
            f"(() => {{ const field = document.querySelector({json.dumps(selector)}); "
            f"field.value = {json.dumps(value)}; "
            "field.dispatchEvent(new Event('change', {bubbles: true})); })()"
        )

    def choose(self, selector: str, values: list[str]) -> None:
        self.evaluate(
            f"(() => {{ const select = document.querySelector({json.dumps(selector)}); "
            f"const wanted = {json.dumps(values)}; "
            "for (const option of select.options) option.selected = wanted.includes(option.value);"
            " select.dispatchEvent(new Event('change', {bubbles: true})); })()"
        )

    def choose_file(self, selector: str, path: Path) -> None:
        root = self.devtools.call("DOM.getDocument")["root"]["nodeId"]
        node = self.devtools.call("DOM.querySelector", nodeId=root, selector=selector)["nodeId"]
        self.devtools.call("DOM.setFileInputFiles", nodeId=node, files=[str(path)])

    def text(self, selector: str) -> str:
        return self.evaluate(f"document.querySelector({json.dumps(selector)}).textContent")

    def count(self, selector: str) -> int:
        return self.evaluate(f"document.querySelectorAll({json.dumps(selector)}).length")

    def visible(self, selector: str) -> bool:
        return self.evaluate(f"document.querySelector({json.dumps(selector)}).checkVisibility()")

    def error(self) -> str | None:
        """The error message the page shows, or None."""
        return self.text("#error") if self.visible("#error") else None

    def screenshot(self, path: Path) -> bytes:
        data = base64.b64decode(self.devtools.call("Page.captureScreenshot", format="png")["data"])
        path.write_bytes(data)
        return data


@contextmanager
def serve(app: object) -> Iterator[str]:
    """The app served by uvicorn on a free port of 127.0.0.1 (in a thread); yields its URL."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        listener.close()


@pytest.fixture(scope="module")
def site(make_settings: Callable[..., Settings], runtime: ModelRuntime) -> Iterator[str]:
    """The real app behind an API key, allowing fewer samples (8) than the page does (32)."""
    app = create_app(make_settings(api_keys=[API_KEY], max_k=8), runtime=runtime)
    with serve(app) as url:
        yield url


@pytest.fixture
def page(tmp_path: Path) -> Iterator[Page]:
    executable = find_browser()
    if executable is None:
        pytest.skip("no Chromium on this machine: run .ci/install-browser to install one")
    devtools = DevTools(executable, tmp_path)
    try:
        yield Page(devtools)
        exceptions = [e for e in devtools.events if e.get("method") == "Runtime.exceptionThrown"]
        assert not exceptions, f"the page threw: {exceptions}"
    finally:
        devtools.close()


def _direct_pseudo_labels(site: str, image: bytes, **form: str) -> dict:
    response = httpx.post(
        f"{site}/v1/pseudo-labels",
        files={"image": ("scene.png", image, "image/png")},
        data=form,
        headers={"Authorization": f"Bearer {API_KEY}"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    return response.json()


def _deepest_uncovered_pixel(instances: list[dict]) -> tuple[int, int, float]:
    """(y, x, colour shade) of the last instance's mask pixel farthest from its outline and
    clear of the boxes and labels drawn over the masks."""
    masks = [
        mask_utils.decode({"size": i["mask"]["size"], "counts": i["mask"]["counts"].encode()})
        for i in instances
    ]
    # Padded: the image border is an outline too.
    depth = ndimage.distance_transform_edt(np.pad(masks[-1], 1))[1:-1, 1:-1]
    rows, columns = np.mgrid[:IMAGE_SIZE, :IMAGE_SIZE]
    for instance in instances:
        x0, y0, x1, y1 = instance["bbox"]
        inside = (rows >= y0 - 1.5) & (rows <= y1 + 1.5) & (columns >= x0 - 1.5)
        lines = inside & (columns <= x1 + 1.5) & (
            (np.abs(columns - x0) <= 1.5) | (np.abs(columns - x1) <= 1.5)
            | (np.abs(rows - y0) <= 1.5) | (np.abs(rows - y1) <= 1.5)
        )
        # The label: 16 canvas pixels (3 image pixels at 540 / 96) above the box, or inside
        # it at the top of the image.
        label = (rows >= y0 - 4) & (rows <= max(y0, 3) + 1.5) & (columns >= x0 - 1.5) & (
            columns <= x0 + 20
        )
        depth[lines | label] = 0
    assert depth.max() >= 2, "no pixel of the last mask is clear of the drawn boxes"
    y, x = np.unravel_index(np.argmax(depth), depth.shape)
    return int(y), int(x), 1 - 0.25 * ((len(instances) - 1) % 3)


def test_labels_that_would_cover_one_another_go_a_line_lower(page: Page, site: str) -> None:
    """An instance's box often starts at its hint box's corner: its label goes below the hint's
    instead of over it; a label clear of the others stays where it was wanted."""
    page.goto(f"{site}/")
    wanted = [
        {"x": 10, "y": 20, "width": 60},
        {"x": 12, "y": 20, "width": 80},  # covers the first
        {"x": 30, "y": 28, "width": 40},  # covers the first, then the second one line lower
        {"x": 200, "y": 20, "width": 50},  # clear of all
    ]
    placed = page.evaluate(f"placeLabels({json.dumps(wanted)}, 300)")
    assert [label["y"] for label in placed] == [20, 36, 60, 20]
    assert [{**label, "y": 0} for label in placed] == [{**label, "y": 0} for label in wanted]
    # No line below fits in the canvas: the label stays where it was wanted.
    assert page.evaluate(f"placeLabels({json.dumps(wanted[:2])}, 40)") == wanted[:2]


@pytest.mark.slow
def test_an_annotator_gets_and_accepts_pseudo_labels(
    page: Page, site: str, tmp_path: Path
) -> None:
    image_path = tmp_path / "scene.png"
    image_path.write_bytes(encode(scene_image(4)))
    downloads = tmp_path / "downloads"
    downloads.mkdir()
    page.devtools.call(
        "Browser.setDownloadBehavior", browser=True, behavior="allow",
        downloadPath=str(downloads),
    )

    page.goto(f"{site}/")
    # Without the key the API refuses the class list, and the page says why.
    assert not page.visible("#result-bar")
    page.wait_for("document.getElementById('error').checkVisibility()")
    assert "missing API key" in page.error()
    page.type_into("#api-key", API_KEY)
    page.wait_for("document.querySelectorAll('#tags option').length === 3")
    assert page.evaluate("[...document.querySelectorAll('#tags option')].map(o => o.value)") == (
        CLASSES
    )
    assert page.error() is None

    page.choose_file("#image-file", image_path)
    page.wait_for("document.getElementById('status').textContent.includes('96×96')")

    # A request the service refuses (k above its limit of 8) shows the service's message.
    page.choose("#tags", ["disc"])
    page.fill("#k", "12")
    page.click("#suggest")
    page.wait_for("document.getElementById('error').checkVisibility()")
    assert "k: Input should be less than or equal to 8" in page.error()
    assert "HTTP 422" in page.error()
    assert page.count(".thumb") == 0 and not page.visible("#result-bar")

    page.fill("#k", "6")
    page.fill("#seed", "1")
    page.click("#suggest")
    # The service returns at most k distinct samples; the same request gives the same ones.
    samples = _direct_pseudo_labels(
        site, image_path.read_bytes(), tags='["disc"]', k="6", seed="1"
    )["samples"]
    assert 1 <= len(samples) <= 6
    page.wait_for(f"document.querySelectorAll('.thumb').length === {len(samples)}")
    assert page.error() is None and page.visible("#result-bar")
    assert page.evaluate(
        "[...document.querySelectorAll('.thumb span')].map(s => s.textContent)"
    ) == [
        f"#{i + 1} · {len(sample['instances'])} inst. · score {sample['score']:.2f}"
        for i, sample in enumerate(samples)
    ]
    noun = "sample" if len(samples) == 1 else "samples"
    assert f"{len(samples)} {noun}" in page.text("#result-info")
    chosen = len(samples) - 1
    page.click(f".thumb:nth-child({chosen + 1})")
    assert page.evaluate(
        "[...document.querySelectorAll('.thumb')].findIndex(t => t.classList.contains('selected'))"
    ) == chosen
    screenshot = page.screenshot(tmp_path / "pseudo-labels.png")
    assert screenshot.startswith(b"\x89PNG\r\n\x1a\n")

    expected = samples[chosen]["instances"]
    y, x, shade = _deepest_uncovered_pixel(expected)
    # The large view tints the chosen sample's masks (decoded by the page) in shades of the
    # disc colour at 140/255 opacity; the last instance is painted on top.
    shown = page.evaluate(
        f"(() => {{ const c = document.getElementById('canvas'); const s = c.width / {IMAGE_SIZE};"
        f" return [...c.getContext('2d').getImageData(Math.floor(({x} + 0.5) * s), "
        f"Math.floor(({y} + 0.5) * s), 1, 1).data]; }})()"
    )
    alpha = 140 / 255
    tinted = (1 - alpha) * scene_image(4)[y, x] + alpha * np.round(np.array([230, 25, 75]) * shade)
    assert np.abs(np.array(shown[:3]) - tinted).max() <= 12, (shown, tinted)

    page.click("#accept")
    deadline = time.monotonic() + 20
    while not (saved := list(downloads.glob("*.json"))) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [path.name for path in saved] == ["scene.coco.json"]
    coco = json.loads(saved[0].read_text())

    assert coco["images"] == [
        {"id": 1, "file_name": "scene.png", "width": IMAGE_SIZE, "height": IMAGE_SIZE}
    ]
    assert coco["categories"] == [{"id": i + 1, "name": name} for i, name in enumerate(CLASSES)]
    assert len(coco["annotations"]) == len(expected) > 0
    for annotation, instance in zip(coco["annotations"], expected, strict=True):
        assert annotation["category_id"] == CLASSES.index(instance["label"]) + 1
        assert annotation["segmentation"] == instance["mask"]
        x0, y0, x1, y1 = instance["bbox"]
        assert annotation["bbox"] == pytest.approx([x0, y0, x1 - x0, y1 - y0])
        # The area comes from the page's own RLE decoder; pycocotools must agree.
        rle = {"size": instance["mask"]["size"], "counts": instance["mask"]["counts"].encode()}
        assert annotation["area"] == int(mask_utils.area(rle)) > 0
        assert annotation["iscrowd"] == 0 and annotation["image_id"] == 1


@pytest.mark.slow
def test_an_annotator_draws_boxes_and_segments(page: Page, site: str, tmp_path: Path) -> None:
    image_path = tmp_path / "boxes.png"
    image_path.write_bytes(encode(scene_image(6)))
    page.goto(f"{site}/")
    page.type_into("#api-key", API_KEY)
    page.wait_for("document.querySelectorAll('#box-class option').length === 3")
    page.choose_file("#image-file", image_path)
    page.wait_for("document.getElementById('status').textContent.includes('96×96')")
    page.click('input[name="mode"][value="boxes"]')
    assert page.visible("#boxes-panel") and not page.visible("#tags-panel")

    page.fill("#box-class", "square")
    page.drag_on_canvas((0.06, 0.11), (0.62, 0.52))
    page.fill("#box-class", "disc")
    page.drag_on_canvas((0.42, 0.47), (0.94, 0.99))
    page.drag_on_canvas((0.1, 0.1), (0.3, 0.3))
    page.drag_on_canvas((0.5, 0.5), (0.505, 0.505))  # a click, not a box
    assert page.count("#box-list li") == 3
    page.click("#box-list li:nth-child(3) .delete-box")
    boxes = page.evaluate(
        "[...document.querySelectorAll('#box-list li')].map(li => "
        "[li.querySelector('select').value, li.querySelector('code').textContent])"
    )
    assert [label for label, _ in boxes] == ["square", "disc"]
    drawn = [[float(v) for v in coords.split(",")] for _, coords in boxes]
    wanted = np.array([[0.06, 0.11, 0.62, 0.52], [0.42, 0.47, 0.94, 0.99]]) * IMAGE_SIZE
    assert np.abs(np.array(drawn) - wanted).max() <= 1  # the list shows whole pixels

    page.fill("#k", "3")
    page.fill("#seed", "")
    page.click("#suggest")
    page.wait_for("document.querySelectorAll('.thumb').length >= 1")  # at most k distinct
    assert page.error() is None
    for caption in page.evaluate(
        "[...document.querySelectorAll('.thumb span')].map(s => s.textContent)"
    ):
        assert " · 2 inst. · " in caption

    page.click("#segment")
    info = page.wait_for(
        "document.getElementById('result-info').textContent.startsWith('Prediction network') && "
        "document.getElementById('result-info').textContent"
    )
    assert re.fullmatch(r"Prediction network: \d+ instances", info)
    assert page.count(".thumb") == 1
    page.screenshot(tmp_path / "segment.png")

    # A new image clears the boxes, and without boxes nothing is sent.
    other_path = tmp_path / "other.png"
    other_path.write_bytes(encode(scene_image(7)))
    page.choose_file("#image-file", other_path)
    page.wait_for("document.querySelectorAll('#box-list li').length === 0")
    page.click("#suggest")
    assert page.error() == "Draw at least one box on the image first."


@pytest.mark.slow
def test_an_annotator_refines_a_mask_with_clicks(page: Page, site: str, tmp_path: Path) -> None:
    image_path = tmp_path / "points.png"
    image_path.write_bytes(encode(scene_image(5)))
    page.goto(f"{site}/")
    page.type_into("#api-key", API_KEY)
    page.wait_for("document.querySelectorAll('#tags option').length === 3")
    page.choose_file("#image-file", image_path)
    page.wait_for("document.getElementById('status').textContent.includes('96×96')")
    page.click('input[name="mode"][value="points"]')
    assert page.visible("#points-panel") and not page.visible("#boxes-panel")
    page.click("#suggest")
    assert page.error() == "Click on the image to add points first."
    page.fill("#k", "4")
    page.fill("#seed", "2")

    def shown_candidates() -> list[list[int]]:
        """The candidates' masks as the page holds them, once it shows them."""
        page.wait_for("!document.getElementById('suggest').disabled && "
                      "document.querySelectorAll('.thumb').length > 0")
        return page.evaluate("state.results.samples.map(s => s.instances[0].mask)")

    page.click_on_canvas(0.42, 0.42)
    first = shown_candidates()
    assert page.text("#point-count") == "1 inside, 0 outside"
    page.click_on_canvas(0.45, 0.6, shift=True)
    page.wait_for("document.getElementById('point-count').textContent === '1 inside, 1 outside'")
    second = shown_candidates()
    assert page.error() is None
    assert re.fullmatch(r"\d candidates · .+", page.text("#result-info"))

    # The page asked for what was clicked: the same request gives the same candidates, and each
    # holds the positive point and not the negative one.
    points = page.evaluate("state.points")
    positive = [[p["x"], p["y"]] for p in points if p["positive"]]
    negative = [[p["x"], p["y"]] for p in points if not p["positive"]]
    assert np.allclose(positive, [[0.42 * IMAGE_SIZE] * 2], atol=1)
    assert np.allclose(negative, [[0.45 * IMAGE_SIZE, 0.6 * IMAGE_SIZE]], atol=1)
    direct = httpx.post(
        f"{site}/v1/refine", files={"image": ("points.png", image_path.read_bytes(), "image/png")},
        data={"positive": json.dumps(positive), "negative": json.dumps(negative), "k": "4",
              "seed": "2"},
        headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60,
    ).json()["candidates"]
    assert second == [c["mask"] for c in direct]
    for rle in second:
        mask = mask_utils.decode({"size": rle["size"], "counts": rle["counts"].encode()})
        assert mask[int(positive[0][1]), int(positive[0][0])]
        assert not mask[int(negative[0][1]), int(negative[0][0])]
    assert first != second or len(first) == 1
    page.screenshot(tmp_path / "points.png")

    page.click("#clear-points")
    assert page.text("#point-count") == "No points yet."
