"""Pascal VOC segmentation PNGs: `SegmentationClass/<stem>.png` (class index per pixel) and
`SegmentationObject/<stem>.png` (instance index per pixel), both palette PNGs with VOC's
colour map, `labelmap.txt` naming the classes and their colours, and the image list
`ImageSets/Segmentation/default.txt`.

A pixel holds one instance: where masks overlap the better-scoring one (the earlier one when
neither has a score) is kept.
"""

import io

import numpy as np
from PIL import Image

from training.formats.labels import ImageLabels, LabelSet


def voc_palette() -> np.ndarray:
    """uint8[256, 3]: VOC's colour map (index bits spread over the colour channels)."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    for index in range(256):
        value, colour = index, [0, 0, 0]
        for shift in range(7, -1, -1):
            for channel in range(3):
                colour[channel] |= ((value >> channel) & 1) << shift
            value >>= 3
        palette[index] = colour
    return palette


def _png(indices: np.ndarray, palette: np.ndarray) -> bytes:
    image = Image.fromarray(indices.astype(np.uint8), mode="P")
    image.putpalette(palette.ravel().tolist())
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def image_maps(labels: LabelSet, image: ImageLabels) -> tuple[np.ndarray, np.ndarray]:
    """uint8[H, W] class and instance index maps of one image (0 background)."""
    classes = np.zeros((image.height, image.width), dtype=np.uint8)
    objects = np.zeros_like(classes)
    order = sorted(range(len(image.instances)),
                   key=lambda i: (image.instances[i].score or 0.0, -i))
    for index in order:  # worst first: better instances paint over it
        instance = image.instances[index]
        mask = instance.mask()
        if mask is None:
            continue
        classes[mask] = labels.class_id(instance.label)
        objects[mask] = index + 1
    return classes, objects


def export_files(labels: LabelSet) -> dict[str, bytes]:
    if len(labels.classes) > 254 or any(len(i.instances) > 254 for i in labels.images):
        raise ValueError("VOC PNGs hold at most 254 classes and 254 instances per image")
    palette = voc_palette()
    lines = ["# label:color_rgb:parts:actions", "background:0,0,0::"]
    lines += [f"{name}:{','.join(map(str, palette[i + 1]))}::"
              for i, name in enumerate(labels.classes)]
    files = {"labelmap.txt": ("\n".join(lines) + "\n").encode(),
             "ImageSets/Segmentation/default.txt":
                 "".join(f"{i.stem}\n" for i in labels.images).encode()}
    for image in labels.images:
        classes, objects = image_maps(labels, image)
        files[f"SegmentationClass/{image.stem}.png"] = _png(classes, palette)
        files[f"SegmentationObject/{image.stem}.png"] = _png(objects, palette)
    return files
