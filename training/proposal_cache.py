"""Segment proposals computed once per image and cached on disk.

The key is `models.proposals.proposal_key`, so a changed image, box or setting never reads a
stale entry. Entries are bit-packed `.npz` files written atomically.
"""

import zipfile
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from models.atomic import atomic_write
from models.proposals import ProposalSettings, proposal_key, propose


class DiskProposalCache:
    """`get(image, boxes)` returns BoolTensor[P, H, W], computing and storing it when missing."""

    def __init__(self, root: Path, settings: ProposalSettings) -> None:
        self.root = Path(root)
        self.settings = settings

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.npz"

    def get(self, image: np.ndarray, boxes: np.ndarray | None = None) -> Tensor:
        path = self.path(proposal_key(image, boxes, self.settings))
        if path.is_file():
            try:
                return _read(path)
            except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
                path.unlink(missing_ok=True)  # a damaged entry is recomputed
        proposals = propose(image, boxes, settings=self.settings)
        _write(path, proposals)
        return proposals


def _read(path: Path) -> Tensor:
    with np.load(path) as data:
        shape = tuple(int(v) for v in data["shape"])
        bits = np.unpackbits(data["bits"], count=int(np.prod(shape)))
    return torch.from_numpy(bits.reshape(shape).astype(bool))


def _write(path: Path, proposals: Tensor) -> None:
    with atomic_write(path) as file:
        np.savez(file, shape=np.array(proposals.shape), bits=np.packbits(proposals.numpy().ravel()))
