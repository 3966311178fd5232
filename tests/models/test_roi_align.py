from collections import OrderedDict

import pytest
import torch
from torchvision.ops import MultiScaleRoIAlign, roi_align

from models.roi_align import SparseMultiScaleRoIAlign, sparse_roi_align


def random_rois(generator: torch.Generator, n: int, batch: int, extent: float) -> torch.Tensor:
    """(batch index, x0, y0, x1, y1) rows: boxes inside, across and beyond the image's edges,
    and boxes under a pixel wide."""
    corner = torch.rand(n, 2, generator=generator) * extent * 1.2 - extent * 0.1
    size = torch.rand(n, 2, generator=generator) ** 2 * extent
    size[: n // 8] *= 0.01
    index = torch.randint(0, batch, (n, 1), generator=generator).float()
    return torch.cat([index, corner, corner + size], dim=1)


@pytest.mark.parametrize("sampling_ratio,output_size", [(2, (7, 7)), (1, (14, 14)), (3, (5, 4))])
def test_sparse_roi_align_matches_torchvision_forward_and_backward(sampling_ratio, output_size):
    generator = torch.Generator().manual_seed(sampling_ratio)
    features = torch.randn(2, 8, 19, 23, generator=generator, requires_grad=True)
    rois = random_rois(generator, 200, batch=2, extent=92.0)
    upstream = torch.randn(200, 8, *output_size, generator=generator)

    outputs, grads = [], []
    for pool in (roi_align, sparse_roi_align):
        features.grad = None
        out = pool(features, rois, output_size, 0.25, sampling_ratio)
        (out * upstream).sum().backward()
        outputs.append(out.detach())
        grads.append(features.grad.clone())
    torch.testing.assert_close(outputs[1], outputs[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-4)


def test_sparse_roi_align_of_no_rois_is_empty():
    features = torch.randn(1, 4, 8, 8)
    out = sparse_roi_align(features, torch.zeros(0, 5), (7, 7), 1.0, 2)
    assert out.shape == (0, 4, 7, 7)
    with pytest.raises(ValueError, match="sampling_ratio"):
        sparse_roi_align(features, torch.zeros(1, 5), (7, 7), 1.0, 0)


def test_sparse_multiscale_pooling_matches_torchvision_on_every_level():
    generator = torch.Generator().manual_seed(0)
    image_sizes = [(128, 160), (128, 160)]
    features = OrderedDict(
        (str(level), torch.randn(2, 4, 32 >> level, 40 >> level, generator=generator))
        for level in range(4)
    )
    boxes = [random_rois(generator, 150, batch=1, extent=160.0)[:, 1:] for _ in image_sizes]
    boxes = [b.clamp(min=0) for b in boxes]
    reference = MultiScaleRoIAlign(list(features), 7, 2)
    expected = reference(features, boxes, image_sizes)
    pooled = SparseMultiScaleRoIAlign(list(features), 7, 2)(features, boxes, image_sizes)
    torch.testing.assert_close(pooled, expected, rtol=1e-5, atol=1e-5)
    assert len(set(reference.map_levels(boxes).tolist())) > 1, "the boxes must span levels"
