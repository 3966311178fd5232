"""`discoseg import`: labels from another tool as the COCO file `train` and jobs read."""

import json
from pathlib import Path
from typing import Annotated

import typer

from training.errors import check_choice, user_errors

IMPORT_CHOICES = ("csv", "labelstudio", "cvat", "coco")


def import_labels(
    source: Annotated[
        Path, typer.Argument(help="The annotation file: a CSV table, a Label Studio JSON export, "
                                  "CVAT for images 1.1 XML, or COCO.")
    ],
    source_format: Annotated[
        str,
        typer.Option("--from", metavar="|".join(IMPORT_CHOICES),
                     help="csv: header file,tags (tags separated by ; or |) or "
                          "file,label,x0,y0,x1,y1 (a box per row, pixels); labelstudio: brush "
                          "and polygon masks, rectangles, choices/taxonomy tags; cvat: masks, "
                          "polygons, boxes, tags."),
    ],
    out: Annotated[Path, typer.Option("--out", help="The COCO JSON to write.")],
    images: Annotated[
        Path | None,
        typer.Option("--images", help="The folder of the images (needed for csv: the sizes are "
                                      "read from the files)."),
    ] = None,
) -> None:
    """Write COCO annotations: masks as RLE, boxes as bbox, tags as annotations with neither
    (what `train --supervision tags` reads)."""
    check_choice("--from", source_format, IMPORT_CHOICES)
    from training.formats import import_labels as read_labels
    from training.formats import to_coco

    with user_errors():
        labels = read_labels(source, source_format, images)
        out.write_text(json.dumps(to_coco(labels)))
    counts = sum(len(i.instances) for i in labels.images), sum(len(i.tags) for i in labels.images)
    typer.echo(f"wrote {len(labels.images)} images ({counts[0]} instances, {counts[1]} tags, "
               f"classes {', '.join(labels.classes)}) to {out}")
