"""Input staging: turn what a job request brings (uploaded images, zip files, or a COCO JSON
whose images lie under the server-side data root) into the job's list of `ImageItem`s.

Uploaded images are copied to the job's input folder under new names (`<index><suffix>`), so
no name from a request ever becomes a path. COCO file names are resolved under data_root and
refused when they leave it (absolute paths, `..`, symlinks pointing outside); they are checked
again where a worker reads them. Refusals raise `StagingError` (a ValueError) with a code the
API turns into a 4xx; a problem with one image only (a missing file, a hint naming an unknown
category) is recorded as that image's error instead.
"""

import json
import os
import tempfile
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import BinaryIO

from service.jobs.model import HintMode, ImageItem

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp"})
_COPY_BLOCK = 1 << 20


class StagingError(ValueError):
    """Bad job input. code: a stable machine-readable name; status: the HTTP status to answer."""

    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.code = code
        self.status = status


@dataclass(frozen=True)
class StagingLimits:
    max_files: int
    max_file_bytes: int  # an uploaded file, and each image inside a zip


@dataclass(frozen=True)
class Upload:
    """One uploaded file: the name the client gave it and its content."""

    name: str
    stream: BinaryIO


def parse_image_hints(text: str | None) -> dict[str, dict]:
    """The `annotations` form field of an upload job: a JSON object mapping an image's file name
    to {"tags": [names]} or {"boxes": [{"label": name, "bbox": [x0, y0, x1, y1]}]}."""
    if not text:
        return {}
    try:
        hints = json.loads(text)
    except json.JSONDecodeError as error:
        message = f"annotations is not valid JSON: {error}"
        raise StagingError("invalid_annotations", message) from None
    if not isinstance(hints, dict) or not all(isinstance(v, dict) for v in hints.values()):
        raise StagingError(
            "invalid_annotations",
            "annotations must be a JSON object mapping file names to {'tags': [...]} or "
            "{'boxes': [...]}",
        )
    return hints


def stage_uploads(
    input_dir: Path,
    uploads: list[Upload],
    *,
    hints_mode: HintMode,
    image_hints: dict[str, dict],
    limits: StagingLimits,
) -> list[ImageItem]:
    """Copy uploaded images (and the images inside uploaded zip files) into `input_dir`."""
    input_dir.mkdir(parents=True, exist_ok=True)
    items: list[ImageItem] = []

    def add(name: str, source: BinaryIO, declared_size: int | None = None) -> None:
        if len(items) >= limits.max_files:
            raise StagingError(
                "too_many_files", f"a job takes at most {limits.max_files} images", 413
            )
        if declared_size is not None and declared_size > limits.max_file_bytes:
            raise _too_large(name, limits)
        index = len(items)
        staged = f"{index}{PurePosixPath(name).suffix.lower()}"
        _copy_bounded(source, input_dir / staged, name, limits)
        hints, error = _hints_for(name, image_hints.get(name), hints_mode)
        items.append(ImageItem(index=index, image_id=index + 1, file_name=name, source="upload",
                               path=staged, error=error, **hints))

    for upload in uploads:
        name = upload.name or "upload"
        if name.lower().endswith(".zip"):
            _stage_zip(upload, input_dir, limits, add)
        else:
            add(name, upload.stream)
    if not items:
        raise StagingError("no_images", "the job has no images (zip files hold no image files)")
    return items


def stage_coco(
    coco_text: bytes | str,
    data_root: Path,
    *,
    hints_mode: HintMode,
    max_files: int,
) -> list[ImageItem]:
    """The images of a COCO annotation file, read from under `data_root`; with hints_mode
    "tags" or "boxes", each image's hints come from its annotations."""
    try:
        coco = json.loads(coco_text)
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise StagingError("invalid_coco", f"the COCO file is not valid JSON: {error}") from None
    images = coco.get("images") if isinstance(coco, dict) else None
    if not isinstance(images, list) or not images:
        raise StagingError("invalid_coco", "the COCO file needs a non-empty 'images' list")
    if len(images) > max_files:
        raise StagingError("too_many_files", f"a job takes at most {max_files} images", 413)
    categories, annotations = _coco_annotations(coco, hints_mode)
    items = []
    for index, image in enumerate(images):
        if not isinstance(image, dict) or not isinstance(image.get("file_name"), str):
            raise StagingError("invalid_coco", f"images[{index}] needs a string 'file_name'")
        if not isinstance(image.get("id"), int):
            raise StagingError("invalid_coco", f"images[{index}] needs an integer 'id'")
        resolve_under(data_root, image["file_name"])
        hints, error = _coco_hints(annotations.get(image["id"], []), categories, hints_mode)
        items.append(ImageItem(index=index, image_id=image["id"], file_name=image["file_name"],
                               source="data_root", path=image["file_name"], error=error, **hints))
    return items


def resolve_under(root: Path, relative: str) -> Path:
    """`root / relative`, refused (StagingError "path_outside_data_root") when it is absolute,
    has a `..` part, or resolves (following symlinks) outside `root`."""
    refused = StagingError(
        "path_outside_data_root", f"image path {relative!r} is outside the data root", 400
    )
    posix, windows = PurePosixPath(relative), PureWindowsPath(relative)
    if (not relative or posix.is_absolute() or windows.is_absolute() or windows.drive
            or ".." in posix.parts or ".." in windows.parts):
        raise refused
    base = Path(root).resolve()
    resolved = (base / posix).resolve()
    if not resolved.is_relative_to(base):
        raise refused
    return resolved


