"""Labels in and out of the formats labelling tools use.

Exports (`export_files`): COCO with RLE or polygon masks, Label Studio tasks with brush
predictions, CVAT for images 1.1 XML, YOLO segmentation, VOC segmentation PNGs; each gives the
files of the export by relative path. Imports (`import_labels`): COCO (tags-only annotations
included), a CSV table beside a folder of images, Label Studio JSON and CVAT XML exports; each
gives a `LabelSet`, which `to_coco` turns into the COCO file training and jobs read.
"""

import json
from pathlib import Path

from training.formats import cvat, labelstudio, table, voc, yolo
from training.formats.labels import LabelSet, labels_from_coco, read_coco, to_coco

EXPORT_FORMATS = ("coco", "coco-polygons", "labelstudio", "cvat", "yolo-seg", "voc-png")
IMPORT_FORMATS = ("coco", "csv", "labelstudio", "cvat")
# The formats whose export is one file: its name and media type.
SINGLE_FILES = {
    "coco": ("annotations.json", "application/json"),
    "coco-polygons": ("annotations.json", "application/json"),
    "labelstudio": ("tasks.json", "application/json"),
    "cvat": ("annotations.xml", "application/xml"),
}

__all__ = [
    "EXPORT_FORMATS", "IMPORT_FORMATS", "SINGLE_FILES", "LabelSet", "export_files",
    "import_labels", "parse_labels", "read_coco", "to_coco",
]


def export_files(labels: LabelSet, to: str) -> dict[str, bytes]:
    """The files of `labels` exported to format `to` (one of EXPORT_FORMATS), by path."""
    if to in ("coco", "coco-polygons"):
        coco = to_coco(labels, polygons=to == "coco-polygons")
        return {SINGLE_FILES[to][0]: json.dumps(coco).encode()}
    if to == "labelstudio":
        return {SINGLE_FILES[to][0]: json.dumps(labelstudio.export_tasks(labels)).encode()}
    if to == "cvat":
        return {SINGLE_FILES[to][0]: cvat.export_xml(labels)}
    if to == "yolo-seg":
        return yolo.export_files(labels)
    if to == "voc-png":
        return voc.export_files(labels)
    raise ValueError(f"unknown export format {to!r}; use one of {', '.join(EXPORT_FORMATS)}")


def parse_labels(
    data: bytes, source: str, images: Path | None = None, *, max_pixels: int | None = None
) -> LabelSet:
    """The labels of an annotation file's content in format `source` (one of IMPORT_FORMATS);
    a CSV table needs the folder of its images. Raises ValueError naming the problem, among
    them a Label Studio or CVAT image of more than `max_pixels` pixels."""
    if source == "cvat":
        return cvat.import_xml(data, max_pixels=max_pixels)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ValueError(f"the {source} file is not UTF-8 text: {error}") from None
    if source == "csv":
        if images is None:
            raise ValueError("a CSV table needs the folder of its images")
        return table.import_table(text, images)
    if source not in ("coco", "labelstudio"):
        known = ", ".join(IMPORT_FORMATS)
        raise ValueError(f"unknown import format {source!r}; use one of {known}")
    try:
        parsed = json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"the {source} file is not JSON: {error}") from None
    if source == "labelstudio":
        return labelstudio.import_tasks(parsed, max_pixels=max_pixels)
    if not isinstance(parsed, dict):
        raise ValueError("a COCO annotation file is a JSON object")
    return labels_from_coco(parsed)


def import_labels(path: Path, source: str, images: Path | None = None) -> LabelSet:
    """The labels of the annotation file at `path` (see parse_labels)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"file not found: {path}")
    return parse_labels(path.read_bytes(), source, images)
