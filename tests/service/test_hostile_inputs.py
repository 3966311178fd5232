"""Hostile input against a real `discoseg serve` process (API key set, embedded jobs), over
one kept-alive HTTP connection: deep nesting, huge numbers, NaN, NUL bytes, wrong types,
zip bombs, unsupported and oversized images, bodies past the limits, unauthenticated and
cross-origin requests, on the API and on the Label Studio backend (/ls). Each case must get a
JSON 4xx naming the problem (or, for the legal ones, be accepted), keep the connection open,
and leave the server healthy; the server log must hold no traceback at the end."""

import base64
import io
import json
import os
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from PIL import Image

from tests.service.conftest import (
    API_KEY,
    encode,
    png_header,
    scene_image,
    wait_until_serving,
    zip_of,
)

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[2]
KEY = {"Authorization": f"Bearer {API_KEY}"}
HUGE = "1" + "0" * 5000  # past Python's 4300-digit limit for int(str)
DEEP = "[" * 100_000
PNG = encode(scene_image(0))


@dataclass(frozen=True)
class Case:
    """One request: method, path, its form fields, files, query and headers (the API key is
    added unless `headers` says otherwise), and the status and error code expected."""

    name: str
    method: str
    path: str
    status: int
    code: str | None = None
    message: str | None = None  # a part of the error message
    data: dict = field(default_factory=dict)
    files: list = field(default_factory=list)
    params: dict = field(default_factory=dict)
    headers: dict = field(default_factory=lambda: dict(KEY))
    content: bytes | None = None


def _image(data: bytes = PNG, name: str = "a.png") -> list:
    return [("image", (name, data, "image/png"))]


def _files(*entries: tuple[str, bytes]) -> list:
    return [("files", (name, data, "application/octet-stream")) for name, data in entries]


def _coco(text: str | bytes) -> list:
    return [("coco", ("c.json", text, "application/json"))]


def _gif() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(scene_image(1)).save(buffer, format="GIF")
    return buffer.getvalue()


def _coco_json(image: dict | None = None, annotation: dict | None = None) -> str:
    coco = {"images": [image or {"id": 1, "file_name": "a.png"}],
            "categories": [{"id": 1, "name": "disc"}],
            "annotations": [annotation or {"id": 1, "image_id": 1, "category_id": 1,
                                           "bbox": [1, 2, 3, 4]}]}
    return json.dumps(coco)


def _ls(body: str | bytes, headers: dict | None = None) -> dict:
    """The `content` and `headers` of a JSON request, as Label Studio sends them."""
    content = body.encode() if isinstance(body, str) else body
    return {"content": content,
            "headers": {**KEY, "Content-Type": "application/json", **(headers or {})}}


def _predict(tasks: str = "[]", params: str = "null") -> str:
    return f'{{"tasks": {tasks}, "label_config": {json.dumps(BRUSH)}, "params": {params}}}'


def _basic(key: str) -> dict:
    return {"Authorization": "Basic " + base64.b64encode(f"labelstudio:{key}".encode()).decode()}


SEGMENT, PSEUDO, JOBS = "/v1/segment", "/v1/pseudo-labels", "/v1/jobs"
REFINE, PREDICT = "/v1/refine", "/ls/predict"
BOX = '{"label": "disc", "bbox": %s}'
BRUSH = ('<View><Image name="image" value="$image"/><BrushLabels name="tag" toName="image">'
         '<Label value="disc"/></BrushLabels></View>')
TASK = json.dumps({"id": 1, "data": {"image": "data:image/png;base64,"
                                     + base64.b64encode(PNG).decode()}})
