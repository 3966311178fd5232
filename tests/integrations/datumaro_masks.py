"""Reads an export with datumaro and writes what it found as JSON: run by the format tests with
the Python of the datumaro environment (.venv-formats), which cannot share discoseg's pins.

Usage: python datumaro_masks.py FORMAT PATH OUT.json
OUT: {"labels": [names], "items": {item id: [{"label", "type", "rle" | "bbox"}]}}; masks as
row-major run lengths starting with background (decoded by the test).
"""

import json
import sys

import datumaro as dm
import numpy as np


def runs(mask: np.ndarray) -> list[int]:
    flat = np.asarray(mask, dtype=bool).ravel()
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    lengths = np.diff(np.concatenate([[0], change, [flat.size]])).tolist()
    return [0, *lengths] if flat[0] else lengths


def main(format_name: str, path: str, out: str) -> None:
    dataset = dm.Dataset.import_from(path, format_name)
    categories = dataset.categories()[dm.AnnotationType.label]
    items = {}
    for item in dataset:
        size = item.media.size if item.media is not None and item.media.has_size else None
        found = []
        for annotation in item.annotations:
            entry = {"type": annotation.type.name,
                     "label": None if annotation.label is None
                     else categories[annotation.label].name}
            if isinstance(annotation, dm.Mask):
                entry["rle"] = runs(annotation.image)
                entry["shape"] = list(annotation.image.shape)
            elif isinstance(annotation, dm.Polygon):
                entry["points"] = list(map(float, annotation.points))
            elif isinstance(annotation, dm.Bbox):
                entry["bbox"] = [float(v) for v in annotation.get_bbox()]
            found.append(entry)
        items[item.id] = {"annotations": found, "size": size}
    with open(out, "w") as handle:
        json.dump({"labels": [c.name for c in categories], "items": items}, handle)


if __name__ == "__main__":
    main(*sys.argv[1:])
