"""Images as the networks take them: upright, float tensors, at a bounded working resolution."""

import cv2
import numpy as np
import torch
from PIL import ExifTags, Image, ImageOps
from torch import Tensor

# EXIF orientations that turn the image by a quarter (with or without a flip): width and
# height trade places.
_QUARTER_TURNS = (5, 6, 7, 8)


def upright(image: Image.Image) -> Image.Image:
    """The image turned as its EXIF orientation says, as viewers and annotation tools show it
    and as annotations refer to it (the stored pixels are often a camera's sideways view)."""
    return ImageOps.exif_transpose(image)


def upright_size(image: Image.Image) -> tuple[int, int]:
    """(width, height) of `upright(image)`. Reads the EXIF of a JPEG from its header; a PNG
    may be decoded to find its EXIF, after which `image.verify()` is no longer possible."""
    width, height = image.size
    orientation = image.getexif().get(ExifTags.Base.Orientation, 1)
    return (height, width) if orientation in _QUARTER_TURNS else (width, height)


def as_image_tensor(image: np.ndarray | Tensor) -> Tensor:
    """An HxWx3 uint8 array, or a FloatTensor[3, H, W] in [0, 1], as FloatTensor[3, H, W]."""
    if isinstance(image, Tensor) and image.is_floating_point():
        if image.ndim != 3 or image.shape[0] != 3:
            raise ValueError(f"image tensor must be (3, H, W), got {tuple(image.shape)}")
        return image
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3 or array.dtype != np.uint8:
        raise ValueError(f"image must be an HxWx3 uint8 array, got {array.dtype} {array.shape}")
    return torch.tensor(array).permute(2, 0, 1).float() / 255


def fitted_size(height: int, width: int, max_side: int) -> tuple[int, int]:
    """(h, w) of an image downscaled so that its longer side is at most max_side (never
    upscaled)."""
    scale = min(1.0, max_side / max(height, width))
    return max(1, round(height * scale)), max(1, round(width * scale))


def fit_image(image: np.ndarray, max_side: int) -> np.ndarray:
    """uint8[h, w, 3]: the image downscaled by area averaging to `fitted_size`."""
    height, width = image.shape[:2]
    size = fitted_size(height, width, max_side)
    if size == (height, width):
        return image
    return cv2.resize(image, size[::-1], interpolation=cv2.INTER_AREA)
