"""CVAT serverless functions (nuclio) that forward to a running discoseg over HTTP.

`detector_handler`: CVAT's {"image": base64, "threshold"} -> the prediction network's instances
(POST /v1/segment) as [{"confidence", "label", "type": "mask", "mask", "points"}], the mask in
CVAT's encoding (its box's pixels, 0 or 255, row by row, then [xtl, ytl, xbr, ybr]) and points
its box [xtl, ytl, xbr, ybr].
`interactor_handler`: {"image", "pos_points", "neg_points", "obj_bbox"} -> the best refinement
candidate (POST /v1/refine) as {"mask": rows of 0/255 pixels, the whole image}.

The handler only translates: the model runs in discoseg (DISCOSEG_URL, optional
DISCOSEG_API_KEY). Standard library only, so the function image needs no packages.
"""

import base64
import contextlib
import json
import os
import urllib.error
import urllib.request
import uuid

TIMEOUT_S = 120


def _call(path: str, fields: dict[str, str], image: bytes) -> dict:
    """POST multipart `fields` and the image to discoseg; raises RuntimeError with its message."""
    boundary = uuid.uuid4().hex
    parts = [
        f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields.items()
    ]
    parts.append(
        f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="image"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n".encode() + image + b"\r\n"
    )
    body = b"".join(parts) + f"--{boundary}--\r\n".encode()
    request = urllib.request.Request(
        os.environ.get("DISCOSEG_URL", "http://127.0.0.1:8000").rstrip("/") + path, data=body,
        headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
    )
    if os.environ.get("DISCOSEG_API_KEY"):
        request.add_header("Authorization", f"Bearer {os.environ['DISCOSEG_API_KEY']}")
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        detail = error.read().decode(errors="replace")
        with contextlib.suppress(ValueError, KeyError, TypeError):
            detail = json.loads(detail)["error"]["message"]
        raise RuntimeError(f"discoseg answered {error.code}: {detail}") from None


def decode_rle(rle: dict) -> list[list[int]]:
    """Rows of 0/1 of a COCO compressed RLE {"size": [h, w], "counts": str} (column-major)."""
    height, width = rle["size"]
    text, counts, position = rle["counts"], [], 0
    while position < len(text):
        value, shift, more = 0, 0, True
        while more:
            c = ord(text[position]) - 48
            value |= (c & 0x1F) << (5 * shift)
            more = bool(c & 0x20)
            position, shift = position + 1, shift + 1
            if not more and c & 0x10:
                value |= -1 << (5 * shift)
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
    rows = [[0] * width for _ in range(height)]
    index, inside = 0, False
    for run in counts:
        if inside:
            for i in range(index, index + run):
                rows[i % height][i // height] = 1
        index, inside = index + run, not inside
    return rows


def cvat_mask(rows: list[list[int]], box: list[float]) -> tuple[list[int], list[int]]:
    """CVAT's detector mask of the 0/1 rows inside the instance's box, and its corners."""
    x0, y0 = int(box[0]), int(box[1])
    x1, y1 = max(x0, int(box[2]) - 1), max(y0, int(box[3]) - 1)  # inclusive corners
    pixels = [255 * rows[y][x] for y in range(y0, y1 + 1) for x in range(x0, x1 + 1)]
    return [*pixels, x0, y0, x1, y1], [x0, y0, x1, y1]


def _image(body: dict) -> bytes:
    try:
        return base64.b64decode(body["image"])
    except (KeyError, TypeError, ValueError) as error:
        raise ValueError(f"the request needs a base64 'image': {error}") from None


def detect(body: dict) -> list[dict]:
    fields = {}
    if body.get("threshold") is not None:
        fields["score_threshold"] = str(float(body["threshold"]))
    answer = _call("/v1/segment", fields, _image(body))
    shapes = []
    for instance in answer["instances"]:
        mask, points = cvat_mask(decode_rle(instance["mask"]), instance["bbox"])
        shapes.append({"confidence": str(instance["score"]), "label": instance["label"],
                       "type": "mask", "mask": mask, "points": points})
    return shapes


def interact(body: dict) -> dict:
    fields = {"positive": json.dumps(body.get("pos_points") or []),
              "negative": json.dumps(body.get("neg_points") or []), "k": "1"}
    bbox = body.get("obj_bbox")
    if bbox:  # CVAT sends [[x0, y0], [x1, y1]]
        (x0, y0), (x1, y1) = bbox
        fields["box"] = json.dumps([min(x0, x1), min(y0, y1), max(x0, x1), max(y0, y1)])
    answer = _call("/v1/refine", fields, _image(body))
    best = answer["candidates"][0]
    return {"mask": [[255 * v for v in row] for row in decode_rle(best["mask"])]}


def _respond(context, work, event):
    try:
        body = event.body if isinstance(event.body, dict) else json.loads(event.body)
        result, status = work(body), 200
    except (ValueError, RuntimeError, OSError) as error:
        context.logger.info(f"discoseg function failed: {error}")
        result, status = {"error": str(error)}, 400
    return context.Response(body=json.dumps(result), headers={}, content_type="application/json",
                            status_code=status)


def detector_handler(context, event):
    return _respond(context, detect, event)


def interactor_handler(context, event):
    return _respond(context, interact, event)
