"""Small built-in convolutional backbones for fast CPU runs (demo, tests).

They expose the same three members mlkd uses from a timm model: ``forward_features`` (the final map),
``forward_intermediates`` (the final map and every stage map) and ``feature_info``/``num_features``, so
`MultiLabelModel` treats built-ins and timm backbones the same way.

Every stage halves the resolution with a stride-2 3×3 convolution, so the final map is 1/16 of the
input (rounded up): 4×4 for 56–64 px images, 14×14 at 224 px. Any input size works; from 32×32 up
every stage map is at least 2×2.
"""
from __future__ import annotations

from typing import Sequence

from torch import Tensor, nn


def _conv_bn(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    """3×3 convolution (no bias, BatchNorm follows) + BatchNorm, ``[N, c_in, H, W] -> [N, c_out, H/s, W/s]``."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
    )


class _ResidualBlock(nn.Module):
    """Two 3×3 conv-BN layers with an identity shortcut, ``[N, C, H, W] -> [N, C, H, W]``."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = _conv_bn(channels, channels, 1)
        self.conv2 = _conv_bn(channels, channels, 1)
        self.act = nn.ReLU(inplace=True)
        # Start as an identity map: zero the last BN scale so deep stacks train from the first step.
        nn.init.zeros_(self.conv2[1].weight)

    def forward(self, x: Tensor) -> Tensor:
        return self.act(x + self.conv2(self.act(self.conv1(x))))


class BuiltinCNN(nn.Module):
    """A plain stage-wise CNN: per stage a stride-2 conv-BN-ReLU, then ``blocks`` residual blocks.

    Args:
        widths: output channels of each stage (one stage per entry).
        blocks: residual blocks after the downsampling conv of every stage.
        in_chans: input channels.
    """

    def __init__(self, widths: Sequence[int], blocks: int = 0, in_chans: int = 3) -> None:
        super().__init__()
        if not isinstance(in_chans, int) or in_chans < 1:
            raise ValueError(f"in_chans must be a positive integer, got {in_chans!r}")
        stages = []
        c_in = in_chans
        for width in widths:
            layers: list[nn.Module] = [_conv_bn(c_in, width, 2), nn.ReLU(inplace=True)]
            layers += [_ResidualBlock(width) for _ in range(blocks)]
            stages.append(nn.Sequential(*layers))
            c_in = width
        self.stages = nn.ModuleList(stages)
        self.num_features = widths[-1]
        self.feature_info = [
            {"num_chs": w, "reduction": 2 ** (i + 1), "module": f"stages.{i}"} for i, w in enumerate(widths)
        ]
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward_intermediates(self, x: Tensor) -> tuple[Tensor, list[Tensor]]:
        """Final map and every stage map.

        Args:
            x: ``[N, in_chans, H, W]`` images.

        Returns:
            ``(final [N, C_last, H/16, W/16], [stage_i [N, C_i, H/2^(i+1), W/2^(i+1)]])``.
        """
        maps = []
        for stage in self.stages:
            x = stage(x)
            maps.append(x)
        return x, maps

    def forward_features(self, x: Tensor) -> Tensor:
        """Final map only, ``[N, in_chans, H, W] -> [N, C_last, H/16, W/16]``."""
        for stage in self.stages:
            x = stage(x)
        return x


def tiny_cnn(in_chans: int = 3) -> BuiltinCNN:
    """About 47k parameters: four stages of one stride-2 conv each, widths 16-32-48-64."""
    return BuiltinCNN((16, 32, 48, 64), blocks=0, in_chans=in_chans)


def small_cnn(in_chans: int = 3) -> BuiltinCNN:
    """About 0.87M parameters: four stages (stride-2 conv + one residual block), widths 24-48-96-160."""
    return BuiltinCNN((24, 48, 96, 160), blocks=1, in_chans=in_chans)
