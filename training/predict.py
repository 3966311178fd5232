"""Predictions of a model bundle as COCO results, and the COCO index they refer to.

A result is `{image_id, category_id, score, segmentation, bbox}`: segmentation a COCO RLE
with str counts, bbox [x, y, w, h] pixels, as COCOeval's `loadRes` reads them. Images without
a COCO file of their own get one (`results_as_coco`): their file names, the model's classes.
"""

import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import torch
from PIL import Image
from tqdm import tqdm

from models.bundle import ModelBundle
from models.orientation import upright_size
from models.thresholds import SCORE_THRESHOLD
from training.data.coco import coco_mask_fields
from training.data.dataset import load_rgb
from training.formats.labels import ImageLabels, Instance, LabelSet, to_coco


@dataclass(frozen=True)
class CocoIndex:
    """The images and categories of a COCO JSON file (annotations are not read).

    images: (image_id, file_name) in file order; categories: {category_id: name}.
    """

    path: Path
    images: list[tuple[int, str]]
    categories: dict[int, str]

    @classmethod
    def read(cls, path: Path) -> "CocoIndex":
        """FileNotFoundError for a missing file, ValueError for one that is not COCO."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"annotation file not found: {path}")
        try:
            data = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"{path} is not a COCO annotation file: not JSON ({error})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path} is not a COCO annotation file: not a JSON object")
        missing = [key for key in ("images", "annotations", "categories") if key not in data]
        if missing:
            raise ValueError(f"{path} is not a COCO annotation file: missing {missing}")
        try:
            images = [(int(e["id"]), str(e["file_name"])) for e in data["images"]]
            categories = {int(c["id"]): str(c["name"]) for c in data["categories"]}
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(
                f"{path}: an image lacks id/file_name or a category id/name ({error!r})"
            ) from None
        return cls(path, images, categories)

    def category_ids(self, classes: Sequence[str]) -> list[int]:
        """The category id of each of a model's classes (label l is classes[l - 1]), by name."""
        by_name = {name: category_id for category_id, name in self.categories.items()}
        unknown = [name for name in classes if name not in by_name]
        if unknown:
            raise ValueError(
                f"the model's classes {unknown} are not categories of {self.path} "
                f"(its categories: {sorted(by_name)})"
            )
        return [by_name[name] for name in classes]

    def image_ids(self, paths: Sequence[Path]) -> list[int]:
        """The id of each image file: the entry whose file_name the path ends with (file_name
        relative to the images' folder), else the only entry with the same base name."""
        by_parts = {PurePosixPath(name).parts: image_id for image_id, name in self.images}
        by_base: dict[str, list[int]] = {}
        for image_id, name in self.images:
            by_base.setdefault(PurePosixPath(name).name, []).append(image_id)
        ids = []
        for path in paths:
            parts = Path(path).resolve().parts
            suffixes = (parts[-n:] for n in range(len(parts), 0, -1))
            match = next((by_parts[s] for s in suffixes if s in by_parts), None)
            if match is None:
                candidates = by_base.get(Path(path).name, [])
                if len(candidates) != 1:
                    reason = "several images" if candidates else "no image"
                    raise ValueError(f"{reason} of {self.path} match {path}")
                match = candidates[0]
            ids.append(match)
        return ids


def coco_results(
    bundle: ModelBundle,
    images: Sequence[tuple[int, Path]],
    *,
    category_ids: Sequence[int] | None = None,
    score_threshold: float = SCORE_THRESHOLD,
    device: torch.device | str = "cpu",
    progress: bool = False,
) -> list[dict[str, Any]]:
    """The prediction network's instances on each (image_id, image file) as COCO results.

    category_ids: the category id of each class (default: label l is category l).
    """
    category_ids = list(category_ids or range(1, bundle.num_classes + 1))
    if len(category_ids) != bundle.num_classes:
        raise ValueError(
            f"{len(category_ids)} category ids for a model of {bundle.num_classes} classes"
        )
    bundle.to(device).prediction.eval()
    results = []
    for image_id, path in tqdm(images, desc="predicting", unit="image", disable=not progress):
        instances = bundle.segment(load_rgb(path), score_threshold=score_threshold)
        for mask, label, score in zip(
            instances.masks.numpy(), instances.labels.tolist(), instances.scores.tolist(),
            strict=True,
        ):
            fields = coco_mask_fields(mask)
            results.append({
                "image_id": image_id,
                "category_id": category_ids[label - 1],
                "score": score,
                "segmentation": fields["segmentation"],
                "bbox": fields["bbox"],
            })
    return results


def results_as_coco(
    results: Sequence[dict[str, Any]], images: Sequence[tuple[int, Path]], classes: Sequence[str]
) -> dict[str, Any]:
    """A COCO annotation file of `coco_results` with the default category ids, the form of a
    batch job's result: the images (file name as given, upright size), the classes as
    categories 1..C and the results as annotations with their scores."""
    instances = defaultdict(list)
    for result in results:
        label = classes[result["category_id"] - 1]
        instances[result["image_id"]].append(
            Instance(label, result["segmentation"], score=result["score"])
        )
    entries = []
    for image_id, path in images:
        with Image.open(path) as image:
            width, height = upright_size(image)
        entries.append(
            ImageLabels(image_id, str(path), width, height, tuple(instances[image_id]))
        )
    return to_coco(LabelSet(tuple(classes), tuple(entries)))
