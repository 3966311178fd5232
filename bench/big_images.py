"""Time and peak memory of a 16 Mpx photo against a 1 Mpx one, route by route.

Each route runs in its own process (the app in process, through TestClient: multipart upload,
decoding, the model, encoding of the answer): after a warm-up at 256 px, a 1 Mpx call and then a
16 Mpx call each raise the process's peak RSS (ru_maxrss) above the baseline measured after the
warm-up; then the two sizes are timed alternately, `--repeats` times each, so that load from
other processes on a shared machine hits both alike. The proposal cache is off, so each call
pays for its proposals. Goals: time ratio <= 3, 16 Mpx <= 2 GB above the baseline.

Routes: segment; pseudo-labels from tags and from boxes (k=--k); refine (two clicks and a box,
k=3); the Label Studio backend's /ls/predict (a rectangle hint, brush masks, the image inline
as a data: URL); a batch job of one image with box hints (embedded backend). Images are a
synthetic scene resampled to each size, with noise, as JPEG (quality 90).
Prints one JSON object; --model defaults to the demo model (`make demo-model`).
"""

import argparse
import base64
import io
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

ROUTES = ("segment", "pseudo_labels_tags", "pseudo_labels_boxes", "refine", "ls_predict", "job")
SIZES = {"1mpx": 1000, "16mpx": 4000}
K = 4  # samples of the pseudo-label routes (the measurement)
BRUSH = """<View><Image name="image" value="$image"/>
<RectangleLabels name="rect" toName="image">{labels}</RectangleLabels>
<BrushLabels name="brush" toName="image">{labels}</BrushLabels></View>"""


def photo(side: int, seed: int = 0) -> bytes:
    """A JPEG of a synthetic scene resampled to side x side pixels, with sensor-like noise."""
    from training.data.synthetic import render_scene

    scene = render_scene(np.random.default_rng(seed), 256).image
    image = cv2.resize(scene, (side, side), interpolation=cv2.INTER_CUBIC).astype(np.int16)
    image += np.random.default_rng(seed).integers(-4, 5, image.shape, dtype=np.int16)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(buffer, "JPEG", quality=90)
    return buffer.getvalue()


def request(route: str, side: int, data: bytes, classes: list[str]) -> tuple[str, dict]:
    """(path, keyword arguments of TestClient.post) of one call on a side x side image."""
    files = {"image": ("photo.jpg", data, "image/jpeg")}
    first, second = classes[0], classes[min(1, len(classes) - 1)]
    boxes = [{"label": first, "bbox": [0.05 * side, 0.1 * side, 0.6 * side, 0.55 * side]},
             {"label": second, "bbox": [0.4 * side, 0.45 * side, side, side]}]
    if route == "segment":
        return "/v1/segment", {"files": files}
    if route == "pseudo_labels_tags":
        return "/v1/pseudo-labels", {"files": files, "data": {
            "tags": json.dumps(sorted({first, second})), "k": str(K), "seed": "0"}}
    if route == "pseudo_labels_boxes":
        return "/v1/pseudo-labels", {"files": files, "data": {
            "boxes": json.dumps(boxes), "k": str(K), "seed": "0"}}
    if route == "refine":
        return "/v1/refine", {"files": files, "data": {
            "positive": json.dumps([[0.3 * side, 0.3 * side]]),
            "negative": json.dumps([[0.55 * side, 0.5 * side]]),
            "box": json.dumps(boxes[0]["bbox"]), "k": "3", "seed": "0"}}
    if route == "ls_predict":
        x0, y0, x1, y1 = boxes[0]["bbox"]
        value = {"x": 100 * x0 / side, "y": 100 * y0 / side, "width": 100 * (x1 - x0) / side,
                 "height": 100 * (y1 - y0) / side, "rectanglelabels": [first]}
        rectangle = {"type": "rectanglelabels", "from_name": "rect", "to_name": "image",
                     "original_width": side, "original_height": side, "value": value}
        image = "data:image/jpeg;base64," + base64.b64encode(data).decode()
        labels = "".join(f'<Label value="{c}"/>' for c in classes)
        return "/ls/predict", {"json": {
            "tasks": [{"id": 1, "data": {"image": image},
                       "annotations": [{"result": [rectangle]}]}],
            "label_config": BRUSH.format(labels=labels), "project": "1.1"}}
    annotations = {"photo.jpg": {"boxes": boxes}}
    return "/v1/jobs", {"files": [("files", ("photo.jpg", data, "image/jpeg"))],
                        "data": {"hints": "boxes", "annotations": json.dumps(annotations)}}


