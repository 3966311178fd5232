"""RoIAlign as a sparse matrix product, for the CPU.

torchvision's CPU backward of RoIAlign walks every RoI, channel and sampling point on one
thread; it was a quarter of a `tiny` P-step. Its output is linear in the feature map: each
output bin is a weighted sum of pixels (bilinear weights of its sampling points), so the RoIs'
weights form a sparse matrix W of (RoI bins) x (feature-map pixels), and forward and backward
are the products W F and W^T G. On 580 RoIs of a 64-channel map the two take a fifth of
torchvision's time (`bench/roi_align.py`), with the same values up to float rounding.
"""

import warnings

import torch
from torch import Tensor
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.poolers import _setup_scales


def _axis_samples(
    start: Tensor, length: Tensor, size: int, bins: int, sampling_ratio: int
) -> tuple[Tensor, Tensor]:
    """Along one axis of a feature map of `size` pixels: for each RoI (start, length in the
    map's pixels, FloatTensor[R]) and each of its `bins`, the pixels its sampling points read
    and their weights, each Int64Tensor / FloatTensor[R, bins, 2 * sampling_ratio]
    (torchvision's roi_align with aligned=False: the RoI is at least one pixel, a point
    beyond half a pixel outside the map reads nothing, one inside it is clamped to the map)."""
    step = length.clamp(min=1.0) / (bins * sampling_ratio)
    offsets = torch.arange(bins * sampling_ratio, dtype=start.dtype, device=start.device) + 0.5
    points = start[:, None] + offsets[None] * step[:, None]  # (R, bins * s)
    inside = ((points >= -1.0) & (points <= size)).to(start.dtype)
    points = points.clamp(min=0.0)
    low = points.floor().long()
    at_end = low >= size - 1
    low = low.clamp(max=size - 1)
    high = torch.where(at_end, low, low + 1)
    fraction = torch.where(at_end, torch.zeros_like(points), points - low)
    pixels = torch.stack([low, high], dim=-1)  # (R, bins * s, 2)
    weights = torch.stack([1.0 - fraction, fraction], dim=-1) * inside[..., None]
    shape = (len(start), bins, 2 * sampling_ratio)
    return pixels.reshape(shape), weights.reshape(shape)


def roi_align_matrix(
    rois: Tensor,
    feature_size: tuple[int, int, int],
    output_size: tuple[int, int],
    spatial_scale: float,
    sampling_ratio: int,
) -> Tensor:
    """W, a sparse CSR FloatTensor[R * out_h * out_w, B * H * W]: row (r, i, j) holds the
    weights of output bin (i, j) of RoI r over the pixels of a (B, H, W) feature map.

    rois: FloatTensor[R, 5] of (batch index, x0, y0, x1, y1) in image pixels."""
    batch, height, width = feature_size
    out_h, out_w = output_size
    index = rois[:, 0].long()
    x0, y0, x1, y1 = (rois[:, 1:] * spatial_scale).unbind(dim=1)
    ys, wy = _axis_samples(y0, y1 - y0, height, out_h, sampling_ratio)  # (R, out_h, 2s)
    xs, wx = _axis_samples(x0, x1 - x0, width, out_w, sampling_ratio)  # (R, out_w, 2s)
    columns = (
        index[:, None, None, None, None] * (height * width)
        + ys[:, :, None, :, None] * width
        + xs[:, None, :, None, :]
    )  # (R, out_h, out_w, 2s, 2s)
    values = wy[:, :, None, :, None] * wx[:, None, :, None, :] / sampling_ratio**2
    per_row = (2 * sampling_ratio) ** 2
    rows = len(rois) * out_h * out_w
    crow = torch.arange(0, rows * per_row + 1, per_row, device=rois.device)
    # a row's columns are neither sorted nor unique (sampling points share pixels); the
    # products sum every entry, which is the weighted sum wanted
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(
            crow,
            columns.flatten(),
            values.flatten(),
            (rows, batch * height * width),
            check_invariants=False,
        )


def sparse_roi_align(
    features: Tensor,
    rois: Tensor,
    output_size: tuple[int, int],
    spatial_scale: float,
    sampling_ratio: int,
) -> Tensor:
    """torchvision.ops.roi_align(aligned=False) with a fixed `sampling_ratio` >= 1, as a
    sparse-dense product. features: FloatTensor[B, C, H, W]; rois: FloatTensor[R, 5] of
    (batch index, x0, y0, x1, y1). Returns FloatTensor[R, C, out_h, out_w]."""
    if sampling_ratio < 1:
        raise ValueError(f"sampling_ratio must be at least 1, got {sampling_ratio}")
    batch, channels, height, width = features.shape
    matrix = roi_align_matrix(
        rois.detach(), (batch, height, width), output_size, spatial_scale, sampling_ratio
    )
    pixels = features.permute(0, 2, 3, 1).reshape(batch * height * width, channels)
    pooled = torch.sparse.mm(matrix, pixels)  # (R * out_h * out_w, C)
    return pooled.view(len(rois), *output_size, channels).permute(0, 3, 1, 2)


class SparseMultiScaleRoIAlign(MultiScaleRoIAlign):
    """torchvision's MultiScaleRoIAlign (same levels, scales and outputs) pooling each level
    with `sparse_roi_align` on the CPU; other devices keep torchvision's kernel."""

    def forward(
        self, x: dict[str, Tensor], boxes: list[Tensor], image_shapes: list[tuple[int, int]]
    ) -> Tensor:
        features = [x[name] for name in self.featmap_names]
        if features[0].device.type != "cpu":
            return super().forward(x, boxes, image_shapes)
        if self.scales is None or self.map_levels is None:
            self.scales, self.map_levels = _setup_scales(
                features, image_shapes, self.canonical_scale, self.canonical_level
            )
        rois = torch.cat(
            [torch.cat([b.new_full((len(b), 1), i), b], dim=1) for i, b in enumerate(boxes)]
        )
        levels = self.map_levels(boxes)
        pooled = features[0].new_zeros(len(rois), features[0].shape[1], *self.output_size)
        for level, (feature, scale) in enumerate(zip(features, self.scales, strict=True)):
            rows = torch.where(levels == level)[0]
            pooled[rows] = sparse_roi_align(
                feature, rois[rows], self.output_size, scale, self.sampling_ratio
            )
        return pooled
