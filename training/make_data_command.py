"""`discoseg make-data`: write a synthetic COCO-format dataset for demos and tests."""

from pathlib import Path
from typing import Annotated

import typer

from training.data.glyph_scenes import GLYPHS
from training.data.photo_scenes import PHOTOS
from training.data.synthetic import SHAPES, generate_dataset
from training.errors import fail

FAMILIES = {"shapes": SHAPES, "photos": PHOTOS, "glyphs": GLYPHS}


def make_data(
    out: Annotated[
        Path, typer.Argument(help="Folder to write images/, train.json and val.json into.")
    ],
    n: Annotated[int, typer.Option("--n", help="Number of images to render (at least 1).")] = 200,
    size: Annotated[
        int, typer.Option("--size", help="Side of the square images in pixels (at least 16).")
    ] = 128,
    seed: Annotated[
        int, typer.Option("--seed", help="Random seed; the same seed gives the same images.")
    ] = 0,
    val_fraction: Annotated[
        float,
        typer.Option(
            "--val-fraction",
            help="Share of the images that go to val.json, in [0, 1); the rest to train.json.",
        ),
    ] = 0.2,
    family: Annotated[
        str,
        typer.Option(
            "--family",
            metavar="shapes|photos|glyphs",
            help="shapes: six geometric shapes in procedural textures; photos: five other "
            "shapes (a horse among them) filled with photographic textures on photographs; "
            "glyphs: arrows, Ls, Ts, diamonds and half-discs painted either way.",
        ),
    ] = "shapes",
) -> None:
    """Render synthetic scenes of textured shapes (the class is the shape) as a COCO dataset."""
    problems = []
    if n < 1:
        problems.append(f"--n must be at least 1, got {n}")
    if size < 16:
        problems.append(f"--size must be at least 16, got {size}")
    if not 0 <= val_fraction < 1:
        problems.append(f"--val-fraction must be in [0, 1), got {val_fraction}")
    if family not in FAMILIES:
        problems.append(f"--family must be one of {', '.join(FAMILIES)}, got {family!r}")
    if out.exists() and not out.is_dir():
        problems.append(f"OUT exists and is not a folder: {out}")
    if problems:
        fail("; ".join(problems))
    try:
        train, val = generate_dataset(
            out, n=n, size=size, seed=seed, val_fraction=val_fraction, family=FAMILIES[family]
        )
    except OSError as error:
        fail(f"cannot write the dataset to {out}: {error}")
    classes = FAMILIES[family].classes
    typer.echo(f"wrote {n} images of {len(classes)} classes ({', '.join(classes)}): {train}, {val}")
