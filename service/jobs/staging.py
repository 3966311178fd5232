"""Input staging: turn what a job request brings (uploaded images, zip files, or a COCO JSON
whose images lie under the server-side data root) into the job's list of `ImageItem`s.

Uploaded images are copied to the job's input folder under new names (`<index><suffix>`), so
no name from a request ever becomes a path. What is staged is bounded: each file, the job's
files together (zip members unpacked) and each zip member's compression ratio, counted while
copying (a zip's declared sizes may lie). A file whose header names an image format the
service does not read is refused at once (415). COCO file names are resolved under data_root
and refused when they leave it (absolute paths, `..`, symlinks pointing outside); they are
checked again where a worker reads them. Client JSON goes through service.schemas.parse_json.
Refusals raise `StagingError` (a ValueError) with a code the API turns into a 4xx; a problem
with one image only (a missing file, a hint naming an unknown category) is recorded as that
image's error instead. The caller deletes what was staged when staging fails.
"""

import os
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import BinaryIO

from service.imaging import SUPPORTED_FORMATS, identify_format
from service.jobs.record import HintMode, ImageItem
from service.schemas import (
    CocoAnnotation,
    CocoFile,
    CocoImages,
    ImageHints,
    JobAnnotations,
    parse_json,
)

IMAGE_SUFFIXES = frozenset(
    {".png", ".jpg", ".jpeg", ".mpo", ".bmp", ".tif", ".tiff", ".webp"}
)
# Photos barely compress; a zip member that expands more than this is refused as a bomb
# (members below the floor are too small to matter whatever their ratio).
MAX_COMPRESSION_RATIO = 100
RATIO_FLOOR_BYTES = 1 << 20
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
    max_job_bytes: int  # all files of the job together, zip members unpacked


@dataclass(frozen=True)
class Upload:
    """One uploaded file: the name the client gave it and its content."""

    name: str
    stream: BinaryIO


# A bound on the bytes of one copy, and the error raised when the copy would pass it.
_Bound = tuple[int, Callable[[], StagingError]]


def parse_image_hints(text: str | None) -> dict[str, ImageHints]:
    """The `annotations` form field of an upload job: a JSON object mapping an image's file name
    to {"tags": [names]} or {"boxes": [{"label": name, "bbox": [x0, y0, x1, y1]}]}."""
    if not text:
        return {}
    return parse_json(JobAnnotations, text, "annotations", code="invalid_annotations")


def stage_uploads(
    input_dir: Path,
    uploads: list[Upload],
    *,
    hints_mode: HintMode,
    image_hints: dict[str, ImageHints],
    limits: StagingLimits,
) -> list[ImageItem]:
    """Copy uploaded images (and the images inside uploaded zip files) into `input_dir`."""
    input_dir.mkdir(parents=True, exist_ok=True)
    items: list[ImageItem] = []
    staged_bytes = 0

    def add(name: str, source: BinaryIO, member: zipfile.ZipInfo | None = None) -> None:
        nonlocal staged_bytes
        if len(items) >= limits.max_files:
            raise StagingError(
                "too_many_files", f"a job takes at most {limits.max_files} images", 413
            )
        bounds: list[_Bound] = [
            (limits.max_file_bytes, lambda: _file_too_large(name, limits)),
            (limits.max_job_bytes - staged_bytes, lambda: _job_too_large(limits)),
        ]
        if member is not None:
            ratio_bound = max(RATIO_FLOOR_BYTES, MAX_COMPRESSION_RATIO * member.compress_size)
            bounds.insert(0, (ratio_bound, lambda: _zip_bomb(name)))  # the likeliest diagnosis
            for bound, error in bounds:
                if member.file_size > bound:
                    raise error()
        index = len(items)
        suffix = PurePosixPath(name).suffix.lower()
        staged = input_dir / f"{index}{suffix if suffix in IMAGE_SUFFIXES else ''}"
        staged_bytes += _copy_bounded(source, staged, bounds)
        _refuse_unsupported_format(name, staged)
        hints, error = _hints_for(name, image_hints.get(name), hints_mode)
        items.append(ImageItem(index=index, image_id=index + 1, file_name=name, source="upload",
                               path=staged.name, error=error, **hints))

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
    schema = CocoImages if hints_mode == "none" else CocoFile
    coco = parse_json(schema, coco_text, "coco", code="invalid_coco")
    if len(coco.images) > max_files:
        raise StagingError("too_many_files", f"a job takes at most {max_files} images", 413)
    categories: dict[int, str] = {}
    by_image: dict[int, list[CocoAnnotation]] = {}
    if isinstance(coco, CocoFile):
        categories = {category.id: category.name for category in coco.categories}
        for annotation in coco.annotations:
            by_image.setdefault(annotation.image_id, []).append(annotation)
    items = []
    for index, image in enumerate(coco.images):
        resolve_under(data_root, image.file_name)
        hints, error = _coco_hints(by_image.get(image.id, []), categories, hints_mode)
        items.append(ImageItem(index=index, image_id=image.id, file_name=image.file_name,
                               source="data_root", path=image.file_name, error=error, **hints))
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
    try:
        _copy_bounded(upload.stream, archive_path,
                      [(limits.max_job_bytes, lambda: _job_too_large(limits))])
        with zipfile.ZipFile(archive_path) as archive:
            for member in archive.infolist():
                name = member.filename
                if (member.is_dir() or name.startswith("__MACOSX/")
                        or PurePosixPath(name).suffix.lower() not in IMAGE_SUFFIXES):
                    continue
                with archive.open(member) as source:
                    add(name, source, member)
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError) as error:
        raise StagingError("invalid_zip", f"{upload.name} is not a readable zip: {error}") from None
    finally:
        archive_path.unlink(missing_ok=True)