def image_path(item: ImageItem, input_dir: Path, data_root: Path) -> Path:
    """Where a worker reads image `item` from (data-root paths are checked again here, so a
    symlink swapped in after submission cannot lead outside the root)."""
    if item.source == "upload":
        return input_dir / PurePosixPath(item.path).name
    return resolve_under(data_root, item.path)


def _stage_zip(upload: Upload, input_dir: Path, limits: StagingLimits, add) -> None:
    handle, temporary = tempfile.mkstemp(dir=input_dir, prefix=".upload-", suffix=".zip")
    os.close(handle)
    archive_path = Path(temporary)
    # A zip may be as large as the whole job may be, not only one image.
    zip_limits = StagingLimits(limits.max_files, limits.max_file_bytes * limits.max_files)
    _copy_bounded(upload.stream, archive_path, upload.name, zip_limits)
    try:
        with zipfile.ZipFile(archive_path) as archive:
            for member in archive.infolist():
                name = member.filename
                if (member.is_dir() or name.startswith("__MACOSX/")
                        or PurePosixPath(name).suffix.lower() not in IMAGE_SUFFIXES):
                    continue
                with archive.open(member) as source:
                    add(name, source, member.file_size)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError) as error:
        raise StagingError("invalid_zip", f"{upload.name} is not a readable zip: {error}") from None
    finally:
        archive_path.unlink(missing_ok=True)


def _copy_bounded(source: BinaryIO, target: Path, name: str, limits: StagingLimits) -> None:
    """Copy at most max_file_bytes (a zip member's declared size may lie, so count)."""
    written = 0
    with open(target, "wb") as out:
        while block := source.read(_COPY_BLOCK):
            written += len(block)
            if written > limits.max_file_bytes:
                out.close()
                target.unlink(missing_ok=True)
                raise _too_large(name, limits)
            out.write(block)


def _too_large(name: str, limits: StagingLimits) -> StagingError:
    return StagingError(
        "file_too_large", f"{name} is larger than {limits.max_file_bytes} bytes", 413
    )


def _hints_for(
    name: str, hint: dict | None, mode: HintMode
) -> tuple[dict, str | None]:
    """The ImageItem hint fields of an uploaded image, and the image's error if they are bad."""
    if mode == "none":
        return {}, None
    if hint is None or mode not in hint:
        return {}, f"no {mode} given for {name} in annotations"
    value = hint[mode]
    if mode == "tags":
        if not isinstance(value, list) or not all(isinstance(t, str) for t in value):
            return {}, f"tags of {name} must be a list of class names"
        return {"tags": sorted(set(value))}, None
    if not isinstance(value, list) or not all(_is_box(b) for b in value):
        return {}, f"boxes of {name} must be a list of {{'label': name, 'bbox': [x0, y0, x1, y1]}}"
    return {"boxes": [{"label": b["label"], "bbox": [float(v) for v in b["bbox"]]}
                      for b in value]}, None


def _is_box(box: object) -> bool:
    return (isinstance(box, dict) and isinstance(box.get("label"), str)
            and isinstance(box.get("bbox"), list) and len(box["bbox"]) == 4
            and all(isinstance(v, int | float) for v in box["bbox"]))


def _coco_annotations(coco: dict, mode: HintMode) -> tuple[dict[int, str], dict[int, list]]:
    if mode == "none":
        return {}, {}
    categories = coco.get("categories")
    annotations = coco.get("annotations")
    if not isinstance(categories, list) or not isinstance(annotations, list):
        raise StagingError(
            "invalid_coco", f"hints={mode} needs 'categories' and 'annotations' lists"
        )
    try:
        names = {int(c["id"]): str(c["name"]) for c in categories}
        by_image: dict[int, list] = {}
        for annotation in annotations:
            by_image.setdefault(int(annotation["image_id"]), []).append(annotation)
    except (KeyError, TypeError, ValueError) as error:
        raise StagingError("invalid_coco", f"bad category or annotation entry: {error}") from None
    return names, by_image


def _coco_hints(
    annotations: Iterable[dict], categories: dict[int, str], mode: HintMode
) -> tuple[dict, str | None]:
    if mode == "none":
        return {}, None
    labels, boxes = [], []
    for annotation in annotations:
        name = categories.get(annotation.get("category_id"))
        if name is None:
            return {}, f"annotation {annotation.get('id')}: unknown category id " \
                       f"{annotation.get('category_id')}"
        bbox = annotation.get("bbox")
        if mode == "boxes":
            if not (isinstance(bbox, list) and len(bbox) == 4):
                return {}, f"annotation {annotation.get('id')}: bbox must be [x, y, w, h]"
            x, y, w, h = (float(v) for v in bbox)
            boxes.append({"label": name, "bbox": [x, y, x + w, y + h]})
        labels.append(name)
    if mode == "tags":
        return {"tags": sorted(set(labels))}, None
    return {"boxes": boxes}, None
