"""Property-based requests against the OpenAPI schema (what schemathesis would do): for every
operation, parameters and form fields drawn from their schema, valid or not, random bytes or
odd images as uploads. Whatever is sent, the answer is never a 5xx."""

import io
import json
import math
import string
from urllib.parse import quote

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from service.core.config import Settings
from service.main import create_app
from tests.service.conftest import CLASSES, encode, upload

SCHEMA = create_app(Settings(model_path="schema-only.pt")).openapi()
OPERATIONS = [
    (method.upper(), path, operation)
    for path, methods in SCHEMA["paths"].items()
    for method, operation in methods.items()
]
_GARBAGE = st.text(max_size=12) | st.sampled_from(["", "nan", "inf", "-1", "1e309", "null"])


def _resolve(schema: dict) -> dict:
    ref = schema.get("$ref")
    if ref:
        return SCHEMA["components"]["schemas"][ref.rsplit("/", 1)[-1]]
    return schema


@st.composite
def images(draw) -> bytes:
    kind = draw(st.sampled_from(["bytes", "image", "image", "image", "truncated"]))
    if kind == "bytes":
        return draw(st.binary(max_size=64))
    width = draw(st.sampled_from([16, 24, 40, 700, 1, 8]))
    height = draw(st.sampled_from([16, 24, 40, 1]))
    mode = draw(st.sampled_from(["RGB", "L", "RGBA", "P", "1"]))
    fmt = draw(st.sampled_from(["PNG", "JPEG", "BMP", "WEBP", "GIF"]))
    if fmt == "JPEG" and mode in ("RGBA", "P"):
        mode = "RGB"
    pixels = np.random.default_rng(draw(st.integers(0, 2**32 - 1))).integers(
        0, 256, (height, width, 3), dtype=np.uint8
    )
    buffer = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(buffer, format=fmt)
    data = buffer.getvalue()
    return data if kind == "image" else data[: draw(st.integers(0, max(0, len(data) - 1)))]


_NAMES = st.one_of(
    st.sampled_from(CLASSES),
    st.sampled_from(CLASSES),
    st.sampled_from(["cat", ""]),
    st.text(max_size=6),
)
_BOX_NUMBERS = st.one_of(
    st.integers(-5, 50), st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=3)
)
_HINTS = st.one_of(
    st.lists(_NAMES, max_size=4).map(json.dumps),
    st.lists(
        st.fixed_dictionaries(
            {"label": _NAMES, "bbox": st.lists(_BOX_NUMBERS, min_size=0, max_size=5)}
        ),
        max_size=3,
    ).map(lambda v: json.dumps(v, allow_nan=True)),
    st.dictionaries(st.text(max_size=4), st.integers(), max_size=2).map(json.dumps),
    _GARBAGE,
)


def values(schema: dict, name: str) -> st.SearchStrategy:
    """Strings for one parameter or form field: mostly near its schema, sometimes not."""
    schema = _resolve(schema)
    if "anyOf" in schema:
        return st.one_of([values(s, name) for s in schema["anyOf"] if s.get("type") != "null"])
    kind = schema.get("type")
    if "enum" in schema:
        return st.sampled_from([str(v) for v in schema["enum"]]) | _GARBAGE
    if kind == "integer":
        low = int(schema.get("minimum", -10)) - 3
        high = int(min(schema.get("maximum", low + 40), 10**6)) + 3
        in_range = st.integers(low + 3, high - 3).map(str)
        return in_range | st.integers(low, high).map(str) | st.integers().map(str) | _GARBAGE
    if kind == "number":
        low, high = schema.get("minimum", -1e6), schema.get("maximum", 1e6)
        return st.floats(low, high).map(str) | st.floats(-2, 3).map(str) | _GARBAGE
    if name in ("tags", "boxes", "annotations", "hints"):
        return _HINTS
    if name.endswith("_id"):
        return st.sampled_from(["0" * 32, "f" * 32]) | st.text(string.printable, max_size=40)
    return _GARBAGE | _HINTS


