"""The model runtime: model version, proposal cache."""

import re

import numpy as np
import pytest
import torch

from models.delta import delta_matrix
from models.structures import InstanceSet
from service.runtime import (
    MemoryProposalCache,
    diversity,
    model_version,
)
from tests.service.conftest import scene_image


def test_model_version_is_stem_and_hash(bundle_path, tmp_path) -> None:
    version = model_version(bundle_path)
    assert re.fullmatch(r"tiny-model-[0-9a-f]{12}", version)
    changed = tmp_path / "tiny-model.pt"
    changed.write_bytes(bundle_path.read_bytes() + b"\0")
    assert model_version(changed) != version


def test_proposal_cache_is_a_bounded_lru() -> None:
    masks = [torch.from_numpy(np.random.default_rng(i).random((3, 9, 7)) > 0.5) for i in range(3)]
    cache = MemoryProposalCache(max_entries=2, max_bytes=10_000)
    cache.put("a", masks[0])
    cache.put("b", masks[1])
    assert torch.equal(cache.get("a"), masks[0])  # "a" is now the most recent
    cache.put("c", masks[2])
    assert cache.get("b") is None
    assert torch.equal(cache.get("a"), masks[0])
    assert torch.equal(cache.get("c"), masks[2])
    tiny = MemoryProposalCache(max_entries=10, max_bytes=20)  # 3 * 9 * 7 bits = 24 bytes
    tiny.put("a", masks[0])
    assert len(tiny) == 0


def test_proposals_are_computed_once_per_image_and_boxes(runtime) -> None:
    image = scene_image(11)
    misses = runtime.metrics.proposal_cache.labels("miss")
    before = misses._value.get()
    first = runtime.proposals(image)
    again = runtime.proposals(image)
    assert torch.equal(first, again)
    assert misses._value.get() == before + 1
    with_box = runtime.proposals(image, np.array([[10.0, 10.0, 60.0, 50.0]]))
    assert misses._value.get() == before + 2
    assert with_box.shape[1:] == first.shape[1:]


def test_segment_returns_cpu_instances_in_score_order(runtime) -> None:
    instances = runtime.segment(scene_image(12), score_threshold=0.0, max_instances=5)
    assert len(instances) <= 5
    assert instances.masks.dtype == torch.bool and instances.masks.shape[1:] == (96, 96)
    assert torch.all(instances.scores[:-1] >= instances.scores[1:])
    assert instances.masks.flatten(1).any(1).all()


def _instances(squares: list[tuple[int, int, int]]) -> InstanceSet:
    """Square masks (x, y, label) of side 6 on a 20x20 image."""
    masks = torch.zeros((len(squares), 20, 20), dtype=torch.bool)
    for i, (x, y, _) in enumerate(squares):
        masks[i, y : y + 6, x : x + 6] = True
    labels = torch.tensor([label for _, _, label in squares], dtype=torch.int64)
    return InstanceSet.from_masks(masks, labels, torch.ones(len(squares)))


def test_diversity_is_the_mean_delta_over_pairs_with_repeated_samples() -> None:
    a, b, c = _instances([(0, 0, 1)]), _instances([(2, 1, 1), (10, 10, 2)]), _instances([])
    samples = [a, b, a, c, a, b]
    matrix = delta_matrix(samples)
    expected = float(matrix.sum() / (len(samples) * (len(samples) - 1)))
    assert diversity(samples) == pytest.approx(expected)
    assert diversity([a, a, a]) == 0 and diversity([b]) == 0
