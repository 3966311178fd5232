"""Uploaded images in and overlay images out.

`decode_image` turns untrusted bytes into an RGB array or raises an `ImageError` whose status
says what is wrong: not an image or a truncated one (400), a format we do not read (415), more
pixels than allowed (413, checked from the header before any pixel is decoded, so a
decompression bomb costs nothing), or too small to segment (422). Multi-picture files (MPO, as
cameras write them, and multi-page TIFF) are read as their first picture.
"""

import io
import warnings
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageDraw, UnidentifiedImageError

from models.orientation import upright

SUPPORTED_FORMATS = ("JPEG", "MPO", "PNG", "WEBP", "BMP", "TIFF")
MIN_SIDE = 16
# Distinct, saturated colours for instance overlays (one per class, cycling).
PALETTE = np.array(
    [
        (230, 25, 75),
        (60, 180, 75),
        (255, 225, 25),
        (0, 130, 200),
        (245, 130, 48),
        (145, 30, 180),
        (70, 240, 240),
        (240, 50, 230),
    ],
    dtype=np.float32,
)


class ImageError(ValueError):
    """An upload that cannot be used as an image; `status` and `code` name the HTTP answer."""

    status = 400
    code = "invalid_image"


class UnsupportedImage(ImageError):
    status = 415
    code = "unsupported_media_type"


class ImageTooLarge(ImageError):
    status = 413
    code = "image_too_large"


class ImageTooSmall(ImageError):
    status = 422
    code = "image_too_small"


def identify_format(file: BinaryIO) -> str | None:
    """The image format Pillow reads in the file's header (e.g. "PNG", "GIF"), or None when
    the data is no image Pillow knows. Reads the header only."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            with Image.open(file) as image:
                return image.format
        except Image.DecompressionBombError:
            return None  # an image, but a bomb: decode_image says so with its own message
        except Exception:  # PIL's header parsers raise many types on data they do not know
            return None


def decode_image(data: bytes, *, max_pixels: int) -> np.ndarray:
    """uint8[H, W, 3] RGB pixels of an uploaded image in one of SUPPORTED_FORMATS (EXIF
    rotation applied; the first picture of a multi-picture file).

    Raises an ImageError subclass (a ValueError) naming the problem.
    """
    too_many = f"at most {max_pixels} are accepted (DISCOSEG_MAX_IMAGE_PIXELS)"
    if not data:
        raise ImageError("the image file is empty")
    with warnings.catch_warnings():
        # The pixel limit is ours (max_pixels); PIL's own warning threshold is not.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data))
        except Image.DecompressionBombError:
            # Pillow's own bound, far above ours: its message would quote its limit.
            raise ImageTooLarge(f"the image has too many pixels; {too_many}") from None
        except UnidentifiedImageError:
            raise ImageError(
                f"the upload is not an image in a supported format ({', '.join(SUPPORTED_FORMATS)})"
            ) from None
        except Exception as error:  # PIL's header parsers raise many types on corrupt input
            raise ImageError(f"the image header is corrupt: {error}") from None
        if image.format not in SUPPORTED_FORMATS:
            raise UnsupportedImage(
                f"unsupported image format {image.format}; "
                f"supported formats: {', '.join(SUPPORTED_FORMATS)}"
            )
        width, height = image.size
        if width * height > max_pixels:
            raise ImageTooLarge(
                f"the image is {width}x{height} = {width * height} pixels; {too_many}"
            )
        try:
            image.load()
            image = upright(image)
        except Exception as error:  # truncated data, bad compressed streams, bad EXIF
            raise ImageError(f"the image data is truncated or corrupt: {error}") from None
    try:
        rgb = image.convert("RGB")
    except ValueError as error:
        raise UnsupportedImage(f"unsupported pixel mode {image.mode}: {error}") from None
    if min(rgb.size) < MIN_SIDE:
        raise ImageTooSmall(
            f"the image is {rgb.width}x{rgb.height}; both sides must be at least {MIN_SIDE} "
            "pixels"
        )
    return np.asarray(rgb, dtype=np.uint8).copy()


def overlay_png(
    image: np.ndarray, masks: np.ndarray, labels: np.ndarray, boxes: np.ndarray
) -> bytes:
    """PNG bytes of the image with each instance's mask tinted and its box outlined.

    image: uint8[H, W, 3]; masks: bool[N, H, W]; labels: int[N] class ids in 1..C;
    boxes: float[N, 4] in x0, y0, x1, y1 pixels.
    """
    canvas = image.astype(np.float32)
    colours = PALETTE[(np.asarray(labels, dtype=np.int64) - 1) % len(PALETTE)]
    for mask, colour in zip(masks, colours, strict=True):
        canvas[mask] = 0.5 * canvas[mask] + 0.5 * colour
    picture = Image.fromarray(canvas.round().astype(np.uint8))
    draw = ImageDraw.Draw(picture)
    for box, colour in zip(boxes, colours, strict=True):
        x0, y0, x1, y1 = (float(v) for v in box)
        if x1 > x0 and y1 > y0:
            corners = (x0, y0, max(x0, x1 - 1), max(y0, y1 - 1))
            draw.rectangle(corners, outline=tuple(int(c) for c in colour))
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return buffer.getvalue()
