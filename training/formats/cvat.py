"""CVAT: "CVAT for images 1.1" XML out and in, and the mask encodings of CVAT's serverless
functions.

In the XML a `<mask>` holds its pixels as run lengths over its own box (`left`, `top`, `width`,
`height`), row by row, starting with a run of background; `<polygon points="x,y;x,y...">` and
`<box xtl ytl xbr ybr>` are in pixels, `<tag>` labels the whole image. A serverless detector
answers a mask as its box's pixels flattened row by row followed by [xtl, ytl, xbr, ybr]
(inclusive corners).
"""

import xml.etree.ElementTree as ET

import numpy as np

from training.formats.labels import (
    ImageLabels,
    Instance,
    LabelSet,
    check_image_size,
    ordered_classes,
)
from training.formats.polygons import polygons_mask


def mask_runs(mask: np.ndarray) -> tuple[list[int], tuple[int, int, int, int]]:
    """CVAT XML mask RLE of a non-empty bool[H, W] mask, and its box (left, top, width, height)."""
    rows, columns = np.nonzero(mask)
    left, top = int(columns.min()), int(rows.min())
    width, height = int(columns.max()) + 1 - left, int(rows.max()) + 1 - top
    crop = mask[top : top + height, left : left + width].ravel()
    change = np.flatnonzero(crop[1:] != crop[:-1]) + 1
    bounds = np.concatenate([[0], change, [crop.size]])
    runs = np.diff(bounds).tolist()
    if crop[0]:
        runs = [0, *runs]
    return runs, (left, top, width, height)


def runs_mask(
    runs: list[int], box: tuple[int, int, int, int], height: int, width: int
) -> np.ndarray:
    """bool[height, width] of a CVAT XML mask RLE over box (left, top, width, height)."""
    left, top, box_width, box_height = box
    crop = np.zeros(box_width * box_height, dtype=bool)
    position, inside = 0, False
    for run in runs:
        if inside:
            crop[position : position + run] = True
        position += run
        inside = not inside
    if position != crop.size:
        raise ValueError(f"the mask RLE covers {position} pixels, its box {crop.size}")
    mask = np.zeros((height, width), dtype=bool)
    mask[top : top + box_height, left : left + box_width] = crop.reshape(box_height, box_width)
    return mask


def serverless_mask(mask: np.ndarray) -> list[int]:
    """A CVAT serverless detector's mask: the box's pixels (0 or 255) row by row, then
    [xtl, ytl, xbr, ybr] with inclusive corners."""
    rows, columns = np.nonzero(mask)
    x0, y0, x1, y1 = int(columns.min()), int(rows.min()), int(columns.max()), int(rows.max())
    crop = np.asarray(mask[y0 : y1 + 1, x0 : x1 + 1], dtype=np.uint8) * 255
    return [*crop.ravel().tolist(), x0, y0, x1, y1]


def serverless_mask_pixels(values: list[int], height: int, width: int) -> np.ndarray:
    """bool[height, width] of a serverless detector's mask (the inverse of serverless_mask)."""
    x0, y0, x1, y1 = (int(v) for v in values[-4:])
    crop = np.asarray(values[:-4]).reshape(y1 - y0 + 1, x1 - x0 + 1) > 0
    mask = np.zeros((height, width), dtype=bool)
    mask[y0 : y1 + 1, x0 : x1 + 1] = crop
    return mask


def export_xml(labels: LabelSet) -> bytes:
    """CVAT for images 1.1 annotations: masks as `<mask>`, boxes as `<box>`, tags as `<tag>`."""
    root = ET.Element("annotations")
    ET.SubElement(root, "version").text = "1.1"
    task = ET.SubElement(ET.SubElement(root, "meta"), "task")
    ET.SubElement(task, "size").text = str(len(labels.images))
    label_list = ET.SubElement(task, "labels")
    for name in labels.classes:
        label = ET.SubElement(label_list, "label")
        ET.SubElement(label, "name").text = name
        ET.SubElement(label, "type").text = "any"
        ET.SubElement(label, "attributes")
    for position, image in enumerate(labels.images):
        element = ET.SubElement(root, "image", id=str(position), name=image.file_name,
                                width=str(image.width), height=str(image.height))
        for z, instance in enumerate(image.instances):
            source = "auto" if instance.score is not None else "manual"
            mask = instance.mask()
            if mask is not None and mask.any():
                runs, (left, top, width, height) = mask_runs(mask)
                ET.SubElement(element, "mask", label=instance.label, source=source,
                              occluded="0", rle=", ".join(map(str, runs)), left=str(left),
                              top=str(top), width=str(width), height=str(height), z_order=str(z))
            elif instance.bbox is not None:
                x0, y0, x1, y1 = instance.bbox
                ET.SubElement(element, "box", label=instance.label, source=source, occluded="0",
                              xtl=f"{x0:.2f}", ytl=f"{y0:.2f}", xbr=f"{x1:.2f}", ybr=f"{y1:.2f}",
                              z_order=str(z))
        for tag in image.tags:
            ET.SubElement(element, "tag", label=tag, source="manual")
    ET.indent(root)
    return ET.tostring(root, encoding="utf-8", xml_declaration=True)


def import_xml(
    text: bytes | str, classes: tuple[str, ...] = (), *, max_pixels: int | None = None
) -> LabelSet:
    """The labels of CVAT for images 1.1 XML: masks and polygons become masks, boxes boxes,
    tags tags; the class list is the file's labels. Raises ValueError naming the problem (an
    image of more than `max_pixels` pixels among them)."""
    try:
        root = ET.fromstring(text)
    except ET.ParseError as error:
        raise ValueError(f"not CVAT XML: {error}") from None
    if root.tag != "annotations":
        raise ValueError(f"not CVAT for images XML: the root is <{root.tag}>, not <annotations>")
    names = list(classes) + [e.text or "" for e in root.iterfind("meta/*/labels/label/name")]
    images = []
    for position, element in enumerate(root.iterfind("image")):
        where = f"image {element.get('name', position)}"
        try:
            width, height = int(element.get("width")), int(element.get("height"))
            image_id = int(element.get("id", position)) + 1
        except (TypeError, ValueError):
            raise ValueError(f"{where}: needs integer id, width and height") from None
        check_image_size(where, width, height, max_pixels)
        instances, tags = [], []
        for shape in element:
            label = shape.get("label")
            if label is None:
                continue
            names.append(label)
            try:
                if shape.tag == "mask":
                    box = tuple(int(shape.get(k)) for k in ("left", "top", "width", "height"))
                    runs = [int(v) for v in shape.get("rle", "").split(",") if v.strip()]
                    instances.append(Instance.from_mask(label, runs_mask(runs, box, height, width)))
                elif shape.tag == "polygon":
                    points = [[float(v) for v in p.split(",")]
                              for p in shape.get("points", "").split(";")]
                    mask = polygons_mask([np.asarray(points)], height, width)
                    instances.append(Instance.from_mask(label, mask))
                elif shape.tag == "box":
                    box = tuple(float(shape.get(k)) for k in ("xtl", "ytl", "xbr", "ybr"))
                    instances.append(Instance(label, bbox=box))
                elif shape.tag == "tag":
                    tags.append(label)
            except (TypeError, ValueError) as error:
                raise ValueError(f"{where}: unreadable <{shape.tag}> ({error})") from None
        images.append(ImageLabels(image_id, element.get("name", f"{image_id}"), width, height,
                                  tuple(instances), tuple(sorted(set(tags)))))
    return LabelSet(classes=ordered_classes(n for n in names if n), images=tuple(images))
