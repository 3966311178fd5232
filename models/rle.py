"""Binary masks as COCO run-length encoding (pycocotools' compressed form), the one encoding
files, results and the HTTP API use.

An `RLE` written here has its counts as an ASCII str, so it is JSON as it is. Readers also take
bytes counts (pycocotools' own form) and list counts (COCO's uncompressed RLE).
"""

from collections.abc import Sequence
from typing import Any

import numpy as np
from pycocotools import mask as mask_utils

RLE = dict[str, Any]
"""{"size": [height, width], "counts": str | bytes | list[int]}, runs in column-major order."""


def encode_masks(masks: np.ndarray) -> list[RLE]:
    """The RLEs of bool[N, H, W] masks, counts as str."""
    if masks.ndim != 3:
        raise ValueError(f"masks must have shape (N, H, W), got {masks.shape}")
    if len(masks) == 0:
        return []
    encoded = mask_utils.encode(np.asfortranarray(masks.transpose(1, 2, 0).astype(np.uint8)))
    return [
        {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}
        for rle in encoded
    ]


def encode_mask(mask: np.ndarray) -> RLE:
    """The RLE of a bool[H, W] mask, counts as str."""
    if mask.ndim != 2:
        raise ValueError(f"a mask array must be 2-D (height, width), got shape {mask.shape}")
    return encode_masks(mask[None])[0]


def compressed(rle: RLE) -> RLE:
    """The RLE itself when its counts are compressed (str or bytes); an uncompressed one (list
    counts) compressed, with bytes counts."""
    if isinstance(rle["counts"], list):
        height, width = rle["size"]
        return mask_utils.frPyObjects(rle, height, width)
    return rle


def decode_mask(rle: RLE) -> np.ndarray:
    """bool[H, W] of an RLE with str, bytes or list counts."""
    return mask_utils.decode(compressed(rle)).astype(bool)


def decode_masks(rles: Sequence[RLE]) -> np.ndarray:
    """bool[N, H, W] of N >= 1 RLEs of one size."""
    decoded = mask_utils.decode([compressed(rle) for rle in rles])  # (H, W, N), Fortran order
    return np.ascontiguousarray(decoded.transpose(2, 0, 1)).astype(bool)


def rle_area(rle: RLE) -> float:
    """Pixels of the mask."""
    return float(mask_utils.area(compressed(rle)))


def rle_box(rle: RLE) -> list[float]:
    """The mask's tight box as COCO writes it: [x, y, width, height] in pixels ([0, 0, 0, 0] for
    an empty mask)."""
    return [float(v) for v in mask_utils.toBbox(compressed(rle))]


def rle_runs(counts: str) -> list[int]:
    """The run lengths of compressed counts: each run is 5-bit groups (character - 48, low
    bits first, 0x20 set while more follow, 0x10 the sign of the last), a run from the third
    on stored as its difference to the run two before. ValueError for a character outside the
    alphabet, a negative run or counts that end inside a run."""
    runs: list[int] = []
    value, shift = 0, 0
    for character in counts:
        group = ord(character) - 48
        if not 0 <= group < 64:
            raise ValueError(f"the counts hold {character!r}, not an RLE character")
        value |= (group & 0x1F) << shift
        shift += 5
        if group & 0x20:
            continue
        if group & 0x10:
            value -= 1 << shift
        if len(runs) > 2:
            value += runs[-2]
        if value < 0:
            raise ValueError("the counts hold a negative run")
        runs.append(value)
        value, shift = 0, 0
    if shift:
        raise ValueError("the counts end inside a run")
    return runs