RESULT = '{"type": "keypointlabels", "value": {"x": %s, "y": 10, "keypointlabels": ["disc"]}}'
CASES = [
    # Deep nesting.
    Case("tags nested 100k deep", "POST", PSEUDO, 422, "validation_error", "recursion limit",
         data={"tags": DEEP}, files=_image()),
    Case("boxes nested 100k deep", "POST", PSEUDO, 422, "validation_error", "recursion limit",
         data={"boxes": DEEP}, files=_image()),
    Case("annotations nested 100k deep", "POST", JOBS, 422, "invalid_annotations",
         "recursion limit", data={"annotations": DEEP}, files=_files(("a.png", PNG))),
    Case("COCO nested 100k deep", "POST", JOBS, 422, "invalid_coco", "recursion limit",
         files=_coco('{"images": ' + DEEP)),
    Case("COCO nested inside an ignored field", "POST", JOBS, 422, "invalid_coco",
         "recursion limit", files=_coco('{"info": ' + DEEP)),
    # Huge numbers.
    Case("tags holding a 5000-digit number", "POST", PSEUDO, 422, "validation_error",
         "too many digits", data={"tags": f"[{HUGE}]"}, files=_image()),
    Case("bbox holding a 5000-digit number", "POST", PSEUDO, 422, "validation_error",
         "too many digits", data={"boxes": "[" + BOX % f"[1, 2, 3, {HUGE}]" + "]"},
         files=_image()),
    Case("k of 5000 digits", "POST", PSEUDO, 422, "validation_error", "k: the number has too many",
         data={"tags": "[]", "k": HUGE}, files=_image()),
    Case("seed 2^70 (pseudo-labels)", "POST", PSEUDO, 422, "validation_error", "seed",
         data={"tags": "[]", "seed": str(2**70)}, files=_image()),
    Case("seed 2^70 (jobs)", "POST", JOBS, 422, "validation_error", "seed",
         data={"seed": str(2**70)}, files=_files(("a.png", PNG))),
    Case("max_instances of 5000 digits (segment)", "POST", SEGMENT, 422, "validation_error",
         "too many digits", data={"max_instances": HUGE}, files=_image()),
    Case("max_instances of 5000 digits (jobs)", "POST", JOBS, 422, "validation_error",
         "too many digits", data={"max_instances": HUGE}, files=_files(("a.png", PNG))),
    Case("annotations holding a 5000-digit number", "POST", JOBS, 422, "invalid_annotations",
         "too many digits", data={"annotations": f'{{"a.png": {{"tags": [{HUGE}]}}}}'},
         files=_files(("a.png", PNG))),
    Case("COCO image id of 5000 digits", "POST", JOBS, 422, "invalid_coco", "too many digits",
         files=_coco(_coco_json().replace('"id": 1, "file_name"', f'"id": {HUGE}, "file_name"'))),
    Case("COCO image id past 64 bits", "POST", JOBS, 422, "invalid_coco", "images[0].id",
         files=_coco(_coco_json({"id": 2**70, "file_name": "a.png"}))),
    Case("COCO 5000-digit number in an ignored field", "POST", JOBS, 422, "invalid_coco",
         "too many digits", files=_coco(f'{{"info": {HUGE}, "images": []}}')),
    # NaN and infinity.
    Case("score_threshold=nan (form)", "POST", SEGMENT, 422, "validation_error",
         "finite number", data={"score_threshold": "nan"}, files=_image()),
    Case("score_threshold=nan (query)", "POST", SEGMENT, 422, "validation_error",
         "finite number", params={"score_threshold": "nan"}, files=_image()),
    Case("score_threshold=inf (jobs)", "POST", JOBS, 422, "validation_error", "finite number",
         data={"score_threshold": "inf"}, files=_files(("a.png", PNG))),
    Case("bbox holding NaN", "POST", PSEUDO, 422, "validation_error", "finite number",
         data={"boxes": "[" + BOX % "[1, 2, 3, NaN]" + "]"}, files=_image()),
    # NUL bytes.
    Case("COCO file_name with a NUL byte", "POST", JOBS, 422, "invalid_coco",
         "images[0].file_name: must not contain NUL",
         files=_coco(_coco_json({"id": 1, "file_name": "a\u0000.png"}))),
    Case("annotations keyed by a name with a NUL byte", "POST", JOBS, 422,
         "invalid_annotations", "must not contain NUL",
         data={"annotations": '{"a\\u0000.png": {"tags": []}}'}, files=_files(("a.png", PNG))),
    Case("job id with a NUL byte", "GET", "/v1/jobs/%00", 404, "not_found"),
    Case("upload named with a NUL byte and a line break (legal)", "POST", JOBS, 202,
         files=_files(("a\x00b\nc.png", PNG))),
    Case("zip member named with a line break (legal)", "POST", JOBS, 202,
         files=_files(("z.zip", zip_of({"x\nINFO forged.png": PNG})))),
    # Wrong types.
    Case("tags not a list", "POST", PSEUDO, 422, "validation_error", "tags: Input should be",
         data={"tags": '{"disc": 1}'}, files=_image()),
    Case("tags of numbers", "POST", PSEUDO, 422, "validation_error", "tags[0]",
         data={"tags": "[1, 2]"}, files=_image()),
    Case("bbox of strings", "POST", PSEUDO, 422, "validation_error", "boxes[0].bbox[0]",
         data={"boxes": "[" + BOX % '["1", "2", "3", "4"]' + "]"}, files=_image()),
    Case("bbox of nulls", "POST", PSEUDO, 422, "validation_error", "boxes[0].bbox[0]",
         data={"boxes": "[" + BOX % "[null, 2, 3, 4]" + "]"}, files=_image()),
    Case("COCO bbox of strings", "POST", JOBS, 422, "invalid_coco", "annotations[0].bbox[0]",
         data={"hints": "boxes"}, files=_coco(_coco_json(annotation={
             "image_id": 1, "category_id": 1, "bbox": ["1", "2", "3", "4"]}))),
    Case("COCO bbox of nulls", "POST", JOBS, 422, "invalid_coco", "annotations[0].bbox[0]",
         data={"hints": "boxes"}, files=_coco(_coco_json(annotation={
             "image_id": 1, "category_id": 1, "bbox": [None, None, 3, 4]}))),
    Case("COCO category_id a list", "POST", JOBS, 422, "invalid_coco",
         "annotations[0].category_id", data={"hints": "tags"},
         files=_coco(_coco_json(annotation={"image_id": 1, "category_id": [1]}))),
    Case("COCO image id a boolean", "POST", JOBS, 422, "invalid_coco", "images[0].id",
         files=_coco(_coco_json({"id": True, "file_name": "a.png"}))),
    Case("COCO not JSON", "POST", JOBS, 422, "invalid_coco", "Invalid JSON",
         files=_coco("{not json")),
    Case("COCO not UTF-8", "POST", JOBS, 422, "invalid_coco", "coco",
         files=_coco(b'{"images": [{"id": 1, "file_name": "\xff\xfe"}]}')),
    Case("COCO path outside the data root", "POST", JOBS, 400, "path_outside_data_root",
         files=_coco(_coco_json({"id": 1, "file_name": "../../etc/passwd"}))),
    Case("annotations with boxes of strings", "POST", JOBS, 422, "invalid_annotations",
         "annotations['a.png'].boxes[0].bbox[0]",
         data={"hints": "boxes",
               "annotations": '{"a.png": {"boxes": [' + BOX % '["1", 2, 3, 4]' + "]}}"},
         files=_files(("a.png", PNG))),
    # Point refinement and the Label Studio backend: the same kinds.
    Case("refine points nested 100k deep", "POST", REFINE, 422, "validation_error",
         "positive: Invalid JSON: recursion limit", data={"positive": DEEP}, files=_image()),
    Case("refine mask nested 100k deep", "POST", REFINE, 422, "validation_error",
         "mask: Invalid JSON: recursion limit", data={"positive": "[[5, 5]]", "mask": DEEP},
         files=_image()),
    Case("refine point of 5000 digits", "POST", REFINE, 422, "validation_error",
         "too many digits", data={"positive": f"[[1, {HUGE}]]"}, files=_image()),
    Case("refine mask size of 5000 digits", "POST", REFINE, 422, "validation_error",
         "too many digits", data={"positive": "[[5, 5]]",
                                  "mask": f'{{"size": [{HUGE}, 1], "counts": "1"}}'},
         files=_image()),
    Case("refine point NaN", "POST", REFINE, 422, "validation_error", "finite number",
         data={"positive": "[[NaN, 5]]"}, files=_image()),
    Case("refine box Infinity", "POST", REFINE, 422, "validation_error", "box[2]: Input should "
         "be a finite number", data={"box": "[1, 2, Infinity, 4]"}, files=_image()),
    Case("refine points of strings", "POST", REFINE, 422, "validation_error", "positive[0][0]",
         data={"positive": '[["5", "5"]]'}, files=_image()),
    Case("refine points not a list", "POST", REFINE, 422, "validation_error",
         "negative: Input should be a valid", data={"positive": "[[5, 5]]", "negative": "{}"},
         files=_image()),
    Case("refine mask of short runs", "POST", REFINE, 422, "validation_error",
         "the counts cover 0 pixels", files=_image(),
         data={"positive": "[[5, 5]]", "mask": '{"size": [96, 96], "counts": ""}'}),
    Case("refine seed 2^70", "POST", REFINE, 422, "validation_error", "seed",
         data={"positive": "[[5, 5]]", "seed": str(2**70)}, files=_image()),
    Case("refine (legal)", "POST", REFINE, 200, data={"positive": "[[40, 40]]", "k": "2"},
         files=_image()),
    Case("predict body nested 100k deep", "POST", PREDICT, 422, "validation_error",
         "body: Invalid JSON: recursion limit", **_ls(DEEP)),
    Case("predict task data nested 100k deep", "POST", PREDICT, 422, "validation_error",
         "recursion limit", **_ls(_predict('[{"data": {"image": ' + DEEP + "}}]"))),
    Case("predict task id of 5000 digits", "POST", PREDICT, 422, "validation_error",
         "too many digits", **_ls(_predict(f'[{{"id": {HUGE}, "data": {{}}}}]'))),
    Case("predict task id past 64 bits", "POST", PREDICT, 422, "validation_error",
         "body.tasks[0].id", **_ls(_predict(f'[{{"id": {2**70}, "data": {{}}}}]'))),
    Case("predict click at NaN", "POST", PREDICT, 422, "validation_error",
         "body.params.context.result[0].value.x: Input should be a finite number",
         **_ls(_predict(params='{"context": {"result": [' + RESULT % "NaN" + "]}}"))),
    Case("predict click at a string", "POST", PREDICT, 422, "validation_error",
         "body.params.context.result[0].value.x",
         **_ls(_predict(params='{"context": {"result": [' + RESULT % '"5"' + "]}}"))),
    Case("predict tasks not a list", "POST", PREDICT, 422, "validation_error", "body.tasks",
         **_ls(_predict(tasks='{"data": {}}'))),
    Case("predict label_config not XML", "POST", PREDICT, 422, "invalid_label_config",
         "not XML", **_ls('{"tasks": [], "label_config": "<View"}')),
    Case("predict label_config nested 100k deep", "POST", PREDICT, 422, "invalid_label_config",
         "has none of", **_ls(json.dumps({"tasks": [], "label_config": "<a>" * 100_000
                                          + '<Image name="i" value="$i"/>' + "</a>" * 100_000}))),
    Case("predict body not UTF-8", "POST", PREDICT, 422, "validation_error", "body",
         **_ls(b'{"tasks": [], "label_config": "\xff"}')),
    Case("predict over the body limit", "POST", PREDICT, 413, "payload_too_large",
         **_ls(b" " * (4 << 20))),
    Case("setup hostname a number", "POST", "/ls/setup", 422, "validation_error",
         "body.hostname", **_ls('{"hostname": 5}')),
    Case("setup over the body limit", "POST", "/ls/setup", 413, "payload_too_large",
         **_ls(b" " * (2 << 20))),
    Case("webhook of NaN", "POST", "/ls/webhook", 422, "validation_error", "NaN and infinity",
         **_ls('{"action": "ANNOTATION_CREATED", "annotation": {"x": NaN}}')),
    Case("webhook nested 100k deep", "POST", "/ls/webhook", 422, "validation_error",
         "recursion limit", **_ls('{"action": "X", "task": ' + DEEP)),
    Case("predict (legal, Basic auth)", "POST", PREDICT, 200,
         **_ls(_predict(f"[{TASK}]"), headers=_basic(API_KEY))),
    Case("predict with Basic auth of a wrong key", "POST", PREDICT, 401, "unauthorized",
         **_ls(_predict(f"[{TASK}]"), headers=_basic("wrong-key-0123456789"))),
    Case("predict without a key", "POST", PREDICT, 401, "unauthorized",
         content=b"{}", headers={"Content-Type": "application/json"}),
    Case("predict from another origin's page", "POST", PREDICT, 403, "cross_origin",
         **_ls(_predict(), headers={"Origin": "https://evil.example"})),
    Case("Label Studio export nested 100k deep", "POST", JOBS, 422, "invalid_annotations",
         "recursion limit", data={"annotation_format": "labelstudio"}, files=_coco(DEEP)),
    Case("Label Studio export of a 10^10-pixel image", "POST", JOBS, 422, "invalid_annotations",
         "more than the 16000000", data={"annotation_format": "labelstudio"}, files=_coco(
             '[{"data": {"image": "a.png"}, "annotations": [{"result": [{"type": "choices", '
             '"original_width": 100000, "original_height": 100000, "value": {}}]}]}]')),
    Case("CVAT XML of a 10^10-pixel image", "POST", JOBS, 422, "invalid_annotations",
         "more than the 16000000", data={"annotation_format": "cvat"}, files=_coco(
             '<annotations><image id="0" name="a.png" width="100000" height="100000"/>'
             "</annotations>")),
    Case("CSV naming a file outside the data root", "POST", JOBS, 422, "invalid_annotations",
         "not inside the images folder", data={"annotation_format": "csv"},
         files=_coco("file,tags\n../../etc/passwd,disc\n")),
    # Zip bombs, formats, sizes.
    Case("zip of 10 x 20 MiB zeros", "POST", JOBS, 413, "zip_bomb", "expands more than",
         files=_files(("bomb.zip", zip_of({f"m{i}.png": bytes(20 << 20) for i in range(10)})))),
    Case("not a zip", "POST", JOBS, 400, "invalid_zip", files=_files(("x.zip", b"PK junk"))),
    Case("GIF in a job", "POST", JOBS, 415, "unsupported_media_type", "GIF",
         files=_files(("a.png", PNG), ("b.gif", _gif()))),
    Case("GIF named .png inside a zip", "POST", JOBS, 415, "unsupported_media_type", "GIF",
         files=_files(("z.zip", zip_of({"a.png": PNG, "b.png": _gif()})))),
    Case("GIF to segment", "POST", SEGMENT, 415, "unsupported_media_type", "GIF",
         files=_image(_gif(), "a.gif")),
    Case("not an image", "POST", SEGMENT, 400, "invalid_image", files=_image(b"hello")),
    Case("empty image", "POST", SEGMENT, 400, "invalid_image", files=_image(b"")),
    Case("truncated PNG", "POST", SEGMENT, 400, "invalid_image", files=_image(PNG[:300])),
    Case("PNG header of 10^10 pixels", "POST", SEGMENT, 413, "image_too_large",
         "DISCOSEG_MAX_IMAGE_PIXELS", files=_image(png_header(100_000, 100_000))),
    Case("PNG header of 25 Mpx", "POST", PSEUDO, 413, "image_too_large",
         "DISCOSEG_MAX_IMAGE_PIXELS", data={"tags": "[]"}, files=_image(png_header(5000, 5000))),
    Case("upload over DISCOSEG_MAX_UPLOAD_BYTES", "POST", SEGMENT, 413, "payload_too_large",
         files=_image(bytes(3 << 20))),
    Case("refine upload over DISCOSEG_MAX_UPLOAD_BYTES", "POST", REFINE, 413,
         "payload_too_large", data={"positive": "[[5, 5]]"}, files=_image(bytes(4 << 20))),
    Case("job over DISCOSEG_MAX_JOB_BYTES", "POST", JOBS, 413, "payload_too_large",
         files=_files(*[(f"{i}.png", bytes(3 << 20)) for i in range(3)])),
    Case("body on a route without one", "GET", "/v1/models", 413, "payload_too_large",
         content=bytes(2 << 20)),
    # Keys, origins, routes.
    Case("no API key", "POST", JOBS, 401, "unauthorized", headers={},
         files=_files(("a.png", PNG))),
    Case("wrong API key", "GET", "/v1/models", 401, "unauthorized",
         headers={"Authorization": "Bearer wrong-key-0123456789"}),
    Case("metrics without a key", "GET", "/metrics", 401, "unauthorized", headers={}),
    Case("cross-origin job", "POST", JOBS, 403, "cross_origin", "DISCOSEG_CORS_ORIGINS",
         headers={**KEY, "Origin": "https://evil.example"}, files=_files(("a.png", PNG))),
    Case("null origin", "POST", SEGMENT, 403, "cross_origin", headers={**KEY, "Origin": "null"},
         files=_image()),
    Case("job id escaping the store", "GET", "/v1/jobs/..%2F..%2Fetc", 404, "not_found"),
    Case("unknown route", "GET", "/v1/nothing", 404, "not_found"),
    Case("wrong method", "PUT", JOBS, 405, "method_not_allowed"),
]


