"""Shards of a dataset across torchrun ranks: equal step counts, every image covered."""

import pytest

from training.distributed import Rank, shard_indices


@pytest.mark.parametrize("world_size", [1, 2, 3, 4])
@pytest.mark.parametrize("count", [1, 2, 5, 7, 12])
def test_shards_are_equal_and_cover_every_image(count, world_size):
    shards = [shard_indices(count, Rank(r, world_size)) for r in range(world_size)]
    assert len({len(s) for s in shards}) == 1
    assert set().union(*shards) == set(range(count))
    assert sum(len(s) for s in shards) < count + world_size


def test_a_single_rank_takes_the_images_in_order():
    assert shard_indices(5, Rank()) == [0, 1, 2, 3, 4]
