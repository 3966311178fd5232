import numpy as np
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import array_shapes, arrays
from torchvision.ops import masks_to_boxes

from models.structures import any_along, mask_boxes

bool_arrays = arrays(np.bool_, array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=9))


@given(bool_arrays, st.data())
def test_any_along_is_torchs_any(array, data):
    flags = torch.from_numpy(array)
    dim = data.draw(st.integers(0, flags.ndim - 1))
    assert torch.equal(any_along(flags, dim), flags.any(dim))
    mirrored = flags.flip(-1)  # a view with a negative stride
    assert torch.equal(any_along(mirrored, dim), mirrored.any(dim))
    as_bytes = flags.to(torch.uint8)  # other dtypes: torch's any
    assert torch.equal(any_along(as_bytes, dim), as_bytes.any(dim))


@given(arrays(np.bool_, st.tuples(st.integers(0, 4), st.integers(1, 9), st.integers(1, 9))))
def test_mask_boxes_are_the_tight_boxes_with_exclusive_ends(array):
    masks = torch.from_numpy(array)
    boxes = mask_boxes(masks)
    nonempty = masks.flatten(1).any(1)
    assert torch.equal(boxes[~nonempty], torch.zeros((int((~nonempty).sum()), 4)))
    expected = masks_to_boxes(masks[nonempty]) + torch.tensor([0.0, 0.0, 1.0, 1.0])
    assert torch.equal(boxes[nonempty], expected)
