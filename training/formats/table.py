"""A folder of images and a CSV table of their labels: `file,tags` (tags separated by `;` or
`|`; an image per row) or `file,label,x0,y0,x1,y1` (a box per row, in pixels). The header row
names the columns; image sizes are read from the files' headers. A file name may not leave the
folder (an absolute path, `..` or a link out of it is refused)."""

import csv
import io
import math
from pathlib import Path

from PIL import Image

from models.orientation import upright_size
from training.formats.labels import ImageLabels, Instance, LabelSet, ordered_classes

TAG_COLUMNS = ("file", "tags")
BOX_COLUMNS = ("file", "label", "x0", "y0", "x1", "y1")


def import_table(text: str, images: Path) -> LabelSet:
    """The labels of a CSV table whose `file` column names images under `images`.

    Raises ValueError naming the bad row (unknown columns, a missing image, a bad number).
    """
    reader = csv.DictReader(io.StringIO(text))
    columns = tuple(c.strip().lower() for c in reader.fieldnames or ())
    if columns not in (TAG_COLUMNS, BOX_COLUMNS):
        raise ValueError(
            f"the CSV header must be {','.join(TAG_COLUMNS)} or {','.join(BOX_COLUMNS)}, "
            f"got {','.join(columns) or 'nothing'}"
        )
    reader.fieldnames = list(columns)
    tags: dict[str, set[str]] = {}
    boxes: dict[str, list[Instance]] = {}
    names: list[str] = []
    for line, row in enumerate(reader, start=2):
        file_name = (row.get("file") or "").strip()
        if not file_name:
            raise ValueError(f"CSV line {line}: the file column is empty")
        tags.setdefault(file_name, set())
        boxes.setdefault(file_name, [])
        if columns == TAG_COLUMNS:
            found = [t.strip() for t in (row.get("tags") or "").replace("|", ";").split(";")]
            found = [t for t in found if t]
            tags[file_name].update(found)
            names.extend(found)
            continue
        label = (row.get("label") or "").strip()
        try:
            x0, y0, x1, y1 = (float(row[k]) for k in ("x0", "y0", "x1", "y1"))
        except (TypeError, ValueError):
            raise ValueError(f"CSV line {line}: x0, y0, x1, y1 must be numbers") from None
        if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
            raise ValueError(f"CSV line {line}: x0, y0, x1, y1 must be finite")
        if not label or x1 <= x0 or y1 <= y0:
            raise ValueError(f"CSV line {line}: needs a label and a box with x0 < x1, y0 < y1")
        boxes[file_name].append(Instance(label, bbox=(x0, y0, x1, y1)))
        names.append(label)
    labelled = []
    folder = Path(images).resolve()
    for image_id, file_name in enumerate(tags, start=1):
        width, height = _image_size(folder, file_name)
        labelled.append(ImageLabels(image_id, file_name, width, height,
                                    tuple(boxes[file_name]), tuple(sorted(tags[file_name]))))
    return LabelSet(classes=ordered_classes(names), images=tuple(labelled))



def _image_size(folder: Path, file_name: str) -> tuple[int, int]:
    """(width, height) of image `file_name` inside `folder`; ValueError naming the file but not
    the folder (the message may reach a client of the service)."""
    try:
        path = (folder / file_name).resolve()
    except (OSError, ValueError):
        raise ValueError(f"image {file_name!r} is not a valid path") from None
    if not path.is_relative_to(folder):
        raise ValueError(f"image {file_name!r} is not inside the images folder")
    try:
        with Image.open(path) as image:
            return upright_size(image)
    except FileNotFoundError:
        raise ValueError(f"image {file_name!r} is not in the images folder") from None
    except (OSError, ValueError):
        raise ValueError(f"image {file_name!r} cannot be read as an image") from None