def _copy_bounded(source: BinaryIO, target: Path, bounds: list[_Bound]) -> int:
    """Copy `source` to `target` and return the bytes written; past the smallest bound, delete
    the target and raise that bound's error."""
    limit, error = min(bounds, key=lambda bound: bound[0])
    written = 0
    try:
        with open(target, "wb") as out:
            while block := source.read(_COPY_BLOCK):
                written += len(block)
                if written > limit:
                    raise error()
                out.write(block)
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    return written


def _refuse_unsupported_format(name: str, path: Path) -> None:
    """415 for a file whose header names an image format the service does not decode; data
    Pillow does not recognise at all is left to fail as that image's error."""
    with open(path, "rb") as file:
        found = identify_format(file)
    if found is not None and found not in SUPPORTED_FORMATS:
        raise StagingError(
            "unsupported_media_type",
            f"{name!r} is a {found} image; supported formats: {', '.join(SUPPORTED_FORMATS)}",
            415,
        )


def _file_too_large(name: str, limits: StagingLimits) -> StagingError:
    return StagingError(
        "file_too_large", f"{name!r} is larger than {limits.max_file_bytes} bytes", 413
    )


def _job_too_large(limits: StagingLimits) -> StagingError:
    return StagingError(
        "job_too_large",
        f"the job's files take more than {limits.max_job_bytes} bytes once unpacked "
        "(DISCOSEG_MAX_JOB_BYTES)",
        413,
    )


def _zip_bomb(name: str) -> StagingError:
    return StagingError(
        "zip_bomb",
        f"zip member {name!r} expands more than {MAX_COMPRESSION_RATIO} times; refused",
        413,
    )


def _hints_for(name: str, hint: ImageHints | None, mode: HintMode) -> tuple[dict, str | None]:
    """The ImageItem hint fields of an uploaded image, and the image's error if it has none."""
    if mode == "none":
        return {}, None
    value = None if hint is None else getattr(hint, mode)
    if value is None:
        return {}, f"no {mode} given for {name} in annotations"
    if mode == "tags":
        return {"tags": sorted(set(value))}, None
    return {"boxes": [box.model_dump() for box in value]}, None


def _coco_hints(
    annotations: list[CocoAnnotation], categories: dict[int, str], mode: HintMode
) -> tuple[dict, str | None]:
    if mode == "none":
        return {}, None
    labels, boxes = [], []
    for annotation in annotations:
        name = categories.get(annotation.category_id)
        if name is None:
            return {}, f"annotation {annotation.id}: unknown category id " \
                       f"{annotation.category_id}"
        if mode == "boxes":
            if annotation.bbox is None:
                return {}, f"annotation {annotation.id}: bbox must be [x, y, w, h]"
            x, y, w, h = annotation.bbox
            boxes.append({"label": name, "bbox": [x, y, x + w, y + h]})
        labels.append(name)
    if mode == "tags":
        return {"tags": sorted(set(labels))}, None
    return {"boxes": boxes}, None
