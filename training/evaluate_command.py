"""`discoseg evaluate`: mAP_r, ABO and COCO mask AP of a model or of a results file."""

import json
import tempfile
from pathlib import Path
from typing import Annotated

import typer

from models.devices import DEVICES
from models.thresholds import SCORE_THRESHOLD
from training.errors import check_choice, fail, user_errors
from training.predict_command import Device, Progress, check_score_threshold


def evaluate(
    data: Annotated[Path, typer.Option("--data", help="COCO JSON with the ground-truth masks.")],
    images: Annotated[
        Path | None,
        typer.Option(
            "--images",
            help="Folder the JSON's file_name entries are relative to (needed with --model).",
        ),
    ] = None,
    model: Annotated[
        Path | None,
        typer.Option(
            "--model", help="Model bundle to evaluate on all images of --data; or --results."
        ),
    ] = None,
    results: Annotated[
        Path | None,
        typer.Option("--results", help="COCO results JSON (e.g. from `predict`); or --model."),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option(
            "--out",
            help="Write the metrics as JSON: mAP_r@0.25, mAP_r@0.5, mAP_r@0.75, ABO, "
            "per_class, coco_mask_AP, coco_mask_AP50, coco_mask_AP75.",
        ),
    ] = None,
    score_threshold: Annotated[
        float | None,
        typer.Option(
            "--score-threshold",
            help=f"Keep detections scoring at least this, in [0, 1]. Default: {SCORE_THRESHOLD} "
            "for --model, every record of --results.",
            show_default=False,
        ),
    ] = None,
    device: Device = "auto",
    progress: Progress = True,
) -> None:
    """Evaluate a model or a results file and print the per-class table (percent).

    Give exactly one of --model (predict on the images of --data, read from
    --images) and --results. mAP_r is the paper's VOC-style AP over mask IoU at
    0.25, 0.5 and 0.75.
    """
    if (model is None) == (results is None):
        fail("give exactly one of --model and --results")
    if model is not None and images is None:
        fail("--model needs --images, the folder of the images of --data")
    if score_threshold is not None:
        check_score_threshold(score_threshold)
    check_choice("--device", device, DEVICES)
    from models.bundle import load_bundle
    from models.devices import resolve_device
    from training.evaluate import evaluate_coco_files, format_table
    from training.predict import CocoIndex, coco_results

    with user_errors():
        index = CocoIndex.read(data)
        if results is None:
            if not images.is_dir():
                raise FileNotFoundError(f"image folder not found: {images}")
            bundle = load_bundle(model)
            predictions = coco_results(
                bundle,
                [(image_id, images / name) for image_id, name in index.images],
                category_ids=index.category_ids(bundle.classes),
                score_threshold=SCORE_THRESHOLD if score_threshold is None else score_threshold,
                device=resolve_device(device),
                progress=progress,
            )
            with tempfile.TemporaryDirectory() as folder:
                results = Path(folder) / "results.json"
                results.write_text(json.dumps(predictions))
                metrics = evaluate_coco_files(data, results)
        elif not results.is_file():
            raise FileNotFoundError(f"results file not found: {results}")
        else:
            metrics = evaluate_coco_files(data, results, score_threshold or 0.0)
        if out is not None:
            out.write_text(json.dumps(metrics, indent=2))
    typer.echo(format_table(metrics))
