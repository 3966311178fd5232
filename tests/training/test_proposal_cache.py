import threading
import time

import numpy as np
import pytest
import torch

import training.proposal_cache as proposal_cache
from models.proposals import ProposalSettings, proposal_key
from training.data.synthetic import render_scene
from training.proposal_cache import DiskProposalCache

SETTINGS = ProposalSettings(max_proposals=10)


@pytest.fixture
def image():
    return render_scene(np.random.default_rng(3), 48).image


@pytest.fixture
def calls(monkeypatch):
    """Counts the calls of the proposal generator behind the cache."""
    counted = []

    def counting_propose(*args, **kwargs):
        counted.append(1)
        return real_propose(*args, **kwargs)

    real_propose = proposal_cache.propose
    monkeypatch.setattr(proposal_cache, "propose", counting_propose)
    return counted


def test_second_get_reads_the_cache(tmp_path, image, calls):
    first = DiskProposalCache(tmp_path, SETTINGS).get(image)
    again = DiskProposalCache(tmp_path, SETTINGS).get(image)  # a new process, the same folder
    assert len(calls) == 1
    assert first.dtype == torch.bool and first.shape[1:] == image.shape[:2]
    assert torch.equal(first, again)


def test_settings_boxes_and_image_change_the_key(image):
    boxes = np.array([[4.0, 4.0, 30.0, 30.0]])
    keys = {
        proposal_key(image, None, SETTINGS),
        proposal_key(image, None, ProposalSettings(max_proposals=11)),
        proposal_key(image, boxes, SETTINGS),
        proposal_key(image, boxes + 1, SETTINGS),
        proposal_key(255 - image, None, SETTINGS),
    }
    assert len(keys) == 5
    same = proposal_key(image.copy(), boxes.copy(), SETTINGS)
    assert same == proposal_key(image, boxes, SETTINGS)


def test_boxes_and_settings_are_cached_apart(tmp_path, image, calls):
    boxes = np.array([[4.0, 4.0, 30.0, 30.0]])
    plain = DiskProposalCache(tmp_path, SETTINGS).get(image)
    with_boxes = DiskProposalCache(tmp_path, SETTINGS).get(image, boxes)
    fewer = DiskProposalCache(tmp_path, ProposalSettings(max_proposals=2)).get(image)
    assert len(calls) == 3
    assert len(with_boxes) > len(plain) >= len(fewer)


@pytest.mark.parametrize(
    "damage",
    [
        lambda data: b"not an npz file",
        lambda data: data[: len(data) // 2],  # truncated, as after a crash or a full disk
    ],
    ids=["garbage", "truncated"],
)
def test_a_damaged_entry_is_recomputed(tmp_path, image, calls, damage):
    cache = DiskProposalCache(tmp_path, SETTINGS)
    expected = cache.get(image)
    path = cache.path(proposal_key(image, None, SETTINGS))
    path.write_bytes(damage(path.read_bytes()))
    assert torch.equal(cache.get(image), expected)
    assert len(calls) == 2
    assert torch.equal(cache.get(image), expected)
    assert len(calls) == 2, "the recomputed entry must have been written back"


def test_processes_sharing_the_folder_compute_an_entry_once(tmp_path, image, monkeypatch):
    """Two trainings of the same data side by side: the second waits for the first's entry."""
    started = []

    def slow_propose(*args, **kwargs):
        started.append(1)
        time.sleep(0.5)  # both callers are inside get() before the first entry is written
        return torch.zeros((1, *image.shape[:2]), dtype=torch.bool)

    monkeypatch.setattr(proposal_cache, "propose", slow_propose)
    results = []
    callers = [
        threading.Thread(
            target=lambda: results.append(DiskProposalCache(tmp_path, SETTINGS).get(image))
        )
        for _ in range(2)
    ]
    for caller in callers:
        caller.start()
    for caller in callers:
        caller.join()
    assert len(started) == 1
    assert len(results) == 2 and torch.equal(results[0], results[1])
    assert not list(tmp_path.rglob("*.lock")), "lock files are removed once the entry is written"
