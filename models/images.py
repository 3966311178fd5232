"""Images as the networks take them: float tensors, at a bounded working resolution."""

import cv2
import numpy as np
import torch
from torch import Tensor


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
