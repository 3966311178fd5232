"""`discoseg export`: a job's result or a `predict` output in another labelling format."""

from pathlib import Path
from typing import Annotated

import typer

from training.errors import check_choice, user_errors

EXPORT_CHOICES = ("coco", "coco-polygons", "labelstudio", "cvat", "yolo-seg", "voc-png")


def export(
    result: Annotated[
        Path,
        typer.Argument(help="A COCO annotation file (a batch job's result) or the results list "
                            "`discoseg predict` writes (then give --data)."),
    ],
    to: Annotated[
        str,
        typer.Option("--to", metavar="|".join(EXPORT_CHOICES),
                     help="coco (RLE masks), coco-polygons, labelstudio (tasks with brush "
                          "predictions), cvat (CVAT for images 1.1 XML), yolo-seg (Ultralytics "
                          "labels/*.txt + data.yaml), voc-png (VOC segmentation PNGs)."),
    ],
    out: Annotated[
        Path,
        typer.Option("--out", help="The file to write (coco, coco-polygons, labelstudio, cvat) "
                                   "or the folder (yolo-seg, voc-png)."),
    ],
    data: Annotated[
        Path | None,
        typer.Option("--data", help="The COCO file a predict output's image and category ids "
                                    "refer to (its images and categories are used)."),
    ] = None,
) -> None:
    """Convert labels to another format; polygon formats fill holes in masks."""
    check_choice("--to", to, EXPORT_CHOICES)
    from training.formats import SINGLE_FILES, export_files, read_coco

    with user_errors():
        files = export_files(read_coco(result, data), to)
        if to in SINGLE_FILES:
            if out.is_dir():
                raise ValueError(f"--out must be a file for {to}, {out} is a folder")
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(next(iter(files.values())))
        else:
            if out.is_file():
                raise ValueError(f"--out must be a folder for {to}, {out} is a file")
            for relative, content in files.items():
                (out / relative).parent.mkdir(parents=True, exist_ok=True)
                (out / relative).write_bytes(content)
    typer.echo(f"wrote {to} to {out}")