@pytest.mark.slow
@pytest.mark.parametrize(
    ("method", "path", "operation"), OPERATIONS, ids=[f"{m} {p}" for m, p, _ in OPERATIONS]
)
@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
def test_no_request_gets_a_5xx(client, method, path, operation, data) -> None:
    url = path
    query = {}
    for parameter in operation.get("parameters", []):
        present = parameter.get("required") or data.draw(st.booleans())
        if not present:
            continue
        value = data.draw(values(parameter["schema"], parameter["name"]))
        if parameter["in"] == "path":
            url = url.replace("{" + parameter["name"] + "}", quote(value, safe="") or "x")
        elif parameter["in"] == "query":
            query[parameter["name"]] = value
    form, files = {}, {}
    content = operation.get("requestBody", {}).get("content", {})
    if "multipart/form-data" in content:
        body = _resolve(content["multipart/form-data"]["schema"])
        for name, field in body.get("properties", {}).items():
            field = _resolve(field)
            required = name in body.get("required", [])
            if not data.draw(st.booleans()) and not (required and data.draw(st.booleans())):
                continue
            binary = field.get("contentMediaType") or field.get("format") == "binary"
            items = field.get("items", {})
            if binary or items.get("contentMediaType") or items.get("format") == "binary":
                files[name] = ("upload.bin", data.draw(images()), "application/octet-stream")
            else:
                form[name] = data.draw(values(field, name))
    response = client.request(
        method, url, params=query, data=form or None, files=files or None
    )
    event(f"status {response.status_code}")
    assert response.status_code < 500, (method, url, query, form, response.text)
    if response.status_code >= 400:
        assert set(response.json()["error"]) == {"code", "message"}


@st.composite
def box_records(draw, width: int, height: int) -> list[dict]:
    records = []
    for _ in range(draw(st.integers(1, 3))):
        x0 = draw(st.floats(0, width - 1))
        y0 = draw(st.floats(0, height - 1))
        x1 = draw(st.floats(x0 + 0.5, width)) if x0 + 0.5 <= width else float(width)
        y1 = draw(st.floats(y0 + 0.5, height)) if y0 + 0.5 <= height else float(height)
        records.append({"label": draw(st.sampled_from(CLASSES)), "bbox": [x0, y0, x1, y1]})
    return records


@pytest.mark.slow
@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    size=st.tuples(st.integers(16, 72), st.integers(16, 72)),
    seed=st.integers(0, 2**32 - 1),
    use_boxes=st.booleans(),
    data=st.data(),
)
def test_samples_for_random_images_and_hints_respect_the_hints(
    client, size, seed, use_boxes, data
) -> None:
    width, height = size
    image = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    if use_boxes:
        hints = data.draw(box_records(width, height))
        form = {"boxes": json.dumps(hints)}
    else:
        hints = data.draw(st.lists(st.sampled_from(CLASSES), max_size=3, unique=True))
        form = {"tags": json.dumps(hints)}
    response = client.post(
        "/v1/pseudo-labels", files=upload(encode(image)), data=form | {"k": "3", "seed": "0"}
    )
    # 422 only when no segmentation among the proposals can be consistent with the hints.
    assert response.status_code in (200, 422), response.text
    if response.status_code == 422:
        assert response.json()["error"]["code"] == "inconsistent_hints"
        return
    for sample in response.json()["samples"]:
        labels = [instance["label"] for instance in sample["instances"]]
        if use_boxes:
            assert sorted(labels) == sorted(record["label"] for record in hints)
            for instance in sample["instances"]:
                x0, y0, x1, y1 = instance["bbox"]
                assert any(
                    r["label"] == instance["label"]
                    and math.floor(r["bbox"][0]) <= x0 and math.floor(r["bbox"][1]) <= y0
                    and x1 <= math.ceil(r["bbox"][2]) and y1 <= math.ceil(r["bbox"][3])
                    for r in hints
                ), (instance["bbox"], hints)
        else:
            assert set(labels) == set(hints)


@pytest.mark.slow
@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    size=st.tuples(st.sampled_from([16, 50, 900]), st.sampled_from([16, 33])),
    mode=st.sampled_from(["RGB", "L", "RGBA", "P", "I;16"]),
    fmt=st.sampled_from(["PNG", "JPEG", "WEBP", "BMP"]),
    threshold=st.floats(0, 1),
    seed=st.integers(0, 2**32 - 1),
)
def test_segment_answers_any_valid_image(client, size, mode, fmt, threshold, seed) -> None:
    width, height = size
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    picture = Image.fromarray(pixels).convert(mode if mode != "I;16" else "L")
    if mode == "I;16":
        picture = picture.convert("I;16")
    buffer = io.BytesIO()
    try:
        picture.save(buffer, format=fmt)
    except (OSError, ValueError, KeyError):
        return  # this format cannot store this mode: nothing to send
    event(f"sent {fmt}")
    response = client.post(
        "/v1/segment", files=upload(buffer.getvalue()), data={"score_threshold": str(threshold)}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["width"], body["height"]) == (width, height)
    for instance in body["instances"]:
        assert instance["score"] >= threshold - 1e-6
        assert instance["mask"]["size"] == [height, width]
