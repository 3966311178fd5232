"""Segment proposals computed once per image and cached on disk.

The key is `models.proposals.proposal_key`, so a changed image, box or setting never reads a
stale entry. Entries are bit-packed `.npz` files written atomically. Processes sharing the
folder (trainings of the same data run side by side) compute each entry once: a missing entry
is computed under an exclusive lock on `<entry>.lock`, and whoever waited on it reads it.
"""

import fcntl
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
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
        cached = _read_or_none(path)
        if cached is not None:
            return cached
        with _exclusive(path.with_suffix(".lock")):
            cached = _read_or_none(path)  # written by the process this one waited for
            if cached is not None:
                return cached
            proposals = propose(image, boxes, settings=self.settings)
            _write(path, proposals)
        return proposals


@contextmanager
def _exclusive(lock: Path) -> Iterator[None]:
    """Holds an exclusive flock on `lock`, removing the file when the block ends (the entry is
    then written, or computing it failed).

    A process that opens the path after the removal takes a new lock file, but finds the entry
    written when it re-reads under its lock, so the lock only spares work, never decides what
    is read.
    """
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a") as file:
        fcntl.flock(file, fcntl.LOCK_EX)
        try:
            yield
        finally:
            lock.unlink(missing_ok=True)
            fcntl.flock(file, fcntl.LOCK_UN)


def _read_or_none(path: Path) -> Tensor | None:
    """The entry at `path`; None when it is missing or damaged (a damaged one is removed)."""
    if not path.is_file():
        return None
    try:
        return _read(path)
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        path.unlink(missing_ok=True)
        return None


def _read(path: Path) -> Tensor:
    with np.load(path) as data:
        shape = tuple(int(v) for v in data["shape"])
        bits = np.unpackbits(data["bits"], count=int(np.prod(shape)))
    return torch.from_numpy(bits.reshape(shape).astype(bool))


def _write(path: Path, proposals: Tensor) -> None:
    with atomic_write(path) as file:
        np.savez(file, shape=np.array(proposals.shape), bits=np.packbits(proposals.numpy().ravel()))
