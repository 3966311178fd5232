"""External segment proposals: MCG/COB `.mat` files and `.npz` files of COCO RLE masks.

MCG/COB `.mat` layout: `superpixels` is an HxW integer label map (1-based) and `labels` a
cell array with, per proposal, the ids of the superpixels it consists of.

`.npz` layout (written by `save_proposal_file`): `counts`, a str array with the COCO RLE
count string of each mask, and `size`, the [h, w] of all masks. The file is read without
pickle, so `counts` must be a str array, not an object array.
"""

from pathlib import Path

import numpy as np
import scipy.io
import torch

from models.rle import decode_masks, encode_masks

SUFFIXES = (".mat", ".npz")


def load_proposal_file(path: Path, image_shape: tuple[int, int]) -> torch.Tensor:
    """Read the proposals of one image: BoolTensor[P, H, W] with (H, W) == image_shape.

    FileNotFoundError for a missing file; ValueError for an unknown suffix, a missing key, a
    size other than image_shape or malformed contents.
    """
    path = Path(path)
    if path.suffix not in SUFFIXES:
        raise ValueError(f"unknown proposal file suffix {path.suffix!r} of {path}; use {SUFFIXES}")
    if not path.is_file():
        raise FileNotFoundError(f"no proposal file at {path}")
    height, width = image_shape
    masks = _load_mat(path) if path.suffix == ".mat" else _load_npz(path)
    if masks.shape[1:] != (height, width):
        raise ValueError(
            f"proposals in {path} have size {masks.shape[1:]}, the image is {(height, width)}"
        )
    return torch.from_numpy(masks)


def save_proposal_file(path: Path, masks: torch.Tensor | np.ndarray) -> None:
    """Write bool[P, H, W] masks as an `.npz` of COCO RLE strings (see the module docstring)."""
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"proposal files are written as .npz, got {path}")
    masks = np.asarray(masks.cpu() if isinstance(masks, torch.Tensor) else masks)
    if masks.ndim != 3:
        raise ValueError(f"masks must have shape (P, H, W), got {masks.shape}")
    counts = np.array([rle["counts"] for rle in encode_masks(masks)], dtype=str)
    np.savez_compressed(path, counts=counts, size=np.array(masks.shape[1:], dtype=np.int64))


def _load_npz(path: Path) -> np.ndarray:
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = sorted({"counts", "size"} - set(data.files))
            if missing:
                raise ValueError(f"{path} lacks the key(s) {missing}; it has {data.files}")
            counts, size = data["counts"], data["size"]
    except ValueError as error:
        if "allow_pickle" in str(error):
            raise ValueError(
                f"{path} stores `counts` as an object array; store it as a str array"
            ) from error
        raise
    size = [int(v) for v in np.asarray(size).ravel()]
    if len(size) != 2:
        raise ValueError(f"`size` in {path} must be [h, w], got {size}")
    counts = np.asarray(counts).ravel()
    if len(counts) == 0:
        return np.zeros((0, *size), dtype=bool)
    return decode_masks([{"size": size, "counts": str(c)} for c in counts])


def _load_mat(path: Path) -> np.ndarray:
    data = scipy.io.loadmat(path)
    missing = sorted({"superpixels", "labels"} - set(data))
    if missing:
        keys = sorted(k for k in data if not k.startswith("__"))
        raise ValueError(f"{path} lacks the key(s) {missing}; it has {keys}")
    superpixels = np.asarray(data["superpixels"])
    if superpixels.ndim != 2 or not np.issubdtype(superpixels.dtype, np.integer):
        raise ValueError(
            f"`superpixels` in {path} must be an HxW integer map, got "
            f"{superpixels.dtype} {superpixels.shape}"
        )
    count = int(superpixels.max(initial=0))
    proposals = _cells(data["labels"])
    table = np.zeros((len(proposals), count + 1), dtype=bool)  # (P, superpixel id)
    for i, ids in enumerate(proposals):
        if len(ids) == 0 or ids.min() < 1 or ids.max() > count:
            raise ValueError(
                f"proposal {i} in {path} lists superpixel ids {ids.tolist()[:10]}; "
                f"they must be 1-based ids of the {count} superpixels"
            )
        table[i, ids] = True
    return table[:, superpixels.astype(np.intp)]  # (P, H, W)


def _cells(labels: np.ndarray) -> list[np.ndarray]:
    """The per-proposal id lists of a loadmat cell array, whatever its nesting.

    loadmat gives a cell array as an object array of shape (P, 1) or (1, P) whose entries are
    (1, k) or (k, 1) numeric arrays, sometimes wrapped in further 1-element cells; a single
    numeric matrix (one proposal per row) is accepted too.
    """
    labels = np.asarray(labels)
    if labels.dtype != object:
        return [row.astype(np.int64) for row in np.atleast_2d(labels)]
    return [_flatten(entry) for entry in labels.ravel()]


def _flatten(entry: object) -> np.ndarray:
    array = np.asarray(entry)
    if array.dtype == object:
        parts = [_flatten(part) for part in array.ravel()]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
    return array.ravel().astype(np.int64)