@dataclass
class Server:
    url: str
    folder: Path
    log: Path
    process: subprocess.Popen


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture(scope="module")
def server(bundle_path: Path, tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("hostile")
    (folder / "data").mkdir()
    (folder / "data" / "a.png").write_bytes(PNG)
    port = _free_port()
    env = {**os.environ, "DISCOSEG_API_KEYS": json.dumps([API_KEY]),
           "DISCOSEG_JOB_STORE": str(folder / "jobs"), "DISCOSEG_DATA_ROOT": str(folder / "data"),
           "DISCOSEG_MAX_UPLOAD_BYTES": str(2 << 20), "DISCOSEG_MAX_JOB_BYTES": str(8 << 20),
           "OMP_NUM_THREADS": "1"}
    env.pop("DISCOSEG_REDIS_URL", None)
    log = folder / "server.log"
    process = subprocess.Popen(
        [sys.executable, "-m", "service.cli", "serve", "--model", str(bundle_path),
         "--port", str(port), "--device", "cpu", "--log-level", "warning"],
        cwd=REPO, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    # generous: on a loaded 2-core machine the server took over 200 s to import and start
    wait_until_serving(url, process, log.read_text, 300)
    yield Server(url, folder, log, process)
    process.terminate()
    process.wait(timeout=30)
    assert "Traceback" not in log.read_text(), log.read_text()[-5000:]


@pytest.fixture(scope="module")
def connection(server: Server):
    """One client whose connection is kept alive from case to case."""
    with httpx.Client(base_url=server.url, timeout=60) as client:
        yield client


def _assert_healthy(server: Server, client: httpx.Client) -> None:
    assert server.process.poll() is None, server.log.read_text()[-3000:]
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").json()["status"] == "ready"


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_hostile_request_gets_a_json_4xx_and_the_server_stays_healthy(
    server: Server, connection: httpx.Client, case: Case
) -> None:
    response = connection.request(
        case.method, case.path, data=case.data or None, files=case.files or None,
        params=case.params, headers=case.headers, content=case.content,
    )
    assert response.status_code == case.status, response.text[:2000]
    if response.status_code >= 400:
        error = response.json()["error"]
        assert set(error) == {"code", "message"} and error["message"]
        assert case.code is None or error["code"] == case.code, error
        assert case.message is None or case.message in error["message"], error
    assert response.headers.get("connection") != "close"
    assert str(server.folder) not in response.text  # server paths stay private
    _assert_healthy(server, connection)


def test_unauthenticated_gigabyte_is_refused_before_its_body_is_sent(
    server: Server, connection: httpx.Client
) -> None:
    """Headers of a 1 GiB upload and its first MiB: the 401 comes without the rest."""
    host, port = server.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as raw:
        raw.sendall(b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n"
                    b"Content-Type: multipart/form-data; boundary=b\r\n\r\n" % (1 << 30))
        raw.sendall(b"--b\r\nContent-Disposition: form-data; name=files; filename=a.png\r\n\r\n")
        raw.sendall(bytes(1 << 20))
        answer = b""
        while b'"}}' not in answer and (block := raw.recv(65536)):
            answer += block
        answer = answer.decode(errors="replace")
    assert answer.startswith("HTTP/1.1 401"), answer[:500]
    assert '"code":"unauthorized"' in answer
    _assert_healthy(server, connection)

