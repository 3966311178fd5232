"""A small U-Net: the trunk of the conditional network (features at input resolution)."""

import torch
from torch import Tensor, nn
from torch.nn import functional as F


def conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """Two 3x3 conv + BatchNorm + ReLU layers at constant resolution."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """U-Net with `len(widths)` levels; each level halves the resolution.

    forward: FloatTensor[B, in_channels, H, W] -> FloatTensor[B, widths[0], H, W].
    H and W need not be multiples of 2**levels (the decoder resizes to the skip's size).
    """

    def __init__(self, in_channels: int = 3, widths: tuple[int, ...] = (32, 64, 128)) -> None:
        super().__init__()
        channels = (in_channels, *widths)
        self.down = nn.ModuleList(
            conv_block(a, b) for a, b in zip(channels[:-1], channels[1:], strict=True)
        )
        self.up = nn.ModuleList(
            conv_block(deep + skip, skip)
            for deep, skip in zip(widths[:0:-1], widths[-2::-1], strict=True)
        )

    def forward(self, x: Tensor) -> Tensor:
        skips = []
        for index, block in enumerate(self.down):
            if index:
                x = F.max_pool2d(x, 2)
            x = block(x)
            skips.append(x)
        for block, skip in zip(self.up, skips[-2::-1], strict=True):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = block(torch.cat([x, skip], dim=1))
        return x
