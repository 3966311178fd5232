"""Latency of the labelling-tool endpoints against POST /v1/pseudo-labels on the same image.

Starts the real server (uvicorn in a subprocess on 127.0.0.1) and prints one JSON object with
p50 latencies and their ratios to /v1/pseudo-labels (tags, k = --k):
- ls_predict_plain: POST /ls/predict, one task (its image as a data: URL), no hints: the
  prediction network's instances as brush RLE;
- ls_predict_boxes: the same task with one rectangle: k samples as k brush predictions;
- refine: POST /v1/refine, one positive point, k candidates.
The endpoints are timed in turns (each round calls every one once), after a warm-up call each,
so proposals are cached for all of them as they are in an annotation session.
"""

import argparse
import base64
import json
import statistics
import tempfile
from pathlib import Path

import httpx
import numpy as np
from service_latency import free_port, png, start_server, timed

from models.bundle import build_bundle, save_bundle
from training.data.synthetic import CLASSES, render_scene

LABEL_CONFIG = (
    '<View><Image name="image" value="$image"/><BrushLabels name="tag" toName="image">'
    + "".join(f'<Label value="{name}"/>' for name in CLASSES)
    + '</BrushLabels><RectangleLabels name="rect" toName="image">'
    + "".join(f'<Label value="{name}"/>' for name in CLASSES)
    + "</RectangleLabels></View>"
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, help="bundle to serve (default: a fresh tiny one)")
    parser.add_argument("--size", type=int, default=256, help="side of the test image")
    parser.add_argument("--requests", type=int, default=10, help="timed rounds")
    parser.add_argument("--k", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        model = args.model
        if model is None:
            model = Path(folder) / "bench-model.pt"
            save_bundle(build_bundle(classes=list(CLASSES), preset="tiny"), model)
        scene = render_scene(np.random.default_rng(0), args.size)
        image = png(scene.image)
        files = {"image": ("scene.png", image, "image/png")}
        tags = sorted({CLASSES[label - 1] for label in scene.labels})
        first = scene.masks[0]
        rows, columns = np.nonzero(first)
        inside = [float(columns[len(columns) // 2]) + 0.5, float(rows[len(rows) // 2]) + 0.5]
        box = [columns.min(), rows.min(), columns.max() + 1, rows.max() + 1]
        label = CLASSES[scene.labels[0] - 1]
        task = {"id": 1, "data": {"image": "data:image/png;base64," + base64.b64encode(image)
                                  .decode()}}
        percent = [100 * float(v) / args.size for v in box]
        boxed = {**task, "annotations": [{"result": [{
            "type": "rectanglelabels", "original_width": args.size,
            "original_height": args.size,
            "value": {"x": percent[0], "y": percent[1], "width": percent[2] - percent[0],
                      "height": percent[3] - percent[1], "rectanglelabels": [label]}}]}]}

        port = free_port()
        base = f"http://127.0.0.1:{port}"
        server = start_server(model, port, args.threads)
        try:
            with httpx.Client(timeout=300) as client:

                def post(path: str, **kwargs) -> None:
                    client.post(f"{base}{path}", **kwargs).raise_for_status()

                calls = {
                    "pseudo_labels": lambda: post("/v1/pseudo-labels", files=files, data={
                        "tags": json.dumps(tags), "k": str(args.k), "seed": "0"}),
                    "ls_predict_plain": lambda: post("/ls/predict", json={
                        "tasks": [task], "label_config": LABEL_CONFIG}),
                    "ls_predict_boxes": lambda: post("/ls/predict", json={
                        "tasks": [boxed], "label_config": LABEL_CONFIG}),
                    "refine": lambda: post("/v1/refine", files=files, data={
                        "positive": json.dumps([inside]), "k": str(args.k), "seed": "0"}),
                }
                for call in calls.values():
                    call()  # warm-up: proposals cached
                times: dict[str, list[float]] = {name: [] for name in calls}
                for _ in range(args.requests):
                    for name, call in calls.items():
                        times[name].append(timed(call))
        finally:
            server.terminate()
            server.wait(timeout=60)

    p50 = {name: statistics.median(values) for name, values in times.items()}
    results = {"image_size": args.size, "k": args.k, "requests": args.requests,
               **{f"{name}_p50_s": value for name, value in p50.items()},
               **{f"{name}_ratio": p50[name] / p50["pseudo_labels"]
                  for name in calls if name != "pseudo_labels"}}
    print(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in results.items()}))


if __name__ == "__main__":
    main()
