import json

import numpy as np
import pytest

from models.rle import (
    compressed,
    decode_mask,
    decode_masks,
    encode_mask,
    encode_masks,
    rle_area,
    rle_box,
    rle_runs,
)


def masks() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.random((3, 7, 5)) > 0.5  # (N, H, W)


def test_encoded_masks_are_json_and_decode_to_themselves():
    original = masks()
    rles = encode_masks(original)
    assert json.loads(json.dumps(rles)) == rles, "counts are str, sizes plain ints"
    assert all(rle["size"] == [7, 5] for rle in rles)
    assert np.array_equal(decode_masks(rles), original)
    assert np.array_equal(decode_mask(encode_mask(original[1])), original[1])
    assert encode_masks(np.zeros((0, 7, 5), bool)) == []


def test_bytes_and_uncompressed_counts_decode_alike():
    mask = np.zeros((12, 9), bool)
    mask[3:8, 2:6] = True
    rle = encode_mask(mask)
    as_bytes = {"size": rle["size"], "counts": rle["counts"].encode()}
    # column-major runs: 2 empty columns + 3 rows, then 4 columns of 5 ones and 7 zeros
    uncompressed = {"size": [12, 9], "counts": [27, 5, 7, 5, 7, 5, 7, 5, 40]}
    for form in (rle, as_bytes, uncompressed):
        assert np.array_equal(decode_mask(form), mask)
    assert isinstance(compressed(uncompressed)["counts"], bytes)
    assert compressed(rle) is rle


def test_area_box_and_runs_of_a_mask():
    mask = np.zeros((10, 10), bool)
    mask[1:4, 5:9] = True
    rle = encode_mask(mask)
    assert rle_area(rle) == 12
    assert rle_box(rle) == [5, 1, 4, 3]
    assert rle_runs(rle["counts"]) == [51, 3, 7, 3, 7, 3, 7, 3, 16]


@pytest.mark.parametrize(("counts", "problem"), [
    ("0 1", "not an RLE character"),
    ("0`", "end inside a run"),
])
def test_malformed_counts_are_named(counts, problem):
    with pytest.raises(ValueError, match=problem):
        rle_runs(counts)


def test_a_mask_must_be_two_dimensional():
    with pytest.raises(ValueError, match="2-D"):
        encode_mask(np.zeros((2, 3, 4), bool))