def call(client, route: str, side: int, data: bytes, classes: list[str]) -> float:
    """Seconds of one call (a job: from submission to its end)."""
    path, arguments = request(route, side, data, classes)
    start = time.perf_counter()
    response = client.post(path, **arguments)
    if response.status_code not in (200, 202):
        raise SystemExit(f"{route} at {side} px: {response.status_code} {response.text[:300]}")
    if route == "job":
        status_url = response.headers["location"]
        while (status := client.get(status_url).json())["state"] in ("queued", "running"):
            time.sleep(0.02)
        if status["state"] != "succeeded" or status["errors"]:
            raise SystemExit(f"job at {side} px: {status}")
        client.get(status["result"]).raise_for_status()
    elif route == "ls_predict" and not response.json()["results"][0]:
        raise SystemExit(f"ls_predict at {side} px: {response.json()['warnings']}")
    return time.perf_counter() - start


def max_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def worker(route: str, model: Path, repeats: int, jobs: Path) -> dict:
    """One route's figures, measured in this process."""
    from fastapi.testclient import TestClient

    from service.core.config import Settings
    from service.main import create_app

    settings = Settings(model_path=model, device="cpu", api_keys=[], proposal_cache_size=0,
                        job_store=jobs, data_root=jobs)
    images = {name: photo(side) for name, side in SIZES.items()}
    with TestClient(create_app(settings)) as client:
        classes = client.app.state.runtime.classes
        call(client, route, 256, photo(256), classes)  # warm-up
        baseline, above = max_rss_bytes(), {}
        for name, side in SIZES.items():  # smaller first: each raises the peak in turn
            call(client, route, side, images[name], classes)
            above[name] = max_rss_bytes() - baseline
        seconds: dict[str, list[float]] = {name: [] for name in SIZES}
        for _ in range(repeats):
            for name, side in SIZES.items():
                seconds[name].append(call(client, route, side, images[name], classes))
    median = {name: statistics.median(values) for name, values in seconds.items()}
    return {
        "seconds": {name: round(value, 3) for name, value in median.items()},
        "time_ratio": round(median["16mpx"] / median["1mpx"], 2),
        "mb_above_baseline": {name: round(value / 1e6) for name, value in above.items()},
        "baseline_mb": round(baseline / 1e6),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, default=Path(".cache/demo/model.pt"))
    parser.add_argument("--repeats", type=int, default=3, help="timed calls per size and route")
    parser.add_argument("--routes", nargs="+", choices=ROUTES, default=list(ROUTES))
    parser.add_argument("--worker", choices=ROUTES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if not args.model.is_file():
        raise SystemExit(f"no model bundle at {args.model}: run `make demo-model` or give --model")
    if args.worker is not None:
        with tempfile.TemporaryDirectory() as jobs:
            print(json.dumps(worker(args.worker, args.model, args.repeats, Path(jobs))))
        return
    results = {}
    for route in args.routes:
        command = [sys.executable, __file__, "--worker", route, "--model", str(args.model),
                   "--repeats", str(args.repeats)]
        env = os.environ | {"PYTHONPATH": str(Path(__file__).resolve().parents[1])}
        run = subprocess.run(command, capture_output=True, text=True, env=env)
        if run.returncode != 0:
            raise SystemExit(f"{route} failed:\n{run.stderr[-3000:]}")
        results[route] = json.loads(run.stdout.strip().splitlines()[-1])
    print(json.dumps({"model": str(args.model), "k": K, "sizes": SIZES, "routes": results},
                     indent=1))


if __name__ == "__main__":
    main()
