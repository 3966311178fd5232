"""`discoseg predict`: a model bundle's instances on image files, as a COCO results file."""

import json
from pathlib import Path
from typing import Annotated

import typer

from models.devices import DEVICES
from models.thresholds import SCORE_THRESHOLD
from training.errors import check_choice, fail, user_errors

ScoreThreshold = Annotated[
    float,
    typer.Option(
        "--score-threshold", help="Keep detections scoring at least this, in [0, 1]."
    ),
]
Device = Annotated[
    str, typer.Option("--device", metavar="|".join(DEVICES), help="Where the model runs.")
]
Progress = Annotated[
    bool, typer.Option("--progress/--no-progress", help="Show a progress bar.")
]


def check_score_threshold(score_threshold: float) -> None:
    if not 0 <= score_threshold <= 1:
        fail(f"--score-threshold must be in [0, 1], got {score_threshold}")


def predict(
    model: Annotated[Path, typer.Option("--model", help="Model bundle written by `train`.")],
    images: Annotated[list[Path], typer.Argument(help="Image files to segment.")],
    out: Annotated[Path, typer.Option("--out", help="COCO results JSON to write.")],
    data: Annotated[
        Path | None,
        typer.Option(
            "--data",
            help="COCO JSON the images belong to: image ids are its ids (an image matches the "
            "entry whose file_name its path ends with, else the one with its base name) and "
            "category ids its ids of the model's class names. Without it OUT is a COCO "
            "annotation file of its own, like a batch job's result: the images (file names "
            "as given, ids 1..n), the model's classes and the instances with their scores.",
        ),
    ] = None,
    score_threshold: ScoreThreshold = SCORE_THRESHOLD,
    device: Device = "auto",
    progress: Progress = True,
) -> None:
    """Segment images with a trained model and write COCO results.

    One record per instance: image_id, category_id, score, segmentation (RLE
    with str counts) and bbox (x, y, width, height); without --data inside a
    COCO annotation file that names the images and classes.
    """
    check_score_threshold(score_threshold)
    check_choice("--device", device, DEVICES)
    from models.bundle import load_bundle
    from models.devices import resolve_device
    from training.predict import CocoIndex, coco_results, results_as_coco

    with user_errors():
        missing = [str(path) for path in images if not path.is_file()]
        if missing:
            raise FileNotFoundError(f"image file(s) not found: {', '.join(missing)}")
        bundle = load_bundle(model)
        if data is None:
            image_ids, category_ids = list(range(1, len(images) + 1)), None
        else:
            index = CocoIndex.read(data)
            image_ids, category_ids = index.image_ids(images), index.category_ids(bundle.classes)
        numbered = list(zip(image_ids, images, strict=True))
        results = coco_results(
            bundle,
            numbered,
            category_ids=category_ids,
            score_threshold=score_threshold,
            device=resolve_device(device),
            progress=progress,
        )
        output = results if data is not None else results_as_coco(results, numbered, bundle.classes)
        out.write_text(json.dumps(output))
    typer.echo(f"wrote {len(results)} instances on {len(images)} images to {out}")
